// The signing bytes of a Job / CancelJob exactly as wire/schema.py computes them:
// json.dumps(to_dict() minus key_id and signature, sort_keys=True, separators=(",", ":")) with Python's
// defaults (ensure_ascii=True, float repr). The Python side decodes first (defaults filled, ints in
// float fields become floats), so the byte form is derived from the message *and its schema*:
// a property missing from the message takes the schema's default, a number in a "number" field is
// written as Python writes a float (10 -> 10.0, 1e-05, 1e+16), one in an "integer" field as an integer.

export class CanonicalError extends Error {}

// ---------------------------------------------------------------- Python float repr
export function pyFloat(x) {
  if (typeof x !== 'number' || !Number.isFinite(x)) throw new CanonicalError(`not a finite number: ${x}`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  // toExponential() without digits: the shortest digits that round-trip (as Python's repr)
  const [mant, expText] = Math.abs(x).toExponential().split('e');
  const exp = Number(expText);
  const digits = mant.replace('.', '');
  const sign = x < 0 ? '-' : '';
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp);
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${e < 10 ? '0' : ''}${e}`;
  }
  let text;
  if (exp < 0) text = `0.${'0'.repeat(-exp - 1)}${digits}`;
  else if (digits.length <= exp + 1) text = `${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
  else text = `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
  return sign + text;
}

// ---------------------------------------------------------------- Python json string (ensure_ascii)
const SHORT = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\b': '\\b', '\f': '\\f' };

export function pyString(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    const code = s.charCodeAt(i);
    if (SHORT[ch] !== undefined) out += SHORT[ch];
    else if (code < 0x20 || code > 0x7e) out += '\\u' + code.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

function pyInt(x) {
  if (!Number.isSafeInteger(x)) throw new CanonicalError(`integer ${x} out of the exactly representable range`);
  return String(x);
}

// Python sorts keys by code point; JS's default sort compares UTF-16 code units.
function byCodePoint(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

// ---------------------------------------------------------------- schema-driven serialisation
function resolve(schema, root) {
  let s = schema || {};
  for (let hops = 0; s.$ref && hops < 16; hops++) {
    const m = /#\/\$defs\/(.+)$/.exec(s.$ref);
    if (!m || !root.$defs[m[1]]) throw new CanonicalError(`unresolvable $ref ${s.$ref}`);
    s = { ...root.$defs[m[1]], ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== '$ref')) };
  }
  return s;
}

function types(s) {
  return s.type === undefined ? [] : Array.isArray(s.type) ? s.type : [s.type];
}

export function canonical(value, schema, root) {
  const s = resolve(schema, root);
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'string') return pyString(value);
  if (typeof value === 'number') {
    const t = types(s);
    if (t.includes('number')) return pyFloat(value);
    if (t.includes('integer') || Number.isInteger(value)) return pyInt(value); // const schema_version
    return pyFloat(value);
  }
  if (Array.isArray(value)) {
    const items = resolve(s.items, root);
    return '[' + value.map((v) => canonical(v, items, root)).join(',') + ']';
  }
  if (typeof value === 'object') {
    const props = s.properties || {};
    const full = {};
    for (const [k, ps] of Object.entries(props)) {
      if (Object.prototype.hasOwnProperty.call(value, k)) full[k] = value[k];
      else if ('default' in ps) full[k] = ps.default;
    }
    for (const k of Object.keys(value)) if (!(k in props)) full[k] = value[k];
    const keys = Object.keys(full).sort(byCodePoint);
    const parts = keys.map((k) => {
      const ps = props[k] || (typeof s.additionalProperties === 'object' ? s.additionalProperties : {});
      return pyString(k) + ':' + canonical(full[k], ps, root);
    });
    return '{' + parts.join(',') + '}';
  }
  throw new CanonicalError(`cannot serialise a ${typeof value}`);
}

/** The bytes a Job or CancelJob signature covers (kind = "job" | "cancel"). */
export function signingBytes(message, root) {
  const kind = message.kind === 'cancel' ? 'CancelJob' : 'Job';
  const body = { ...message };
  delete body.key_id;
  delete body.signature;
  const schema = { ...root.$defs[kind] };
  const props = { ...schema.properties };
  delete props.key_id;
  delete props.signature;
  schema.properties = props;
  return new TextEncoder().encode(canonical(body, schema, root));
}
