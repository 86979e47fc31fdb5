// Ed25519 job signatures, as wire/signing.py: key_id = first 16 hex digits of sha256(raw 32-byte public
// key); the signature is base64 Ed25519 over the canonical signing bytes (./canonical.js). WebCrypto only.
import { signingBytes } from './canonical.js';

const SPKI_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);

export class SignatureError extends Error {}

export function b64decode(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new SignatureError('not valid base64');
  }
  const bin = atob(text);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A trusted key in the text form the Python agent reads: the PEM of a `.pub` file (SubjectPublicKeyInfo);
 * also its base64 body alone, or the raw 32-byte key in base64. Spaces inside the body are taken as '+'
 * (a PEM pasted unencoded into a URL query). Returns the raw 32 bytes. */
export function parsePublicKey(text) {
  const lines = String(text).replace(/\r/g, '').split('\n');
  const body = lines
    .filter((l) => !l.startsWith('-----'))
    .map((l) => l.trim().replace(/ /g, '+'))
    .join('');
  let der;
  try {
    der = b64decode(body);
  } catch {
    throw new SignatureError('a trusted key must be an Ed25519 public key PEM (the .pub file), or its base64');
  }
  if (der.length === 32) return der;
  const prefixOk = der.length === 44 && SPKI_PREFIX.every((b, i) => der[i] === b);
  if (!prefixOk) throw new SignatureError(`not an Ed25519 public key (${der.length} bytes of DER)`);
  return der.slice(12);
}

export async function keyId(raw) {
  return hex(await crypto.subtle.digest('SHA-256', raw)).slice(0, 16);
}

/** key texts -> Map(key_id -> CryptoKey). Throws SignatureError naming the bad key. */
export async function loadTrustedKeys(texts) {
  const keys = new Map();
  for (const [i, text] of texts.entries()) {
    const raw = parsePublicKey(text);
    const key = await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify']);
    keys.set(await keyId(raw), key);
  }
  return keys;
}

/** Check a Job / CancelJob (plain JSON, schema-valid) against the trusted keys: its key id, or a
 * SignatureError with wire/signing.py's reason ("unsigned job", "signed by unknown key ...", ...). */
export async function verify(message, trusted, schemaRoot) {
  if (!message.signature || !message.key_id) throw new SignatureError('unsigned job');
  const key = trusted.get(message.key_id);
  if (!key) throw new SignatureError(`signed by unknown key '${message.key_id}'`);
  let signature;
  try {
    signature = b64decode(message.signature);
  } catch {
    throw new SignatureError('signature is not valid base64');
  }
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, signature, signingBytes(message, schemaRoot));
  if (!ok) throw new SignatureError(`bad signature (key ${message.key_id})`);
  return message.key_id;
}
