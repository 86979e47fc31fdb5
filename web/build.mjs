// Build the browser agent into edgebench/browser/static/ (served by `edgebench browser serve`):
//   1. the wire validators, compiled from src/wire.schema.json by ajv (standalone code, no eval at runtime)
//   2. src/main.js -> agent.js, src/bare.js -> bare.js (esbuild, ESM, minified, no source maps)
//   3. index.html, bare.html and onnxruntime-web's wasm/mjs files (nothing from a CDN at runtime)
// Deterministic: same inputs, same bytes (no timestamps, sorted inputs, fixed esbuild options).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import standaloneCode from 'ajv/dist/standalone/index.js';
import * as esbuild from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, process.env.EDGEBENCH_WEB_OUT || '../edgebench/browser/static');
const gen = path.join(here, 'build');
const schema = JSON.parse(fs.readFileSync(path.join(here, 'src/wire.schema.json'), 'utf8'));
const KINDS = Object.keys(schema.$defs).sort();
const ORT_FILES = ['ort-wasm-simd-threaded.jsep.mjs', 'ort-wasm-simd-threaded.jsep.wasm'];

function validators() {
  const ajv = new Ajv2020({ code: { source: true, esm: true }, strict: false, allErrors: false });
  ajv.addSchema(schema);
  const refs = Object.fromEntries(KINDS.map((k) => [k, `${schema.$id}#/$defs/${k}`]));
  fs.mkdirSync(gen, { recursive: true });
  // ajv's ESM output still require()s its runtime helpers (CommonJS, which node and esbuild import
  // differently): the one the schema needs, ucs2length (a string's length in code points), is inlined
  const code = standaloneCode(ajv, refs).replace(/require\("ajv\/dist\/runtime\/ucs2length"\)\.default/g, 'ucs2length');
  if (/require\(/.test(code)) throw new Error('the ajv standalone code requires a runtime helper build.mjs does not inline');
  const helpers = 'function ucs2length(s){let n=0;for(const _ of s)n++;return n;}';
  fs.writeFileSync(path.join(gen, 'validators.js'), code.replace('"use strict";', `"use strict";${helpers}`));
}

async function bundle() {
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(path.join(out, 'ort'), { recursive: true });
  const version = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8')).version;
  const ortVersion = JSON.parse(
    fs.readFileSync(path.join(here, 'node_modules/onnxruntime-web/package.json'), 'utf8'),
  ).version;
  await esbuild.build({
    entryPoints: { agent: path.join(here, 'src/main.js'), bare: path.join(here, 'src/bare.js') },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['chrome120', 'firefox120', 'safari17'],
    conditions: ['onnxruntime-web-use-extern-wasm'],
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    outdir: out,
    logLevel: 'warning',
    define: {
      __EDGEBENCH_WEB_VERSION__: JSON.stringify(version),
      __ORT_VERSION__: JSON.stringify(ortVersion),
      'process.env.NODE_ENV': '"production"',
      global: 'globalThis',
    },
  });
  for (const page of ['index.html', 'bare.html']) fs.copyFileSync(path.join(here, page), path.join(out, page));
  for (const f of ORT_FILES) {
    fs.copyFileSync(path.join(here, 'node_modules/onnxruntime-web/dist', f), path.join(out, 'ort', f));
  }
}

validators();
await bundle();
const files = fs.readdirSync(out, { recursive: true }).filter((f) => fs.statSync(path.join(out, f)).isFile());
console.log(`built ${files.length} files into ${out}: ${files.sort().join(', ')}`);
