// The page's wire code against the Python reference, without a browser (node --test; needs `npm run
// build` for build/validators.js): every message kind Python writes validates here; the messages the
// page writes parse in Python; the signing bytes equal wire/schema.py's byte for byte (floats, non-ASCII,
// defaults left out) and Ed25519 verifies; the latency figures equal agent/measure/stats.py's.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { pyFloat, signingBytes } from '../src/canonical.js';
import { loadTrustedKeys, parsePublicKey, verify } from '../src/signing.js';
import { SampleKeeper, summarize } from '../src/stats.js';
import { encodeMessage, parseChunk, parseMessage, schema, WireError } from '../src/wire.js';
import { REPO, WEB } from './harness.mjs';

const py = (args, input) =>
  execFileSync('python3', [path.join(WEB, 'test/wire_fixtures.py'), ...args], { env: { ...process.env, PYTHONPATH: REPO }, input, encoding: 'utf8', maxBuffer: 64 << 20 });
const fx = JSON.parse(py(['make']));

test('every message kind written by Python validates against the generated schema', () => {
  const kinds = fx.messages.map((m) => parseMessage(m)[0]);
  assert.deepEqual(kinds, ['ResultRecord', 'Job', 'CancelJob', 'JobEvent', 'DeviceStatus', 'ChunkRequest', 'Receipt']);
});

test('messages the page writes parse in Python', () => {
  const id = crypto.randomUUID();
  const now = new Date().toISOString();
  const device = { device_id: 'b1', board: 'Chromium on Linux', cpu_cores: 2, runtimes: { 'onnxruntime-web': '1.31.1' }, tags: ['lab'] };
  const latency = summarize([100000, 120000, 110000, 105000, 130000, 90000, 101000]);
  const msgs = [
    ['DeviceStatus', { kind: 'status', schema_version: 1, device_id: 'b1', state: 'online', at: now, reason: 'birth', facts: device, tags: ['lab'], current_job: null, outbox_pending: 0, outbox_dropped: 0, uptime_s: 1.5 }],
    ['JobEvent', { kind: 'job_event', schema_version: 1, job_id: id, device_id: 'b1', state: 'fetching', at: now, detail: 'm.onnx', result_ids: [], progress: 0.25 }],
    ['ChunkRequest', { kind: 'chunk_request', schema_version: 1, device_id: 'b1', sha256: 'c'.repeat(64), indices: [], chunk_size: 262144 }],
    ['ResultRecord', {
      kind: 'result', schema_version: 1, result_id: crypto.randomUUID(), device, job_id: id, started_at: now, finished_at: now, status: 'ok',
      artifact: { name: 'm.onnx', sha256: 'c'.repeat(64), format: 'onnx', size_bytes: 10, precision: 'fp32', model: '', variant: '' },
      config: { runtime: 'onnxruntime-web', runtime_version: '1.31.1', threads: 1, batch: 1, input_shapes: { x: [1, 16] }, input_source: 'random', options: { provider: 'wasm' }, protocol: { preset: 'quick', warmup_min_runs: 5, warmup_window: 5, warmup_tolerance: 0.1, warmup_max_s: 1, min_runs: 20, min_time_s: 0.2, max_runs: 0, max_time_s: 2, repeats: 1, keep_samples: true } },
      cold_start: { load_ms: 10, first_inference_ms: 2 }, latency, memory: { method: 'unavailable: test' },
    }],
  ];
  const texts = msgs.map(([kind, m]) => encodeMessage(kind, m));
  assert.deepEqual(JSON.parse(py(['check'], JSON.stringify(texts))), texts.map(() => 'ok'));
});

test('invalid messages are refused with the field named', () => {
  assert.throws(() => parseMessage('{"kind":"job","schema_version":1}'), (e) => e instanceof WireError && /job_id/.test(e.message));
  assert.throws(() => parseMessage('[1]'), (e) => e.reason === 'bad-json');
  assert.throws(() => parseMessage('{"kind":"job","schema_version":2}'), (e) => e.reason === 'unknown-schema-version');
  assert.throws(() => parseMessage('not json'), (e) => e.reason === 'bad-json');
  const job = JSON.parse(fx.messages[1]);
  job.surprise = 1;
  assert.throws(() => parseMessage(JSON.stringify(job)), WireError);
});

