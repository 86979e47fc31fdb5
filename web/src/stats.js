// Latency statistics, a line-for-line port of agent/measure/stats.py (samples in integer ns, figures in
// ms): type-7 percentiles, the distribution-free p50 CI, p90/p99 floors, MAD, Tukey far-fence outliers,
// drift, the verdict; samples kept exactly up to EXACT_LIMIT runs, then a log-bucket histogram plus an
// ordered subsample. Sums are BigInt so that n, mean and std are exact as in Python.

export const NS_PER_MS = 1_000_000;
export const CV_LIMIT = 0.05;
export const DRIFT_LIMIT_PCT = 10.0;
export const REPEAT_SPREAD_LIMIT = 0.05;
export const Z95 = 1.959963984540054;
export const EXACT_LIMIT = 65_536;
export const ORDERED_LIMIT = 32_768;
export const HIST_BITS = 10;
export const HIST_RELATIVE_ERROR = 2.0 ** -(HIST_BITS + 1);
export const PERCENTILE_FLOORS = { p90_ms: 64, p99_ms: 662 };
const FLOOR_BY_Q = new Map([[0.9, 64], [0.99, 662]]);

const asc = (a, b) => a - b;

export function percentile(sorted, q) {
  const n = sorted.length;
  if (n === 0) throw new Error('percentile of no values');
  const pos = q * (n - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, n - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export const median = (values) => percentile([...values].sort(asc), 0.5);

export function claimable(n, q) {
  if (FLOOR_BY_Q.has(q)) return n >= FLOOR_BY_Q.get(q);
  return n * (1.0 - q) >= 1.0 - 1e-9;
}

export function medianCiRanks(n, z = Z95) {
  if (n < 6) return null;
  const half = (z * Math.sqrt(n)) / 2.0;
  return [Math.max(1, Math.floor(n / 2.0 - half)), Math.min(n, Math.ceil(1 + n / 2.0 + half))];
}

export function medianCi(sorted, z = Z95) {
  const r = medianCiRanks(sorted.length, z);
  return r ? [sorted[r[0] - 1], sorted[r[1] - 1]] : null;
}

export function mad(values) {
  const m = median(values);
  return median(values.map((v) => Math.abs(v - m)));
}

export function countOutliers(sorted, k = 3.0) {
  const q1 = percentile(sorted, 0.25);
  const q3 = percentile(sorted, 0.75);
  const lo = q1 - k * (q3 - q1);
  const hi = q3 + k * (q3 - q1);
  return sorted.reduce((c, v) => c + (v < lo || v > hi ? 1 : 0), 0);
}

export function driftPct(values) {
  const n = values.length;
  if (n < 9) return null;
  const third = Math.floor(n / 3);
  const first = median(values.slice(0, third));
  const last = median(values.slice(n - third));
  return first === 0 ? null : ((last - first) / first) * 100.0;
}

export function quartiles(values) {
  const s = [...values].sort(asc);
  return [percentile(s, 0.25), percentile(s, 0.5), percentile(s, 0.75)];
}

export function windowsAgree(previous, current, tolerance) {
  const a = quartiles(previous);
  const b = quartiles(current);
  const scale = a[1];
  if (scale <= 0) return a.every((x, i) => x === b[i]);
  return a.every((x, i) => Math.abs(x - b[i]) <= tolerance * scale);
}

const pct1 = (x) => (x * 100).toFixed(1);

export function verdict(cv, drift, throttled = null, repeatSpread = null, warmupStable = true) {
  const reasons = [];
  if (cv > CV_LIMIT) reasons.push(`CV ${pct1(cv)}% > ${(CV_LIMIT * 100).toFixed(0)}%`);
  if (drift !== null && Math.abs(drift) > DRIFT_LIMIT_PCT) {
    reasons.push(`drift ${drift >= 0 ? '+' : ''}${drift.toFixed(1)}% between first and last third`);
  }
  if (repeatSpread !== null && repeatSpread > REPEAT_SPREAD_LIMIT) {
    reasons.push(`repeat medians differ by ${pct1(repeatSpread)}%`);
  }
  if (throttled) reasons.push('board throttled');
  const note = warmupStable ? '' : ' (warmup hit its time cap before windows agreed)';
  if (reasons.length) return [false, 'unstable: ' + reasons.join('; ') + note];
  return [true, 'stable' + note];
}

// ---------------------------------------------------------------- samples as kept

export function bitLength(v) {
  if (v <= 0) return 0;
  let b = Math.floor(Math.log2(v)) + 1;
  while (2 ** b <= v) b++;
  while (b > 0 && 2 ** (b - 1) > v) b--;
  return b;
}

export function bucketFloor(v) {
  const shift = bitLength(v) - HIST_BITS - 1;
  if (shift <= 0) return v;
  const p = 2 ** shift;
  return Math.floor(v / p) * p;
}

export function bucketMid(floor) {
  const shift = bitLength(floor) - HIST_BITS - 1;
  return shift <= 0 ? floor : floor + (2 ** shift - 1) / 2.0;
}

/** The timed samples (ns) as agent.measure.stats.Kept: exact (ordered = every run) or a histogram. */
export class Kept {
  constructor(n, totalNs, totalSqNs, minNs, maxNs, ordered, stride = 1, buckets = []) {
    Object.assign(this, { n, totalNs, totalSqNs, minNs, maxNs, ordered, stride, buckets });
  }

  get exact() {
    return this.buckets.length === 0;
  }

  static of(samples) {
    const values = Array.from(samples, (v) => Math.round(v));
    if (!values.length) throw new Error('no timed samples');
    let total = 0n;
    let sq = 0n;
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      const b = BigInt(v);
      total += b;
      sq += b * b;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return new Kept(values.length, total, sq, lo, hi, values);
  }

  describe() {
    if (this.exact) return `exact: all ${this.n} timed runs`;
    return (
      `log histogram of ${this.n} runs, ${1 << HIST_BITS} buckets per power of two: percentiles and ` +
      `p50 CI within ${(HIST_RELATIVE_ERROR * 100).toFixed(3)}%; n, mean, std, min, max exact; drift and ` +
      `samples_ms from every ${this.stride}th run (${this.ordered.length})`
    );
  }
}

/** Bounded memory for the timed loop (agent.measure.protocol.SampleKeeper). */
export class SampleKeeper {
  constructor(exactLimit = EXACT_LIMIT, orderedLimit = ORDERED_LIMIT) {
    this.exactLimit = exactLimit;
    this.orderedLimit = orderedLimit;
    this.exactRuns = [];
    this.counts = new Map();
    this.orderedRuns = [];
    this.stride = 1;
    this.k = 0;
    this.total = 0n;
    this.totalSq = 0n;
    this.min = Infinity;
    this.max = -Infinity;
  }

  add(v) {
    if (this.exactRuns !== null) {
      this.exactRuns.push(v);
      if (this.exactRuns.length > this.exactLimit) this.spill();
    } else this.addBinned(v);
  }

  spill() {
    const exact = this.exactRuns;
    this.exactRuns = null;
    for (const v of exact) this.addBinned(v);
  }

  addBinned(v) {
    const b = BigInt(v);
    this.total += b;
    this.totalSq += b * b;
    if (v < this.min) this.min = v;
    if (v > this.max) this.max = v;
    const key = bucketFloor(v);
    this.counts.set(key, (this.counts.get(key) || 0) + 1);
    if (this.k % this.stride === 0) {
      this.orderedRuns.push(v);
      if (this.orderedRuns.length > this.orderedLimit) {
        this.orderedRuns = this.orderedRuns.filter((_, i) => i % 2 === 0);
        this.stride *= 2;
      }
    }
    this.k += 1;
  }

  get n() {
    return this.exactRuns !== null ? this.exactRuns.length : this.k;
  }

  kept() {
    if (this.exactRuns !== null) return Kept.of(this.exactRuns);
    const buckets = [...this.counts.entries()].sort((a, b) => a[0] - b[0]);
    let ordered = this.orderedRuns;
    let stride = this.stride;
    while (ordered.length > ORDERED_LIMIT) {
      ordered = ordered.filter((_, i) => i % 2 === 0);
      stride *= 2;
    }
    return new Kept(this.k, this.total, this.totalSq, this.min, this.max, ordered, stride, buckets);
  }
}

function bisectRight(arr, x) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x < arr[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

class Histogram {
  constructor(kept) {
    this.n = kept.n;
    this.values = kept.buckets.map(([f]) => Math.min(Math.max(bucketMid(f), kept.minNs), kept.maxNs));
    this.counts = kept.buckets.map(([, c]) => c);
    let acc = 0;
    this.ends = this.counts.map((c) => (acc += c));
  }

  atRank(rank) {
    return this.values[bisectRight(this.ends, rank)];
  }

  percentile(q) {
    const pos = q * (this.n - 1);
    const lo = Math.floor(pos);
    const a = this.atRank(lo);
    const b = this.atRank(Math.min(lo + 1, this.n - 1));
    return a + (b - a) * (pos - lo);
  }

  mad(center) {
    const pairs = this.values.map((v, i) => [Math.abs(v - center), this.counts[i]]);
    pairs.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let acc = 0;
    const ends = pairs.map(([, c]) => (acc += c));
    const pos = 0.5 * (this.n - 1);
    const lo = Math.floor(pos);
    const a = pairs[bisectRight(ends, lo)][0];
    const b = pairs[bisectRight(ends, Math.min(lo + 1, this.n - 1))][0];
    return a + (b - a) * (pos - lo);
  }

  outliers(k = 3.0) {
    const q1 = this.percentile(0.25);
    const q3 = this.percentile(0.75);
    const lo = q1 - k * (q3 - q1);
    const hi = q3 + k * (q3 - q1);
    return this.values.reduce((s, v, i) => s + (v < lo || v > hi ? this.counts[i] : 0), 0);
  }
}

export function keptPercentile(kept, q) {
  return kept.exact ? percentile([...kept.ordered].sort(asc), q) : new Histogram(kept).percentile(q);
}

function figures(kept) {
  if (kept.exact) {
    const ordered = [...kept.ordered].sort(asc);
    const pct = new Map([0.5, 0.9, 0.99].map((q) => [q, percentile(ordered, q)]));
    return { pct, ci: medianCi(ordered), mad: mad(kept.ordered), outliers: countOutliers(ordered) };
  }
  const hist = new Histogram(kept);
  const ranks = medianCiRanks(kept.n);
  const pct = new Map([0.5, 0.9, 0.99].map((q) => [q, hist.percentile(q)]));
  return {
    pct,
    ci: ranks ? [hist.atRank(ranks[0] - 1), hist.atRank(ranks[1] - 1)] : null,
    mad: hist.mad(pct.get(0.5)),
    outliers: hist.outliers(),
  };
}

/** Timed samples (ns array or Kept) -> the wire's LatencyStats (plain JSON object). */
export function summarize(samples, opts = {}) {
  const {
    itemsPerRun = 1,
    warmupRuns = 0,
    warmupStable = true,
    throttled = null,
    repeatMediansMs = [],
    keepSamples = true,
  } = opts;
  const kept = samples instanceof Kept ? samples : Kept.of(samples);
  const n = kept.n;
  const fig = figures(kept);
  const meanNs = Number(kept.totalNs) / n;
  const bn = BigInt(n);
  const varNum = bn * kept.totalSqNs - kept.totalNs * kept.totalNs;
  const stdNs = n > 1 ? Math.sqrt(Number(varNum) / (n * (n - 1))) : 0.0;
  const cv = meanNs > 0 ? stdNs / meanNs : 0.0;
  const drift = driftPct(kept.ordered);
  let spread = null;
  if (repeatMediansMs.length >= 2) {
    const mid = median(repeatMediansMs);
    spread = mid > 0 ? (Math.max(...repeatMediansMs) - Math.min(...repeatMediansMs)) / mid : null;
  }
  const [stable, text] = verdict(cv, drift, throttled, spread, warmupStable);
  const totalS = Number(kept.totalNs) / 1e9;
  const { pct, ci } = fig;
  return {
    n,
    mean_ms: meanNs / NS_PER_MS,
    std_ms: stdNs / NS_PER_MS,
    cv,
    min_ms: kept.minNs / NS_PER_MS,
    p50_ms: pct.get(0.5) / NS_PER_MS,
    p50_ci_low_ms: ci ? ci[0] / NS_PER_MS : null,
    p50_ci_high_ms: ci ? ci[1] / NS_PER_MS : null,
    p90_ms: claimable(n, 0.9) ? pct.get(0.9) / NS_PER_MS : null,
    p99_ms: claimable(n, 0.99) ? pct.get(0.99) / NS_PER_MS : null,
    max_ms: kept.maxNs / NS_PER_MS,
    mad_ms: fig.mad / NS_PER_MS,
    outliers: fig.outliers,
    drift_pct: drift,
    throughput_ips: totalS > 0 ? (itemsPerRun * n) / totalS : 0.0,
    warmup_runs: warmupRuns,
    stable,
    verdict: text,
    repeat_medians_ms: [...repeatMediansMs],
    samples_ms: keepSamples ? kept.ordered.map((v) => v / NS_PER_MS) : null,
  };
}
