// The browser agent: a device of the fleet, as agent/service/daemon.py + intake.py + agent/jobs/run.py.
// MQTT 5 over WebSockets (mqtt.js): DeviceStatus birth / heartbeat / last will (retained, QoS 1), signed
// jobs for this device, its tags and the fleet (Ed25519 verified, replay-guarded), artifacts over MQTT,
// onnxruntime-web measurements, ResultRecords and JobEvents through the outbox until the collector's
// receipt confirms them.
import mqtt from 'mqtt';
import { availableProviders, runBenchmark, startBackends } from './bench.js';
import { deviceFacts } from './facts.js';
import { ArtifactFetcher, DeliveryError } from './fetch.js';
import { Outbox } from './outbox.js';
import { SignatureError, loadTrustedKeys, verify } from './signing.js';
import { ReplayGuard } from './replay.js';
import { encodeMessage, eventKey, parseChunk, parseMessage, resultKey, schema, targetMatches, topics, utcNow, WireError } from './wire.js';

const HEARTBEAT_S = 30;
const SESSION_EXPIRY_S = 7 * 24 * 3600;

function looseJobId(payload) {
  try {
    const id = JSON.parse(new TextDecoder().decode(payload)).job_id;
    return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id) ? id.toLowerCase() : null;
  } catch {
    return null;
  }
}

/** agent.jobs.run.summarize */
function summarizeRecords(records) {
  const ok = records.filter((r) => r.status === 'ok').length;
  const failed = records.filter((r) => r.status === 'failed');
  if (records.length && !ok && failed.length) return ['failed', failed[0].error || 'every measurement failed'];
  let detail = `${ok} ok`;
  if (failed.length) detail += `, ${failed.length} failed (${failed[0].error})`;
  return ['done', detail];
}

export class BrowserAgent {
  constructor(opts) {
    this.opts = opts; // {deviceId, broker, keys, tags, budgetMb, user, password, threads, eps, baseUrl, storage}
    this.deviceId = opts.deviceId;
    this.tags = opts.tags;
    this.view = { state: 'starting', deviceId: this.deviceId, results: [], events: [], log: [], jobs: {}, facts: null, providers: [], unavailable: {} };
    this.queue = [];
    this.current = null;
    this.started = performance.now();
    this.listeners = [];
  }

  onChange(fn) {
    this.listeners.push(fn);
  }

  changed() {
    for (const fn of this.listeners) fn(this.view);
  }

  log(text) {
    const line = `${new Date().toISOString().slice(11, 19)} ${text}`;
    this.view.log.push(line);
    if (this.view.log.length > 500) this.view.log.shift();
    this.changed();
  }

  setState(state) {
    this.view.state = state;
    this.changed();
  }

  async start() {
    const o = this.opts;
    this.trusted = await loadTrustedKeys(o.keys).catch((exc) => {
      this.log(`trusted keys: ${exc.message}`);
      return new Map();
    });
    if (!this.trusted.size) this.log('no trusted signing keys given (?key=...): every job will be rejected');
    this.replay = new ReplayGuard(this.deviceId, o.storage);
    this.providers = await availableProviders(o.eps);
    const backends = await startBackends(this.providers.map((p) => p.ep));
    for (const [ep, ms] of Object.entries(backends.started)) this.log(`${ep}: backend started in ${ms.toFixed(0)} ms`);
    for (const [ep, why] of Object.entries(backends.failed)) {
      this.log(`${ep}: not used, the backend did not start (${why})`);
      this.providers.unavailable = { ...this.providers.unavailable, [ep]: `the backend did not start: ${why}` };
    }
    this.providers = Object.assign(this.providers.filter((p) => p.ep in backends.started), { unavailable: this.providers.unavailable });
    this.view.providers = this.providers.map((p) => p.ep);
    this.view.unavailable = this.providers.unavailable || {};
    for (const [ep, why] of Object.entries(this.view.unavailable)) this.log(`${ep}: not used (${why})`);
    this.facts = await deviceFacts(this.deviceId, this.tags, this.providers);
    this.view.facts = this.facts;
    this.outbox = await new Outbox({ deviceId: this.deviceId }).open();
    this.fetcher = new ArtifactFetcher({
      deviceId: this.deviceId,
      budgetBytes: Math.floor(o.budgetMb * 2 ** 20),
      send: (req) => this.publish(topics.chunkRequests(this.deviceId), encodeMessage('ChunkRequest', req)),
    });
    this.connect();
    this.pumpTimer = setInterval(() => this.pump(), 1000);
    this.heartbeatTimer = setInterval(() => this.heartbeat(), HEARTBEAT_S * 1000);
    globalThis.addEventListener?.('pagehide', () => this.stop());
    return this;
  }

  status(state, reason) {
    const s = {
      kind: 'status',
      schema_version: 1,
      device_id: this.deviceId,
      state,
      at: utcNow(),
      reason,
      facts: reason === 'birth' || reason === 'last-will' ? this.facts : null,
      tags: [...this.tags],
      current_job: this.current ? this.current.job_id : null,
      outbox_pending: this.outbox.pending,
      outbox_dropped: 0,
      uptime_s: Math.round((performance.now() - this.started) / 100) / 10,
    };
    return encodeMessage('DeviceStatus', s);
  }

