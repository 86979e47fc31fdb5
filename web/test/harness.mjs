// Node-side test harness for the browser page: a mosquitto with a WebSockets listener, a static server
// with COOP/COEP (cross-origin isolation, so wasm threads work), a minimal collector (serves artifact
// chunks, records results and events, sends receipts) and the system chromium through playwright-core.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';

export const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(WEB, '..');
export const STATIC = path.join(REPO, 'edgebench/browser/static');
const PREFIX = 'edgebench/v1';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, fn, timeoutMs = 30000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

export async function startMosquitto(dir) {
  const [ws, tcp] = [await freePort(), await freePort()];
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, `listener ${ws} 127.0.0.1\nprotocol websockets\nlistener ${tcp} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const proc = spawn('/usr/sbin/mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  await waitFor('mosquitto', () => new Promise((r) => {
    const s = net.connect(tcp, '127.0.0.1', () => { s.end(); r(true); });
    s.on('error', () => r(false));
  }), 10000);
  return { ws: `ws://127.0.0.1:${ws}`, tcp: `mqtt://127.0.0.1:${tcp}`, stop: () => proc.kill('SIGTERM') };
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream' };

/** Static files of `root` (+ extra {url: file}) with the headers cross-origin isolation needs (COOP/COEP;
 * EDGEBENCH_ISOLATE=0: without them, as `python3 -m http.server` serves). */
export async function startStatic(root, extra = {}, isolate = process.env.EDGEBENCH_ISOLATE !== '0') {
  const port = await freePort();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x').pathname;
    const file = extra[url] || path.join(root, path.normalize(url === '/' ? '/index.html' : url));
    if (!file.startsWith(root) && !extra[url]) return res.writeHead(403).end();
    fs.readFile(file, (err, data) => {
      if (err) return res.writeHead(404).end('not found');
      const isolation = isolate
        ? { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Cross-Origin-Resource-Policy': 'same-origin' }
        : {};
      res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store', ...isolation });
      res.end(data);
    });
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}`, stop: () => new Promise((r) => server.close(r)) };
}

/** A minimal collector: artifacts by sha256 -> bytes; keeps statuses, results, events; sends receipts. */
export async function startCollector(brokerUrl, artifacts, options = { receipts: true }) {
  const client = mqtt.connect(brokerUrl, { protocolVersion: 5, clientId: `test-collector-${process.pid}` });
  const seen = { status: [], results: [], events: [], chunkRequests: [] };
  client.on('message', (topic, payload) => {
    const [, , , device, ...leaf] = topic.split('/');
    const kind = leaf.join('/');
    if (!['status', 'chunks/request', 'results', 'events'].includes(kind)) return;
    const msg = JSON.parse(payload.toString());
    if (kind === 'status') seen.status.push(msg);
    if (kind === 'chunks/request') {
      seen.chunkRequests.push(msg);
      const data = artifacts[msg.sha256];
      if (!data) return;
      const total = Math.ceil(data.length / msg.chunk_size);
      const indices = msg.indices.length ? msg.indices : [...Array(total).keys()];
      for (const index of indices) {
        const part = data.subarray(index * msg.chunk_size, (index + 1) * msg.chunk_size);
        const header = JSON.stringify({ kind: 'chunk', schema_version: 1, sha256: msg.sha256, index, total, size_bytes: data.length, length: part.length });
        client.publish(`${PREFIX}/devices/${device}/chunks`, Buffer.concat([Buffer.from(header + '\n'), part]), { qos: 1 });
      }
    }
    if (kind === 'results' || kind === 'events') {
      seen[kind].push(msg);
      if (options.receipts) {
        const key = kind === 'results' ? `r:${msg.result_id}` : `e:${msg.job_id}:${msg.state}:${msg.at}`;
        const receipt = { kind: 'receipt', schema_version: 1, device_id: device, at: new Date().toISOString(), committed: [key], rejected: [] };
        client.publish(`${PREFIX}/devices/${device}/receipts`, JSON.stringify(receipt), { qos: 1 });
      }
    }
  });
  await new Promise((resolve, reject) => {
    client.on('connect', () => client.subscribe([`${PREFIX}/devices/+/#`], { qos: 1 }, (e) => (e ? reject(e) : resolve())));
    client.on('error', reject);
  });
  return {
    seen,
    options,
    publish: (topic, payload, opts = { qos: 1 }) => new Promise((r, j) => client.publish(topic, payload, opts, (e) => (e ? j(e) : r()))),
    stop: () => new Promise((r) => client.end(false, {}, r)),
  };
}

export function pythonFixtures(dir, device) {
  const out = execFileSync('python3', [path.join(WEB, 'test/fixtures.py'), dir, device], {
    env: { ...process.env, PYTHONPATH: REPO },
    encoding: 'utf8',
  });
  return JSON.parse(out);
}

/** The system chromium, headless. webgpu: a WebGPU adapter on SwiftShader (Vulkan on the CPU, no GPU
 * needed); else --disable-gpu (no adapter: the page uses wasm only and says why). */
export async function launchChromium({ webgpu = false } = {}) {
  const { chromium } = await import('playwright-core');
  const gpu = webgpu ? ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'] : ['--disable-gpu'];
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', ...gpu, '--disable-background-networking', '--enable-blink-features=ForceEagerMeasureMemory'],
  });
}

export const tmpdir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'edgebench-web-'));

// Run a scenario's body, print its failure, stop every server it started (by handle), exit 0 or 1.
export async function runScenario({ browser, collector, web, broker }, body) {
  let failed = false;
  try {
    await body();
  } catch (exc) {
    failed = true;
    console.error('FAILED:', exc.stack || exc);
  } finally {
    await browser.close();
    await collector.stop();
    await web.stop();
    broker.stop();
  }
  process.exit(failed ? 1 : 0);
}
