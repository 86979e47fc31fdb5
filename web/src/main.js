// The page: read the query (device, broker, key, tags, budget_mb, user, password, threads, ep), start the
// agent, expose window.edgebench for tests and show status, progress and the last results to a person.
import { BrowserAgent } from './agent.js';
import { initOrt, timerResolutionUs } from './bench.js';
import { checkId } from './wire.js';

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return `browser-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

export function parseQuery(search, storage) {
  const q = new URLSearchParams(search);
  let deviceId = q.get('device');
  if (!deviceId) {
    deviceId = storage.getItem('edgebench.device_id') || randomId();
    storage.setItem('edgebench.device_id', deviceId);
  }
  checkId(deviceId);
  const tags = (q.get('tags') || '').split(',').map((t) => t.trim()).filter(Boolean);
  tags.forEach((t) => checkId(t, 'tag'));
  const budgetMb = Number(q.get('budget_mb') || 10);
  if (!(budgetMb > 0)) throw new Error(`budget_mb must be a number > 0, got ${q.get('budget_mb')}`);
  const threads = Number(q.get('threads') || 0);
  if (!Number.isInteger(threads) || threads < 0) throw new Error(`threads must be an integer >= 0, got ${q.get('threads')}`);
  const eps = q.get('ep') ? q.get('ep').split(',').map((e) => e.trim()).filter(Boolean) : null;
  for (const ep of eps || []) if (!['wasm', 'webgpu'].includes(ep)) throw new Error(`ep: unknown execution provider ${ep} (wasm, webgpu)`);
  const defaultBroker = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname || '127.0.0.1'}:9001`;
  const broker = q.get('broker') || defaultBroker;
  if (!/^wss?:\/\//.test(broker)) throw new Error(`broker must be a ws:// or wss:// URL, got ${broker}`);
  return { deviceId, broker, keys: q.getAll('key'), tags, budgetMb, threads, eps, user: q.get('user') || '', password: q.get('password') || '' };
}

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined ? '-' : Number(x).toPrecision(d));

function render(view) {
  const eb = window.edgebench;
  eb.state = view.state;
  $('state').textContent = view.state;
  $('state').className = `state ${view.state}`;
  $('device').textContent = view.deviceId;
  if (view.facts) {
    const f = view.facts;
    $('facts').textContent = `${f.board} · ${f.cpu_cores} cores${f.ram_mb ? ` · ${f.ram_mb / 1024} GB` : ''} · ${Object.entries(f.runtimes).map(([k, v]) => `${k} ${v}`).join(' · ')}`;
  }
  const jobs = Object.values(view.jobs);
  const job = jobs[jobs.length - 1];
  if (job) {
    $('job').textContent = `${job.job_id.slice(0, 8)} ${job.state}${job.detail ? `: ${job.detail}` : ''}`;
    $('progress').value = job.progress ?? (['done', 'failed', 'rejected'].includes(job.state) ? 1 : 0);
  }
  $('results').innerHTML = '';
  for (const r of view.results.slice(-10).reverse()) {
    const tr = document.createElement('tr');
    const cells = [r.artifact.name, r.config.options.provider, r.config.threads, r.status, fmt(r.latency?.p50_ms), fmt(r.latency?.p90_ms), r.latency?.n ?? '-', r.error || r.latency?.verdict || ''];
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = String(c);
      tr.appendChild(td);
    }
    $('results').appendChild(tr);
  }
  $('log').textContent = view.log.slice(-30).join('\n');
}

async function main() {
  window.edgebench = { state: 'starting', deviceId: null, results: [], events: [], log: [] };
  let opts;
  try {
    opts = parseQuery(location.search, localStorage);
  } catch (exc) {
    window.edgebench.state = 'error';
    window.edgebench.log.push(exc.message);
    $('state').textContent = `error: ${exc.message}`;
    return;
  }
  const wasmThreads = initOrt(opts.threads, location.href);
  const agent = new BrowserAgent({ ...opts, wasmThreads, timerResolutionUs: timerResolutionUs(), storage: localStorage });
  Object.assign(window.edgebench, { deviceId: opts.deviceId, results: agent.view.results, events: agent.view.events, log: agent.view.log, agent });
  agent.onChange(render);
  agent.log(`device ${opts.deviceId}, broker ${opts.broker}, ${opts.keys.length} trusted key(s), wasm threads ${wasmThreads}${crossOriginIsolated ? '' : ' (not cross-origin isolated)'}`);
  await agent.start();
}

main();
