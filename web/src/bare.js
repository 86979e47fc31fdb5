// A bare onnxruntime-web timing loop (bench/browser_overhead.py's reference): ?model=URL&ep=wasm&runs=N
// &warmup=N&threads=N. Exposes window.bare = {state, p50_ms, n, samples_ms, error}.
import { initOrt, ort } from './bench.js';
import { makeFeeds } from './inputs.js';
import { percentile } from './stats.js';

async function main() {
  const q = new URLSearchParams(location.search);
  window.bare = { state: 'loading', p50_ms: null, n: 0, samples_ms: [], error: null };
  try {
    const threads = initOrt(Number(q.get('threads') || 0), location.href);
    const bytes = new Uint8Array(await (await fetch(q.get('model'))).arrayBuffer());
    const session = await ort.InferenceSession.create(bytes, { executionProviders: [q.get('ep') || 'wasm'], graphOptimizationLevel: 'all' });
    const { feeds } = makeFeeds(session, {}, 1);
    const warm = Number(q.get('warmup') || 50);
    const runs = Number(q.get('runs') || 500);
    window.bare.state = 'running';
    for (let i = 0; i < warm; i++) await session.run(feeds);
    const samples = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await session.run(feeds);
      samples.push(performance.now() - t0);
    }
    const sorted = [...samples].sort((a, b) => a - b);
    Object.assign(window.bare, { state: 'done', p50_ms: percentile(sorted, 0.5), n: runs, samples_ms: samples, threads });
  } catch (exc) {
    Object.assign(window.bare, { state: 'error', error: String(exc && exc.message ? exc.message : exc) });
  }
  document.getElementById('out').textContent = JSON.stringify({ ...window.bare, samples_ms: undefined });
}

main();
