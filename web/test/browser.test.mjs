// End-to-end in Debian's headless chromium (no collector, no Python agent: the harness plays the
// collector): the page joins the fleet, refuses a tampered and an unsigned job, fails an artifact over
// its size budget with the reason, fetches the tiny MLP over MQTT and publishes a valid ResultRecord
// that the receipt confirms. Needs `npm run build` first. Run: node web/test/browser.test.mjs
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { launchChromium, runScenario, pythonFixtures, startCollector, startMosquitto, startStatic, STATIC, tmpdir, waitFor } from './harness.mjs';

const DEVICE = 'browser-test1';
const dir = tmpdir();
const fx = pythonFixtures(dir, DEVICE);
const model = fs.readFileSync(fx.model);
const good = JSON.parse(fx.good);
const broker = await startMosquitto(dir);
const web = await startStatic(STATIC, { '/model.onnx': fx.model });
const collector = await startCollector(broker.tcp, { [good.artifacts[0].sha256]: model });
const WEBGPU = process.env.EDGEBENCH_WEBGPU !== '0'; // SwiftShader's WebGPU adapter; 0: wasm only
const browser = await launchChromium({ webgpu: WEBGPU });
const t0 = Date.now();
await runScenario({ browser, collector, web, broker }, async () => {
  const page = await browser.newPage();
  page.on('console', (m) => m.type() === 'error' && console.log('page error:', m.text()));
  page.on('pageerror', (e) => console.log('page exception:', e.message));
  const q = new URLSearchParams({ device: DEVICE, broker: broker.ws, key: fx.pub, tags: 'lab,browsers', budget_mb: '10' });
  await page.goto(`${web.url}/index.html?${q}`);
  await page.waitForFunction(() => window.edgebench && window.edgebench.state === 'idle', null, { timeout: 30000 });
  const birth = await waitFor('birth status', () => collector.seen.status.find((s) => s.reason === 'birth'));
  assert.equal(birth.device_id, DEVICE);
  assert.equal(birth.facts.cpu_cores > 0, true);
  assert.match(birth.facts.runtimes['onnxruntime-web'], /^\d+\.\d+/);
  assert.deepEqual(birth.tags, ['lab', 'browsers']);
  console.log('birth facts:', birth.facts.board, '|', JSON.stringify(birth.facts.runtimes));
  const isolated = await page.evaluate(() => crossOriginIsolated);
  const jobsTopic = `edgebench/v1/devices/${DEVICE}/jobs`;

  const tampered = JSON.parse(fx.tampered);
  await collector.publish(jobsTopic, fx.tampered);
  const refused = await waitFor('tampered job rejected', () => collector.seen.events.find((e) => e.job_id === tampered.job_id && e.state === 'rejected'));
  assert.match(refused.detail, /^bad signature \(key [0-9a-f]{16}\)$/);
  console.log('tampered job:', refused.state, refused.detail);

  const unsigned = JSON.parse(fx.unsigned);
  await collector.publish(jobsTopic, fx.unsigned);
  const unsignedEv = await waitFor('unsigned job rejected', () => collector.seen.events.find((e) => e.job_id === unsigned.job_id && e.state === 'rejected'));
  assert.equal(unsignedEv.detail, 'unsigned job');

  const oversize = JSON.parse(fx.oversize);
  await collector.publish(jobsTopic, fx.oversize);
  const over = await waitFor('oversize job failed', () => collector.seen.events.find((e) => e.job_id === oversize.job_id && e.state === 'failed'));
  assert.equal(over.detail, "big.onnx: 20971520 bytes exceeds the browser's size budget (budget_mb = 10)");
  console.log('oversize job:', over.state, over.detail);

  await collector.publish(jobsTopic, fx.good);
  const done = await waitFor('good job done', () => collector.seen.events.find((e) => e.job_id === good.job_id && ['done', 'failed'].includes(e.state)), 60000);
  const states = collector.seen.events.filter((e) => e.job_id === good.job_id).map((e) => e.state);
  assert.equal(done.state, 'done', done.detail);
  assert.deepEqual([...new Set(states)], ['received', 'fetching', 'verifying', 'running', 'done']);
  const results = collector.seen.results.filter((r) => r.job_id === good.job_id);
  const providers = await page.evaluate(() => window.edgebench.agent.view.providers);
  const unavailable = await page.evaluate(() => window.edgebench.agent.view.unavailable);
  if (!providers.includes('webgpu')) console.log(`webgpu: skipped (${unavailable.webgpu})`);
  assert.deepEqual(results.map((x) => x.config.options.provider), providers);
  assert.deepEqual(done.result_ids, results.map((x) => x.result_id));
  for (const x of results) {
    assert.equal(x.status, 'ok', x.error);
    assert.equal(x.config.runtime, 'onnxruntime-web');
    assert.equal(x.artifact.sha256, good.artifacts[0].sha256);
    assert.ok(x.latency.n >= 20 && x.latency.p50_ms > 0 && x.cold_start.load_ms > 0);
    assert.equal(x.latency.samples_ms.length, x.latency.n);
    console.log(`result: ${x.config.options.provider} threads=${x.config.threads} isolated=${isolated} n=${x.latency.n} ` +
      `p50=${x.latency.p50_ms.toFixed(4)} ms CI [${x.latency.p50_ci_low_ms}, ${x.latency.p50_ci_high_ms}] ` +
      `load=${x.cold_start.load_ms.toFixed(1)} ms first=${x.cold_start.first_inference_ms.toFixed(2)} ms ` +
      `memory=${x.memory.inference_peak_mb ? `${x.memory.inference_peak_mb.toFixed(1)} MB` : x.memory.method}`);
  }
  const r = results[0];
  fs.writeFileSync(`${dir}/result.json`, JSON.stringify(r));
  if (process.env.EDGEBENCH_SCREENSHOT) await page.screenshot({ path: process.env.EDGEBENCH_SCREENSHOT, fullPage: true });
  console.log(`record: ${dir}/result.json`);
  // the receipt empties the page's outbox
  await page.waitForFunction(() => window.edgebench.agent.outbox.pending === 0, null, { timeout: 10000 });
  const view = await page.evaluate(() => ({ results: window.edgebench.results.length, events: window.edgebench.events.length }));
  assert.equal(view.results, results.length);

  // the bare loop on the same model, same browser
  const bare = await browser.newPage();
  await bare.goto(`${web.url}/bare.html?model=/model.onnx&runs=300&warmup=30`);
  await bare.waitForFunction(() => window.bare && ['done', 'error'].includes(window.bare.state), null, { timeout: 30000 });
  const b = await bare.evaluate(() => window.bare);
  assert.equal(b.state, 'done', b.error);
  console.log(`bare loop: p50=${b.p50_ms.toFixed(4)} ms n=${b.n} (page p50 ${r.latency.p50_ms.toFixed(4)} ms)`);
  console.log(`ok: browser test passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});
