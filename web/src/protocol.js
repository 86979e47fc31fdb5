// The timing loops of agent/measure/protocol.py and the presets of agent/measure/bench.py, for an async
// step (onnxruntime-web's session.run): warmup until two windows agree on Q1, median and Q3; timed runs
// by the stop rule (min runs AND min time; a time cap never below the time floor; no run cap unless set);
// cancel checked every 16 runs. Only the step sits between the two clock reads; between runs the event
// loop gets a turn every 50 ms (MQTT keepalive, the page), outside the timed window.
import { Kept, SampleKeeper, bucketFloor, windowsAgree, EXACT_LIMIT, ORDERED_LIMIT } from './stats.js';

export class BenchError extends Error {}

const WARMUP_HARD_CAP = 100_000;
const YIELD_EVERY_MS = 50; // give the event loop (MQTT keepalive, the page) a turn between runs

// agent.measure.bench.PRESETS, ProtocolSettings defaults
const DEFAULTS = {
  preset: 'default', warmup_min_runs: 10, warmup_window: 10, warmup_tolerance: 0.05, warmup_max_s: 10.0,
  min_runs: 100, min_time_s: 10.0, max_runs: 0, max_time_s: 60.0, repeats: 1, keep_samples: true,
};
export const PRESETS = {
  quick: { ...DEFAULTS, preset: 'quick', warmup_min_runs: 5, warmup_window: 5, warmup_tolerance: 0.1, warmup_max_s: 1.0, min_runs: 20, min_time_s: 0.2, max_time_s: 2.0 },
  default: { ...DEFAULTS },
  thorough: { ...DEFAULTS, preset: 'thorough', warmup_min_runs: 20, warmup_window: 20, warmup_tolerance: 0.03, warmup_max_s: 30.0, min_runs: 300, min_time_s: 30.0, max_time_s: 180.0, repeats: 3 },
};

export const withStopRule = (p) => (p.max_time_s >= p.min_time_s ? p : { ...p, max_time_s: p.min_time_s });

/** BenchOptions.from_settings: the preset, then the job's own overrides. */
export function protocolFor(settings) {
  const base = PRESETS[settings.preset];
  if (!base) throw new BenchError(`unknown preset '${settings.preset}' (one of ${Object.keys(PRESETS).join(', ')})`);
  const p = { ...withStopRule(base), repeats: Math.max(1, settings.repeats ?? 1) };
  for (const name of ['min_runs', 'min_time_s', 'max_time_s']) if (settings[name] != null) p[name] = settings[name];
  return withStopRule(p);
}

export const nowNs = () => Math.round(performance.now() * 1e6);
const tick = () => new Promise((r) => setTimeout(r, 0));

export async function warmup(step, s, cancelled) {
  const w = Math.max(s.warmup_window, 0);
  const need = Math.max(s.warmup_min_runs, w ? 2 * w : 0);
  if (need === 0) return { samples: [], stable: true, aborted: false };
  const capNs = s.warmup_max_s * 1e9;
  const samples = [];
  const start = nowNs();
  let yielded = start;
  while (samples.length < WARMUP_HARD_CAP) {
    const t0 = nowNs();
    await step();
    const t1 = nowNs();
    samples.push(t1 - t0);
    const n = samples.length;
    if (n >= need && (!w || windowsAgree(samples.slice(-2 * w, -w), samples.slice(-w), s.warmup_tolerance))) {
      return { samples, stable: true, aborted: false };
    }
    if (t1 - start >= capNs) return { samples, stable: false, aborted: false };
    if (!(n & 15) && cancelled()) return { samples, stable: false, aborted: true };
    if (t1 - yielded > YIELD_EVERY_MS * 1e6) {
      await tick();
      yielded = nowNs();
    }
  }
  return { samples, stable: false, aborted: false };
}

/** The timed runs. A run the clock reads as 0 ns (shorter than the timer's resolution: 100 us in a page
 * that is not cross-origin isolated) is kept as ``zeroNs`` (half the resolution) and counted. */
export async function timed(step, s, cancelled, zeroNs = 1) {
  const minRuns = Math.max(s.min_runs, 1);
  const maxRuns = Math.max(s.max_runs, 0);
  const minNs = s.min_time_s * 1e9;
  const capNs = s.max_time_s * 1e9;
  const keeper = new SampleKeeper();
  let n = 0;
  let zeros = 0;
  const start = nowNs();
  let yielded = start;
  for (;;) {
    const t0 = nowNs();
    await step();
    const t1 = nowNs();
    if (t1 > t0) keeper.add(t1 - t0);
    else {
      keeper.add(zeroNs);
      zeros += 1;
    }
    n += 1;
    const elapsed = t1 - start;
    const secs = (elapsed / 1e9).toFixed(2);
    if (n >= minRuns && elapsed >= minNs) return { keeper, zeros, elapsed, stop: `min runs and min time: ${n} runs in ${secs} s` };
    if (elapsed >= capNs) return { keeper, zeros, elapsed, stop: `max time ${+s.max_time_s.toPrecision(6)} s: ${n} of ${minRuns} min runs` };
    if (n === maxRuns) return { keeper, zeros, elapsed, stop: `max runs ${n}: ${secs} s of ${+s.min_time_s.toPrecision(6)} s min time` };
    if (!(n & 15) && cancelled()) return { keeper, zeros, elapsed, stop: `cancelled after ${n} runs`, aborted: true };
    if (t1 - yielded > YIELD_EVERY_MS * 1e6) {
      await tick();
      yielded = nowNs();
    }
  }
}

/** stats.merge_kept */
export function mergeKept(parts) {
  if (parts.length === 1) return parts[0];
  if (parts.every((p) => p.exact) && parts.reduce((a, p) => a + p.n, 0) <= EXACT_LIMIT) {
    return Kept.of(parts.flatMap((p) => p.ordered));
  }
  const counts = new Map();
  const binned = parts.map((p) => {
    if (!p.exact) return p;
    const c = new Map();
    for (const v of p.ordered) c.set(bucketFloor(v), (c.get(bucketFloor(v)) || 0) + 1);
    return thin(p, [...c.entries()].sort((a, b) => a[0] - b[0]), p.ordered, 1);
  });
  for (const p of binned) for (const [f, c] of p.buckets) counts.set(f, (counts.get(f) || 0) + c);
  const stride = Math.max(...binned.map((p) => p.stride));
  const ordered = binned.flatMap((p) => p.ordered.filter((_, i) => i % (stride / p.stride) === 0));
  const sums = new Kept(
    parts.reduce((a, p) => a + p.n, 0), parts.reduce((a, p) => a + p.totalNs, 0n), parts.reduce((a, p) => a + p.totalSqNs, 0n),
    Math.min(...parts.map((p) => p.minNs)), Math.max(...parts.map((p) => p.maxNs)), [],
  );
  return thin(sums, [...counts.entries()].sort((a, b) => a[0] - b[0]), ordered, stride);
}

function thin(sums, buckets, ordered, stride) {
  while (ordered.length > ORDERED_LIMIT) {
    ordered = ordered.filter((_, i) => i % 2 === 0);
    stride *= 2;
  }
  return new Kept(sums.n, sums.totalNs, sums.totalSqNs, sums.minNs, sums.maxNs, ordered, stride, buckets);
}