  connect() {
    const o = this.opts;
    const client = mqtt.connect(o.broker, {
      protocolVersion: 5,
      clientId: `edgebench-agent-${this.deviceId}`,
      clean: false,
      properties: { sessionExpiryInterval: SESSION_EXPIRY_S },
      username: o.user || undefined,
      password: o.password || undefined,
      keepalive: 30,
      reconnectPeriod: 2000,
      connectTimeout: 10000,
      will: { topic: topics.status(this.deviceId), payload: this.status('offline', 'last-will'), qos: 1, retain: true },
    });
    this.client = client;
    client.on('connect', () => {
      this.log(`connected to ${o.broker}`);
      const subs = Object.fromEntries(
        [...topics.jobTopicsFor(this.deviceId, this.tags), topics.deviceChunks(this.deviceId), topics.receipts(this.deviceId)].map((t) => [t, { qos: 1 }]),
      );
      client.subscribe(subs, (err) => {
        if (err) this.log(`subscribe failed: ${err.message}`);
        client.publish(topics.status(this.deviceId), this.status('online', 'birth'), { qos: 1, retain: true });
        this.outbox.resetSent();
        this.connected = true;
        if (this.view.state === 'starting' || this.view.state === 'offline') this.setState(this.current ? 'running' : 'idle');
        this.pump();
      });
    });
    client.on('close', () => {
      if (this.connected) this.log('connection closed; reconnecting');
      this.connected = false;
      if (!this.current) this.setState('offline');
    });
    client.on('error', (err) => this.log(`mqtt: ${err.message}`));
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
  }

  publish(topic, payload, opts = { qos: 1 }) {
    return new Promise((resolve, reject) => {
      if (!this.client || !this.connected) return reject(new Error('not connected to the broker'));
      this.client.publish(topic, payload, opts, (err) => (err ? reject(err) : resolve()));
    });
  }

  heartbeat() {
    if (this.connected) this.client.publish(topics.status(this.deviceId), this.status('online', 'heartbeat'), { qos: 1, retain: true });
  }

  stop() {
    if (!this.client) return;
    try {
      if (this.connected) this.client.publish(topics.status(this.deviceId), this.status('offline', 'shutdown'), { qos: 1, retain: true });
      this.client.end(false);
    } catch {
      /* closing anyway */
    }
  }

  // ---------------------------------------------------------------- outbox
  async store(topic, payload, key) {
    await this.outbox.put(key, topic, payload);
    this.pump();
  }

  pump() {
    if (!this.connected) return;
    const now = Date.now();
    for (const row of this.outbox.due(now)) {
      this.outbox.markSent(row, now);
      this.client.publish(row.topic, row.payload, { qos: 1 }, (err) => {
        if (err) row.sentAt = null;
        else this.outbox.markAcked(row.key, Date.now());
      });
    }
  }

  async event(jobId, state, detail = '', resultIds = [], progress = null) {
    const ev = { kind: 'job_event', schema_version: 1, job_id: jobId, device_id: this.deviceId, state, at: utcNow(), detail: detail.slice(0, 500), result_ids: [...resultIds], progress };
    const payload = encodeMessage('JobEvent', ev);
    this.view.events.push(ev);
    if (this.view.jobs[jobId]) Object.assign(this.view.jobs[jobId], { state, detail, progress });
    this.changed();
    await this.store(topics.events(this.deviceId), payload, eventKey(jobId, state, ev.at));
  }

  async deliver(record) {
    let payload;
    try {
      payload = encodeMessage('ResultRecord', record);
    } catch (exc) {
      // a bug on this side: say so in a failed record rather than lose the configuration
      this.log(`result ${record.result_id} is not a valid record (${exc.message}); sent as failed`);
      const { latency, memory, ...rest } = record;
      record = { ...rest, status: 'failed', error: `the page made an invalid record: ${exc.message}` };
      payload = encodeMessage('ResultRecord', record);
    }
    if (payload.length > 1024 * 1024 && record.latency && record.latency.samples_ms) {
      this.log(`result ${record.result_id} too large (${payload.length} bytes); sending it without raw samples`);
      record = { ...record, latency: { ...record.latency, samples_ms: null } };
      payload = encodeMessage('ResultRecord', record);
    }
    this.view.results.push(record);
    this.changed();
    await this.store(topics.results(this.deviceId), payload, resultKey(record.result_id));
    return true;
  }

  // ---------------------------------------------------------------- messages in
  onMessage(topic, payload) {
    if (topic === topics.deviceChunks(this.deviceId)) {
      this.fetcher.onChunk(payload);
      return;
    }
    if (topic === topics.receipts(this.deviceId)) {
      try {
        const [kind, receipt] = parseMessage(payload);
        if (kind !== 'Receipt' || receipt.device_id !== this.deviceId) return;
        this.outbox.receipt(receipt).then(() => this.changed());
      } catch (exc) {
        this.log(`bad receipt: ${exc.message}`);
      }
      return;
    }
    this.onJobMessage(payload).catch((exc) => this.log(`job message: ${exc.message}`));
  }

