// Nothing lost: results wait in the page's outbox (IndexedDB) until the collector's receipt confirms them.
// A collector that sends no receipt gets the result (PUBACKed), the page keeps it; after a reload the page
// sends it again (same result_id) and the receipt then empties the outbox. Needs `npm run build` first.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { launchChromium, runScenario, pythonFixtures, startCollector, startMosquitto, startStatic, STATIC, tmpdir, waitFor } from './harness.mjs';

const DEVICE = 'browser-outbox1';
const dir = tmpdir();
const fx = pythonFixtures(dir, DEVICE);
const good = JSON.parse(fx.good);
const broker = await startMosquitto(dir);
const web = await startStatic(STATIC);
const collector = await startCollector(broker.tcp, { [good.artifacts[0].sha256]: fs.readFileSync(fx.model) }, { receipts: false });
const browser = await launchChromium();
await runScenario({ browser, collector, web, broker }, async () => {
  const page = await browser.newPage();
  const q = new URLSearchParams({ device: DEVICE, broker: broker.ws, key: fx.pub });
  await page.goto(`${web.url}/index.html?${q}`);
  await page.waitForFunction(() => window.edgebench.state === 'idle', null, { timeout: 30000 });
  await collector.publish(`edgebench/v1/devices/${DEVICE}/jobs`, fx.good);
  const done = await waitFor('job done', () => collector.seen.events.find((e) => e.job_id === good.job_id && e.state === 'done'), 60000);
  const pending = await page.evaluate(() => window.edgebench.agent.outbox.pending);
  assert.ok(pending > 0, 'without receipts the outbox keeps its rows');
  console.log(`no receipts: ${pending} message(s) kept in the outbox after the job (result ${done.result_ids[0]})`);
  collector.options.receipts = true;
  await page.reload();
  await page.waitForFunction(() => window.edgebench.state === 'idle' && window.edgebench.agent.outbox.pending === 0, null, { timeout: 30000 });
  const copies = collector.seen.results.filter((r) => r.result_id === done.result_ids[0]).length;
  assert.equal(copies, 2, 'the result was sent again after the reload');
  const reruns = collector.seen.events.filter((e) => e.job_id === good.job_id && e.state === 'received').length;
  assert.equal(reruns, 2, 'the received event was resent, and the job not run again');
  console.log(`after a reload: result ${done.result_ids[0]} sent again (${copies} copies), receipts emptied the outbox`);
  console.log('ok: outbox test passed');
});
