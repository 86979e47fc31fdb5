// The page's outbox: every ResultRecord and JobEvent is stored (IndexedDB) with its delivery key
// (wire/receipts.py) before it is sent, and stays until the collector's Receipt lists the key as
// committed or rejected. Sent rows without a receipt are sent again after confirm_timeout_s (doubling up
// to confirm_timeout_max_s), and every unconfirmed row again after a reconnect: nothing is lost when
// the broker, the collector or the page goes away. Falls back to memory where IndexedDB is unavailable.

const DB = 'edgebench';
const STORE = 'outbox';

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export class Outbox {
  constructor({ deviceId, confirmTimeoutS = 30, confirmTimeoutMaxS = 600 }) {
    Object.assign(this, { deviceId, confirmTimeoutS, confirmTimeoutMaxS });
    this.rows = new Map(); // key -> {key, topic, payload, seq, sentAt, timeoutS}
    this.seq = 0;
    this.db = null;
    this.confirmed = 0;
    this.rejected = 0;
    this.resent = 0;
  }

  async open() {
    try {
      this.db = await new Promise((resolve, reject) => {
        const r = indexedDB.open(`${DB}-${this.deviceId}`, 1);
        r.onupgradeneeded = () => r.result.createObjectStore(STORE, { keyPath: 'key' });
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
      });
      const all = await req(this.db.transaction(STORE).objectStore(STORE).getAll());
      all.sort((a, b) => a.seq - b.seq);
      for (const row of all) {
        this.rows.set(row.key, { ...row, sentAt: null, timeoutS: this.confirmTimeoutS });
        this.seq = Math.max(this.seq, row.seq + 1);
      }
    } catch {
      this.db = null; // memory only: still resent until confirmed while the page lives
    }
    return this;
  }

  get pending() {
    return this.rows.size;
  }

  async put(key, topic, payload) {
    const row = { key, topic, payload, seq: this.seq++ };
    this.rows.set(key, { ...row, sentAt: null, timeoutS: this.confirmTimeoutS });
    if (this.db) await req(this.db.transaction(STORE, 'readwrite').objectStore(STORE).put(row));
  }

  /** Rows to (re)send now: never sent since the last connect, or sent and unconfirmed too long. */
  due(nowMs) {
    const out = [];
    for (const row of this.rows.values()) {
      if (row.sentAt === null) out.push(row);
      else if (row.acked && nowMs - row.sentAt > row.timeoutS * 1000) {
        row.timeoutS = Math.min(row.timeoutS * 2, this.confirmTimeoutMaxS);
        this.resent += 1;
        out.push(row);
      }
    }
    return out;
  }

  markSent(row, nowMs) {
    row.sentAt = nowMs;
    row.acked = false;
  }

  markAcked(key, nowMs) {
    const row = this.rows.get(key);
    if (row) {
      row.acked = true;
      row.sentAt = nowMs;
    }
  }

  /** After a reconnect every unconfirmed row goes again. */
  resetSent() {
    for (const row of this.rows.values()) row.sentAt = null;
  }

  async receipt(receipt) {
    const keys = [...receipt.committed, ...receipt.rejected.map((r) => r.key)];
    let removed = 0;
    for (const key of keys) {
      if (!this.rows.delete(key)) continue;
      removed += 1;
      if (this.db) await req(this.db.transaction(STORE, 'readwrite').objectStore(STORE).delete(key));
    }
    this.confirmed += receipt.committed.length;
    this.rejected += receipt.rejected.length;
    return removed;
  }
}