  async onJobMessage(payload) {
    let kind;
    let message;
    try {
      [kind, message] = parseMessage(payload);
      if (kind !== 'Job' && kind !== 'CancelJob') {
        this.log(`unexpected ${kind} on a job topic`);
        return;
      }
    } catch (exc) {
      const jobId = looseJobId(payload);
      this.log(`malformed job message: ${exc.message}`);
      if (jobId && !this.view.jobs[jobId]) {
        this.view.jobs[jobId] = { job_id: jobId, state: 'rejected' };
        await this.event(jobId, 'rejected', `malformed job message: ${exc.message}`);
      }
      return;
    }
    if (kind === 'CancelJob') return this.onCancel(message);
    if (this.view.jobs[message.job_id] || this.replay.seen(message.job_id)) return; // redelivery / replay
    const reason = await this.refusal(message);
    this.view.jobs[message.job_id] = { job_id: message.job_id, state: 'received', artifacts: message.artifacts.map((a) => a.name) };
    if (reason) {
      this.log(`job ${message.job_id} rejected: ${reason}`);
      await this.event(message.job_id, 'rejected', reason);
      return;
    }
    await this.event(message.job_id, 'received', `${message.artifacts.length} artifact(s)`);
    this.queue.push(message);
    this.work();
  }

  async refusal(message) {
    try {
      await verify(message, this.trusted, schema);
    } catch (exc) {
      if (exc instanceof SignatureError) return exc.message;
      return `signature check failed: ${exc.message}`;
    }
    this.replay.remember(message);
    if (message.kind === 'job' && !targetMatches(message.target, this.deviceId, this.tags)) {
      return `target '${message.target}' is not this device`;
    }
    return this.replay.refusal(message);
  }

  async onCancel(cancel) {
    const reason = await this.refusal(cancel);
    if (reason) {
      this.log(`cancel of job ${cancel.job_id} ignored: ${reason}`);
      return;
    }
    const queued = this.queue.findIndex((j) => j.job_id === cancel.job_id);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      await this.event(cancel.job_id, 'cancelled', 'cancelled before it started');
    } else if (this.current && this.current.job_id === cancel.job_id) {
      this.cancelReason = 'cancelled';
    } else if (!this.view.jobs[cancel.job_id]) {
      this.view.jobs[cancel.job_id] = { job_id: cancel.job_id, state: 'cancelled' };
    }
  }

  // ---------------------------------------------------------------- the worker
  async work() {
    if (this.working) return;
    this.working = true;
    try {
      while (this.queue.length) {
        const job = this.queue.shift();
        this.current = job;
        this.cancelReason = '';
        this.setState('running');
        let state;
        let detail;
        let ids = [];
        try {
          [state, detail, ids] = await this.runJob(job);
        } catch (exc) {
          [state, detail] = ['failed', `internal error: ${exc.message}`];
        }
        if (this.cancelReason === 'cancelled') [state, detail] = ['cancelled', 'cancelled while running'];
        this.current = null;
        await this.event(job.job_id, state, detail, ids);
        this.log(`job ${job.job_id}: ${state} (${detail})`);
        this.setState(this.connected ? 'idle' : 'offline');
      }
    } finally {
      this.working = false;
    }
  }

  async runJob(job) {
    const cancelled = () => !!this.cancelReason;
    const ready = [];
    try {
      for (const ref of job.artifacts) {
        await this.event(job.job_id, 'fetching', ref.name);
        const model = await this.fetcher.obtain(ref, {
          cancelled,
          progress: (p) => this.event(job.job_id, 'fetching', ref.name, [], p),
          verifying: () => this.event(job.job_id, 'verifying', ref.name),
        });
        ready.push([ref, model]);
      }
    } catch (exc) {
      if (exc instanceof DeliveryError) return ['failed', exc.message, []];
      throw exc;
    }
    await this.event(job.job_id, 'running', `${ready.length} artifact(s)`);
    const records = [];
    const ids = [];
    for (const [ref, model] of ready) {
      if (cancelled()) break;
      const produced = await runBenchmark({
        model,
        job,
        ref,
        device: this.facts,
        eps: this.providers.map((p) => p.ep),
        notes: Object.fromEntries(this.providers.map((p) => [p.ep, p.note])),
        wasmThreads: this.opts.wasmThreads,
        timerResolutionUs: this.opts.timerResolutionUs,
        cancelled,
        onProgress: (what) => {
          if (this.view.jobs[job.job_id]) this.view.jobs[job.job_id].detail = what;
          this.changed();
        },
      });
      for (const r of produced) {
        records.push(r);
        if (await this.deliver(r)) ids.push(r.result_id);
      }
    }
    const [state, detail] = summarizeRecords(records);
    return [state, detail, ids];
  }
}

export { WireError, parseChunk };
