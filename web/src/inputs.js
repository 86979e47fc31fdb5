// Model inputs from the session's own metadata, as agent/measure/inputs.py: a dynamic first dimension is
// the batch, any other must be given in the job's shapes; random data, seeded (not numpy's generator:
// input_source says "random" either way).
import * as ort from 'onnxruntime-web';
import { BenchError } from './protocol.js';

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array,
  uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  bool: Uint8Array, float16: Uint16Array,
};

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const fmtShape = (shape) => shape.map((d) => (d === null ? '?' : String(d))).join('x');

/** agent.measure.inputs.resolve_shape */
export function resolveShape(name, modelShape, shapes, batch) {
  const spec = modelShape.map((d) => (typeof d === 'number' && d >= 0 ? d : null));
  if (shapes[name]) {
    const want = shapes[name];
    if (want.length !== spec.length) {
      throw new BenchError(`--shape ${name}: ${want.length} dims given, the model's input has ${spec.length} (${fmtShape(spec)})`);
    }
    spec.forEach((d, i) => {
      if (d !== null && d !== want[i] && !(i === 0 && d === 1)) throw new BenchError(`--shape ${name}=${fmtShape(want)} does not fit the model's ${fmtShape(spec)}`);
    });
    return want;
  }
  const dims = spec.map((d, i) => {
    if (i === 0 && (d === null || (d === 1 && batch !== 1))) return batch;
    if (d === null) {
      throw new BenchError(`input '${name}' has a dynamic dimension (${fmtShape(spec)}): set it with --shape ${name}=${spec.map((x) => x || 1).join('x')}`);
    }
    return d;
  });
  if (!spec.length && batch !== 1) throw new BenchError(`input '${name}' is a scalar: it cannot take a batch of ${batch}`);
  return dims;
}

export function makeFeeds(session, shapes, batch, seed = 0) {
  const rand = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const feeds = {};
  const inputShapes = {};
  const meta = session.inputMetadata || [];
  const unknown = Object.keys(shapes).filter((k) => !session.inputNames.includes(k));
  if (unknown.length) throw new BenchError(`--shape names ${unknown.sort().join(', ')} are not inputs of this model (inputs: ${session.inputNames.join(', ')})`);
  session.inputNames.forEach((name, i) => {
    const m = meta.find((x) => x.name === name) || meta[i] || {};
    if (m.isTensor === false) throw new BenchError(`input '${name}' is not a tensor`);
    const type = m.type || 'float32';
    const Arr = ARRAYS[type];
    if (!Arr) throw new BenchError(`input '${name}': cannot generate data of type ${type}`);
    const dims = resolveShape(name, m.shape || [], shapes, batch);
    const size = dims.reduce((a, b) => a * b, 1);
    const data = new Arr(size);
    for (let k = 0; k < size; k++) {
      if (type.startsWith('float') && type !== 'float16') data[k] = normal();
      else if (type === 'float16') data[k] = 0x3c00; // 1.0: JS has no float16 arithmetic to draw from
      else if (type === 'bool') data[k] = rand() < 0.5 ? 1 : 0;
      else {
        const [lo, hi] = Arr.BYTES_PER_ELEMENT === 1 ? [type === 'uint8' ? 0 : -128, 127] : [0, 10];
        const v = lo + Math.floor(rand() * (hi - lo + 1));
        data[k] = Arr === BigInt64Array || Arr === BigUint64Array ? BigInt(v) : v;
      }
    }
    feeds[name] = new ort.Tensor(type, data, dims);
    inputShapes[name] = dims;
  });
  return { feeds, inputShapes };
}
