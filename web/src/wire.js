// The wire format on the JS side: topics (wire/topics.py), timestamps (wire.schema.utc_now), delivery keys
// (wire/receipts.py), and validation of every message sent or received against the JSON Schema generated
// from the Python dataclasses (src/wire.schema.json, compiled by ajv at build time: build/validators.js).
import * as validators from '../build/validators.js';
import schema from './wire.schema.json' with { type: 'json' };

export { schema };
export const PREFIX = 'edgebench/v1';
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class WireError extends Error {
  constructor(message, reason = 'invalid-field') {
    super(message);
    this.reason = reason;
  }
}

export function checkId(value, what = 'device id') {
  if (typeof value !== 'string' || !ID_RE.test(value)) {
    throw new WireError(
      `invalid ${what} ${JSON.stringify(value)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return value;
}

const dev = (id, leaf) => `${PREFIX}/devices/${checkId(id)}/${leaf}`;
export const topics = {
  status: (id) => dev(id, 'status'),
  results: (id) => dev(id, 'results'),
  events: (id) => dev(id, 'events'),
  chunkRequests: (id) => dev(id, 'chunks/request'),
  deviceJobs: (id) => dev(id, 'jobs'),
  deviceChunks: (id) => dev(id, 'chunks'),
  receipts: (id) => dev(id, 'receipts'),
  tagJobs: (tag) => `${PREFIX}/tags/${checkId(tag, 'tag')}/jobs`,
  FLEET_JOBS: `${PREFIX}/fleet/jobs`,
  jobTopicsFor: (id, tags) => [dev(id, 'jobs'), `${PREFIX}/fleet/jobs`, ...tags.map((t) => topics.tagJobs(t))],
};

/** agent.jobs.store.target_matches */
export function targetMatches(target, deviceId, tags) {
  if (target === 'all') return true;
  const i = target.indexOf(':');
  const kind = i < 0 ? target : target.slice(0, i);
  const name = i < 0 ? '' : target.slice(i + 1);
  return (kind === 'device' && name === deviceId) || (kind === 'tag' && tags.includes(name));
}

export const resultKey = (resultId) => `r:${resultId}`;
export const eventKey = (jobId, state, at) => `e:${jobId}:${state}:${at}`;

/** wire.schema.utc_now: ISO-8601 UTC with milliseconds and Z. */
export const utcNow = (date = new Date()) => date.toISOString();

/** wire.timestamps.parse_wire: ms since the epoch, or throws for a non-UTC / malformed time. */
export function parseWire(text) {
  const m = typeof text === 'string' && /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)(Z|\+00:00)$/.exec(text);
  if (!m) throw new WireError(`not a UTC time (Z or +00:00): ${JSON.stringify(String(text).slice(0, 40))}`);
  const ms = Date.parse(m[1] + 'Z');
  if (Number.isNaN(ms)) throw new WireError(`not a timestamp: ${JSON.stringify(text)}`);
  return ms;
}

export const newId = () => crypto.randomUUID();

function describe(errors) {
  const e = errors && errors[0];
  if (!e) return 'invalid';
  const where = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '';
  const extra = e.params && e.params.additionalProperty ? ` (${e.params.additionalProperty})` : '';
  const missing = e.params && e.params.missingProperty ? ` ${e.params.missingProperty}` : '';
  return `${where ? where + ': ' : ''}${e.message}${missing}${extra}`;
}

/** Throws WireError unless ``value`` is a valid message of ``kind`` ($defs name, e.g. "ResultRecord"). */
export function validate(kind, value) {
  const fn = validators[kind];
  if (!fn) throw new WireError(`unknown message kind ${kind}`);
  if (!fn(value)) throw new WireError(`${kind}: ${describe(fn.errors)}`);
  return value;
}

const BY_KIND = {
  result: 'ResultRecord',
  job: 'Job',
  cancel: 'CancelJob',
  job_event: 'JobEvent',
  status: 'DeviceStatus',
  chunk_request: 'ChunkRequest',
  receipt: 'Receipt',
};

/** Parse and validate any JSON message by its ``kind``: [defName, value]; WireError otherwise. */
export function parseMessage(bytes) {
  let data;
  try {
    data = JSON.parse(typeof bytes === 'string' ? bytes : new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (exc) {
    throw new WireError(`not valid JSON: ${exc.message}`, 'bad-json');
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new WireError('a message must be a JSON object', 'bad-json');
  }
  const def = BY_KIND[data.kind];
  if (!def) throw new WireError(`unknown message kind ${JSON.stringify(data.kind)}`);
  if (data.schema_version !== 1) {
    throw new WireError(`unsupported schema version ${JSON.stringify(data.schema_version)}`, 'unknown-schema-version');
  }
  return [def, validate(def, data)];
}

/** Serialise a message after validating it (throws WireError: a bug on this side, never sent). */
export function encodeMessage(def, value) {
  validate(def, value);
  return JSON.stringify(value);
}

/** ArtifactChunk.from_bytes: a JSON header line, a newline, the raw bytes. */
export function parseChunk(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  const nl = bytes.indexOf(10);
  if (nl < 0) throw new WireError('a chunk needs a JSON header line');
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, nl)));
  } catch (exc) {
    throw new WireError(`chunk header is not valid JSON: ${exc.message}`);
  }
  if (!header || header.kind !== 'chunk') throw new WireError('expected kind "chunk"');
  if (header.schema_version !== 1) throw new WireError(`unsupported schema version ${header.schema_version}`);
  for (const name of ['index', 'total', 'size_bytes', 'length']) {
    if (!Number.isSafeInteger(header[name]) || header[name] < 0) throw new WireError(`${name}: expected a non-negative integer`);
  }
  if (typeof header.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(header.sha256)) throw new WireError('sha256: not a lowercase hex sha256');
  const data = bytes.subarray(nl + 1);
  if (header.length !== data.length) throw new WireError(`length: header says ${header.length} bytes, payload has ${data.length}`);
  if (header.index >= header.total) throw new WireError(`index ${header.index} out of range for ${header.total} chunks`);
  return { sha256: header.sha256, index: header.index, total: header.total, size_bytes: header.size_bytes, data };
}
