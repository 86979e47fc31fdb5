// What a browser says about itself, as the agent's DeviceInfo: board = browser + OS (User-Agent Client
// Hints where the browser has them, else the user agent string), cores = navigator.hardwareConcurrency,
// memory = navigator.deviceMemory (GB, coarse; 0 where not given), the runtime and its execution providers.
import { ORT_VERSION, RUNTIME } from './bench.js';

export const AGENT_VERSION = `edgebench-web ${__EDGEBENCH_WEB_VERSION__}`;

/** Device facts from the browser (DeviceInfo). */
export async function deviceFacts(deviceId, tags, providers) {
  const nav = globalThis.navigator || {};
  const uad = nav.userAgentData;
  let high = {};
  if (uad && uad.getHighEntropyValues) {
    try {
      high = await uad.getHighEntropyValues(['architecture', 'bitness', 'platformVersion', 'fullVersionList', 'model']);
    } catch {
      high = {};
    }
  }
  let browser = '';
  const brands = (high.fullVersionList || (uad && uad.brands) || []).filter((b) => !/not.?a.?brand/i.test(b.brand));
  const pick = brands.find((b) => !/^chromium$/i.test(b.brand)) || brands[0];
  if (pick) browser = `${pick.brand} ${pick.version}`;
  const ua = nav.userAgent || '';
  if (!browser) {
    const m = /(Firefox|Edg|OPR|Chrome|Version)\/([\d.]+)/.exec(ua);
    browser = m ? `${m[1] === 'Version' ? 'Safari' : m[1]} ${m[2]}` : ua.slice(0, 60);
  }
  const platform = (uad && uad.platform) || nav.platform || '';
  const os = [platform, high.platformVersion].filter(Boolean).join(' ');
  const runtimes = { [RUNTIME]: ORT_VERSION };
  for (const p of providers) runtimes[`${RUNTIME}/${p.ep}`] = p.note;
  return {
    device_id: deviceId,
    hostname: '',
    board: `${browser} on ${platform || 'unknown OS'}${high.model ? ` (${high.model})` : ''}`,
    arch: [high.architecture, high.bitness && `${high.bitness}-bit`].filter(Boolean).join(' '),
    cpu_model: '',
    cpu_cores: nav.hardwareConcurrency || 0,
    ram_mb: nav.deviceMemory ? nav.deviceMemory * 1024 : 0,
    os,
    kernel: '',
    python: '',
    agent_version: AGENT_VERSION,
    runtimes,
    tags: [...tags],
  };
}