test('mutated payloads never throw anything but WireError', () => {
  const base = fx.messages.join('');
  let seed = 7;
  const rand = (n) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  for (let i = 0; i < 2000; i++) {
    const text = fx.messages[rand(fx.messages.length)];
    const a = rand(text.length);
    const mutated = text.slice(0, a) + base.slice(rand(base.length), rand(base.length)) + text.slice(a + rand(8));
    try {
      parseMessage(mutated);
    } catch (exc) {
      assert.ok(exc instanceof WireError, `${exc} for ${mutated}`);
    }
  }
});

test('signing bytes equal Python\'s and the signatures verify', async () => {
  const keys = await loadTrustedKeys([fx.pub]);
  for (const { json, signing } of fx.signed) {
    const m = parseMessage(json)[1];
    assert.equal(new TextDecoder().decode(signingBytes(m, schema)), signing);
    assert.match(await verify(m, keys, schema), /^[0-9a-f]{16}$/);
    const tampered = { ...m, created_at: '2020-01-01T00:00:00.000Z' };
    await assert.rejects(verify(tampered, keys, schema), /bad signature/);
    await assert.rejects(verify({ ...m, signature: '' }, keys, schema), /unsigned job/);
    await assert.rejects(verify({ ...m, key_id: '0'.repeat(16) }, keys, schema), /signed by unknown key/);
    await assert.rejects(verify({ ...m, signature: '!!' }, keys, schema), /not valid base64/);
  }
});

test('Python float repr', () => {
  const cases = { 10: '10.0', 0.1: '0.1', 1e-5: '1e-05', 1e16: '1e+16', 1e15: '1000000000000000.0', 123456.789: '123456.789', '-0': '-0.0', 1.5e-7: '1.5e-07', 1e300: '1e+300', 0.0001: '0.0001', 2.5e22: '2.5e+22' };
  for (const [x, want] of Object.entries(cases)) assert.equal(pyFloat(x === '-0' ? -0 : Number(x)), want);
});

test('trusted keys: PEM, its base64 body, spaces for plus signs', () => {
  const body = fx.pub.split('\n')[1];
  const raw = parsePublicKey(fx.pub);
  assert.equal(raw.length, 32);
  assert.deepEqual(parsePublicKey(body), raw);
  assert.deepEqual(parsePublicKey(fx.pub.replace(/\+/g, ' ')), raw);
  assert.throws(() => parsePublicKey('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----'), /not an Ed25519 public key/);
  assert.throws(() => parsePublicKey('%%%'), /Ed25519 public key PEM/);
});

test('latency figures equal agent/measure/stats.py (exact and past 65,536 runs)', () => {
  for (const c of fx.stats) {
    const keeper = new SampleKeeper();
    for (const v of c.samples) keeper.add(v);
    const js = summarize(keeper.kept(), { warmupRuns: 3 });
    for (const [field, want] of Object.entries(c.latency)) {
      const got = js[field];
      if (field === 'samples_ms') assert.deepEqual(got.length, want.length);
      else if (typeof want === 'number') assert.ok(Math.abs(got - want) <= 1e-12 * Math.max(1, Math.abs(want)), `${field} n=${c.samples.length}: ${got} vs ${want}`);
      else assert.deepEqual(got, want, `${field} n=${c.samples.length}`);
    }
  }
});

test('chunks: header line, bytes, checked', () => {
  const header = JSON.stringify({ kind: 'chunk', schema_version: 1, sha256: 'a'.repeat(64), index: 0, total: 1, size_bytes: 3, length: 3 });
  const ok = new Uint8Array([...new TextEncoder().encode(header + '\n'), 1, 2, 3]);
  assert.deepEqual([...parseChunk(ok).data], [1, 2, 3]);
  assert.throws(() => parseChunk(ok.subarray(0, ok.length - 1)), /length/);
  assert.throws(() => parseChunk(new Uint8Array([1, 2])), /header line/);
});
