// One artifact benchmarked with onnxruntime-web, by the protocol of agent/measure (protocol.py, bench.py,
// records.py): per configuration (execution provider x threads x batch) cold start (session creation and
// first inference apart), warmup until two windows agree, timed runs by the stop rule, figures by
// ./stats.js; one ResultRecord per configuration, "failed" with a one-line reason, "aborted" on cancel.
import * as ort from 'onnxruntime-web';
import { makeFeeds } from './inputs.js';
import { BenchError, mergeKept, nowNs, protocolFor, timed, warmup } from './protocol.js';
import { NS_PER_MS, keptPercentile, summarize } from './stats.js';
import { newId, utcNow } from './wire.js';

export const ORT_VERSION = __ORT_VERSION__;
export const RUNTIME = 'onnxruntime-web';
// ---------------------------------------------------------------- memory
export async function measureMemory(timeoutMs = 5000) {
  if (typeof performance.measureUserAgentSpecificMemory !== 'function') {
    const why = globalThis.crossOriginIsolated
      ? 'this browser has no performance.measureUserAgentSpecificMemory'
      : 'performance.measureUserAgentSpecificMemory needs a cross-origin isolated page (COOP/COEP)';
    return { bytes: null, reason: why };
  }
  try {
    const r = await Promise.race([
      performance.measureUserAgentSpecificMemory(),
      new Promise((_, rej) => setTimeout(() => rej(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs)),
    ]);
    return { bytes: r.bytes, reason: '' };
  } catch (exc) {
    return { bytes: null, reason: `performance.measureUserAgentSpecificMemory failed: ${exc.message}` };
  }
}

function memoryStats(baseline, after) {
  const mb = (b) => (b === null ? null : b / 2 ** 20);
  if (after.bytes === null) return { method: `unavailable: ${after.reason}` };
  return {
    method: 'performance.measureUserAgentSpecificMemory (the page, after the timed runs; not a peak)',
    baseline_rss_mb: mb(baseline.bytes),
    inference_peak_mb: mb(after.bytes),
    growth_mb: baseline.bytes === null ? null : mb(after.bytes - baseline.bytes),
  };
}

// ---------------------------------------------------------------- one configuration
const oneLine = (exc) => String((exc && exc.message) || exc).split(/\s+/).join(' ').slice(0, 400) || 'error';

async function measureOnce(model, ep, batch, shapes, protocol, cancelled, zeroNs) {
  const out = {};
  const t0 = nowNs();
  let session;
  try {
    session = await ort.InferenceSession.create(model, { executionProviders: [ep], graphOptimizationLevel: 'all' });
  } catch (exc) {
    return { error: `onnxruntime-web cannot load the model (${ep}): ${oneLine(exc)}` };
  }
  out.load_ms = (nowNs() - t0) / 1e6;
  try {
    const { feeds, inputShapes } = makeFeeds(session, shapes, batch);
    out.input_shapes = inputShapes;
    const step = () => session.run(feeds);
    const t1 = nowNs();
    try {
      await step();
    } catch (exc) {
      throw new BenchError(`the first inference failed: ${oneLine(exc)}`);
    }
    out.first_inference_ms = (nowNs() - t1) / 1e6;
    const wu = await warmup(step, protocol, cancelled);
    out.warmup_runs = wu.samples.length;
    out.warmup_stable = wu.stable;
    if (wu.aborted) return { ...out, aborted: true };
    const loop = await timed(step, protocol, cancelled, zeroNs);
    Object.assign(out, { kept: loop.keeper.kept(), zeros: loop.zeros, stop: loop.stop, aborted: !!loop.aborted });
  } catch (exc) {
    out.error = exc instanceof BenchError ? exc.message : `${(exc && exc.name) || 'Error'}: ${oneLine(exc)}`;
  } finally {
    await session.release().catch(() => {});
  }
  return out;
}

function config(ctx, cfg, batch, outcome, extra = {}) {
  return {
    runtime: RUNTIME,
    runtime_version: ORT_VERSION,
    threads: cfg.threads,
    batch,
    input_shapes: outcome?.input_shapes || ctx.shapes,
    input_source: 'random',
    options: {
      provider: cfg.ep,
      graph_optimization_level: 'all',
      wasm_threads: String(ctx.wasmThreads),
      simd: 'yes',
      cross_origin_isolated: String(!!globalThis.crossOriginIsolated),
      isolation: 'in-page',
      timer: `performance.now (${ctx.timerResolutionUs} us resolution)`,
      ...(ctx.notes[cfg.ep] ? { [cfg.ep === 'webgpu' ? 'adapter' : 'backend']: ctx.notes[cfg.ep] } : {}),
      ...extra,
    },
    protocol: ctx.protocol,
  };
}

/** The configurations of a job on this page: [{ep, threads, skip?}], as BenchOptions.configurations. */
export function configurations(settings, eps, wasmThreads) {
  const out = [];
  for (const ep of eps) {
    if (ep === 'webgpu') {
      out.push({ ep, threads: 0 });
      continue;
    }
    const wanted = settings.threads.length ? settings.threads : [0];
    for (const t of wanted) {
      const skip = t !== 0 && t !== wasmThreads
        ? `onnxruntime-web fixes its wasm thread count when the page loads (${wasmThreads} here): open the page with ?threads=${t} for this configuration`
        : null;
      out.push({ ep, threads: t === 0 ? wasmThreads : t, skip });
    }
  }
  return out;
}

/** Every record (ResultRecord JSON) of one artifact of one job. */
export async function runBenchmark({ model, job, ref, device, eps, notes = {}, wasmThreads, timerResolutionUs, cancelled, onProgress = () => {} }) {
  const artifact = { name: ref.name, sha256: ref.sha256, format: ref.format, size_bytes: ref.size_bytes, precision: ref.precision, model: ref.model, variant: ref.variant };
  const settings = job.settings;
  const protocol = protocolFor(settings);
  const shapes = settings.shapes || {};
  const ctx = { protocol, shapes, wasmThreads, timerResolutionUs, notes };
  const records = [];
  const base = (cfg, started) => ({ schema_version: 1, kind: 'result', result_id: newId(), device, artifact, started_at: started, job_id: job.job_id });
  const failed = (cfg, started, error, status = 'failed', outcome = null) => {
    const r = { ...base(cfg, started), config: config(ctx, cfg, settings.batch, outcome), status, finished_at: utcNow(), error: error.split(/\s+/).join(' ') || status };
    if (outcome && outcome.load_ms !== undefined && outcome.first_inference_ms !== undefined) {
      r.cold_start = { load_ms: outcome.load_ms, first_inference_ms: outcome.first_inference_ms };
    }
    return r;
  };
  const modelError = new Map();
  const zeroNs = Math.max(1, Math.round((timerResolutionUs * 1000) / 2));
  const baseline = await measureMemory();
  for (const cfg of configurations(settings, eps, wasmThreads)) {
    const started = utcNow();
    onProgress(`${ref.name}: ${cfg.ep}, ${cfg.threads || 'default'} thread(s)`);
    if (cfg.skip) {
      records.push(failed(cfg, started, cfg.skip));
      continue;
    }
    if (modelError.has(cfg.ep)) {
      records.push(failed(cfg, started, modelError.get(cfg.ep)));
      continue;
    }
    if (cancelled()) {
      records.push(failed(cfg, started, 'cancelled', 'aborted'));
      continue;
    }
    const outcomes = [];
    for (let i = 0; i < protocol.repeats; i++) {
      const o = await measureOnce(model, cfg.ep, settings.batch, shapes, protocol, cancelled, zeroNs);
      outcomes.push(o);
      if (o.error || o.aborted) break;
    }
    const last = outcomes[outcomes.length - 1];
    if (last.aborted) {
      records.push(failed(cfg, started, 'cancelled while running', 'aborted', last));
    } else if (last.error) {
      if (last.load_ms === undefined) modelError.set(cfg.ep, last.error);
      records.push(failed(cfg, started, last.error, 'failed', last));
    } else {
      const first = outcomes[0];
      const parts = outcomes.map((o) => o.kept);
      const kept = mergeKept(parts);
      const medians = parts.length > 1 ? parts.map((p) => keptPercentile(p, 0.5) / NS_PER_MS) : [];
      const latency = summarize(kept, {
        itemsPerRun: settings.batch,
        warmupRuns: first.warmup_runs,
        warmupStable: outcomes.every((o) => o.warmup_stable),
        repeatMediansMs: medians,
        keepSamples: protocol.keep_samples,
      });
      const stops = [...new Set(outcomes.map((o) => o.stop).filter(Boolean))];
      const extra = { repeats: String(outcomes.length), samples: kept.describe(), stop: stops.join('; ') };
      const zeros = outcomes.reduce((a, o) => a + o.zeros, 0);
      if (zeros) extra.below_timer_resolution = `${zeros} of ${kept.n} runs read as 0 and kept as ${zeroNs / 1000} us (half the resolution)`;
      records.push({
        ...base(cfg, started),
        config: config(ctx, cfg, settings.batch, first, extra),
        status: 'ok',
        finished_at: utcNow(),
        cold_start: { load_ms: first.load_ms, first_inference_ms: first.first_inference_ms },
        latency,
        memory: memoryStats(baseline, await measureMemory()),
      });
    }
  }
  return records;
}

/** The execution providers this browser offers: [{ep, note}] (wasm always; webgpu with an adapter). */
export async function availableProviders(allowed) {
  const out = [];
  const want = (ep) => !allowed || allowed.includes(ep);
  if (want('wasm')) out.push({ ep: 'wasm', note: `simd, ${globalThis.crossOriginIsolated ? 'threads' : 'one thread (the page is not cross-origin isolated)'}` });
  if (want('webgpu')) {
    let note = 'navigator.gpu is not available';
    if (globalThis.navigator && navigator.gpu) {
      try {
        const adapter = await navigator.gpu.requestAdapter();
        if (adapter) {
          const info = adapter.info || {};
          out.push({ ep: 'webgpu', note: [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'adapter' });
          note = null;
        } else note = 'navigator.gpu gave no adapter';
      } catch (exc) {
        note = `navigator.gpu.requestAdapter failed: ${oneLine(exc)}`;
      }
    }
    if (note) out.unavailable = { webgpu: note };
  }
  return out;
}

/** Configure the wasm backend once (onnxruntime-web reads numThreads at its first session). */
export function initOrt(threadsParam, baseUrl) {
  ort.env.wasm.wasmPaths = new URL('ort/', baseUrl).href;
  const cores = (globalThis.navigator && navigator.hardwareConcurrency) || 1;
  const threads = globalThis.crossOriginIsolated ? (threadsParam > 0 ? threadsParam : Math.min(4, Math.ceil(cores / 2))) : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
  return threads;
}

// A one-node model (Identity, float32[1]) opened once per execution provider when the page starts, so that
// the runtime's own start (compiling the 30 MB wasm, the WebGPU device) is not in any model's load_ms
// (the Python agent's load_ms excludes the runtime import too).
const IDENTITY_ONNX = 'CAkSDWVkZ2ViZW5jaC13ZWI6OgoQCgF4EgF5IghJZGVudGl0eRIEd2FybVoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBE=';

/** Start each provider's backend once: {ep: ms} for those that started, {ep: error} for the others. */
export async function startBackends(eps) {
  const bytes = Uint8Array.from(atob(IDENTITY_ONNX), (c) => c.charCodeAt(0));
  const started = {};
  const failed = {};
  for (const ep of eps) {
    const t0 = performance.now();
    try {
      const s = await ort.InferenceSession.create(bytes, { executionProviders: [ep] });
      await s.run({ x: new ort.Tensor('float32', new Float32Array([1]), [1]) });
      await s.release();
      started[ep] = performance.now() - t0;
    } catch (exc) {
      failed[ep] = oneLine(exc);
    }
  }
  return { started, failed };
}

export function timerResolutionUs() {
  let best = Infinity;
  for (let i = 0; i < 50; i++) {
    const a = performance.now();
    let b = performance.now();
    while (b === a) b = performance.now();
    best = Math.min(best, b - a);
  }
  return +(best * 1000).toPrecision(3);
}

export { ort };
