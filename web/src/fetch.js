// Model delivery over MQTT, as agent/jobs/chunk_fetch.py: ask for every chunk (ChunkRequest with no
// indices), assemble ArtifactChunk payloads at their offsets, ask again for the missing ones after
// chunk_timeout_s without progress (at most `retries` idle rounds), then check size and sha256 (WebCrypto).
// An artifact above the page's size budget is refused before anything is asked for.
import { hex } from './signing.js';
import { parseChunk } from './wire.js';

export class DeliveryError extends Error {}

export class ArtifactFetcher {
  constructor({ deviceId, send, budgetBytes, chunkSize = 256 * 1024, chunkTimeoutS = 10, retries = 5, now = () => performance.now() }) {
    Object.assign(this, { deviceId, send, budgetBytes, chunkSize, chunkTimeoutS, retries, now });
    this.active = new Map();
    this.cache = new Map(); // sha256 -> Uint8Array (this page's lifetime)
  }

  checkBudget(ref) {
    if (ref.size_bytes > this.budgetBytes) {
      throw new DeliveryError(
        `${ref.name}: ${ref.size_bytes} bytes exceeds the browser's size budget ` +
          `(budget_mb = ${+(this.budgetBytes / 2 ** 20).toPrecision(6)})`,
      );
    }
  }

  request(ref, indices) {
    this.send({
      kind: 'chunk_request',
      device_id: this.deviceId,
      sha256: ref.sha256,
      indices,
      chunk_size: this.chunkSize,
      schema_version: 1,
    });
  }

  /** Uint8Array of the verified artifact; DeliveryError with the reason otherwise. */
  async obtain(ref, { cancelled = () => false, progress = () => {}, verifying = () => {} } = {}) {
    this.checkBudget(ref);
    const cached = this.cache.get(ref.sha256);
    if (cached) return cached;
    const total = Math.ceil(ref.size_bytes / this.chunkSize);
    const t = { ref, total, data: new Uint8Array(ref.size_bytes), received: new Set(), lastAt: 0, wake: null };
    this.active.set(ref.sha256, t);
    try {
      this.request(ref, []);
      let askedAt = this.now();
      let countAtAsk = 0;
      let idle = 0;
      let reported = 0;
      for (;;) {
        await new Promise((resolve) => {
          t.wake = resolve;
          setTimeout(resolve, Math.min(500, this.chunkTimeoutS * 1000));
        });
        const count = t.received.size;
        if (count === total) break;
        if (cancelled()) throw new DeliveryError(`${ref.name}: fetch cancelled`);
        const now = this.now();
        if (now - reported >= 1000) {
          progress(count / total);
          reported = now;
        }
        if (now - Math.max(t.lastAt, askedAt) < this.chunkTimeoutS * 1000) continue;
        idle = count === countAtAsk ? idle + 1 : 0;
        if (idle > this.retries) {
          throw new DeliveryError(
            `${ref.name}: ${total - count} of ${total} chunks missing after ${this.retries} re-requests (${this.chunkTimeoutS} s each)`,
          );
        }
        const missing = [];
        for (let i = 0; i < total; i++) if (!t.received.has(i)) missing.push(i);
        this.request(ref, missing);
        askedAt = this.now();
        countAtAsk = count;
      }
    } finally {
      this.active.delete(ref.sha256);
    }
    verifying();
    const actual = hex(await crypto.subtle.digest('SHA-256', t.data));
    if (actual !== ref.sha256) {
      throw new DeliveryError(`${ref.name}: sha256 mismatch (expected ${ref.sha256.slice(0, 12)}..., got ${actual.slice(0, 12)}...)`);
    }
    this.cache.set(ref.sha256, t.data);
    return t.data;
  }

  /** One chunk from the broker; false when unexpected or inconsistent (ignored, like the agent). */
  onChunk(payload) {
    let chunk;
    try {
      chunk = parseChunk(payload);
    } catch {
      return false;
    }
    const t = this.active.get(chunk.sha256);
    if (!t) return false;
    const size = t.ref.size_bytes;
    const expected = Math.min(this.chunkSize, size - chunk.index * this.chunkSize);
    if (chunk.total !== t.total || chunk.size_bytes !== size || chunk.data.length !== expected) return false;
    if (!t.received.has(chunk.index)) {
      t.data.set(chunk.data, chunk.index * this.chunkSize);
      t.received.add(chunk.index);
      t.lastAt = this.now();
      if (t.received.size === t.total && t.wake) t.wake();
    }
    return true;
  }
}
