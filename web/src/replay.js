// Replay protection for signed jobs, as agent/jobs/replay.py, in localStorage: a job is refused once
// expired (5 minutes of clock skew allowed; a job without expires_at expires 30 days after created_at),
// or when created before this device first started; every signed job id decided on is kept (until its
// job would be refused as expired anyway) so that a captured job never runs twice.
import { parseWire, utcNow } from './wire.js';

const CLOCK_SKEW_MS = 5 * 60 * 1000;
const LEGACY_MAX_AGE_MS = 30 * 24 * 3600 * 1000;

/** The replay guard (agent/jobs/replay.py) in localStorage: first start, seen signed job ids. */
export class ReplayGuard {
  constructor(deviceId, storage) {
    this.storage = storage;
    this.idKey = `edgebench.identity.${deviceId}`;
    this.seenKey = `edgebench.seen.${deviceId}`;
    this.firstStartedAt = storage.getItem(this.idKey);
    if (!this.firstStartedAt) {
      this.firstStartedAt = utcNow();
      storage.setItem(this.idKey, this.firstStartedAt);
    }
    const now = Date.now();
    let seen = {};
    try {
      seen = JSON.parse(storage.getItem(this.seenKey) || '{}');
    } catch {
      seen = {};
    }
    this.seenIds = new Map(Object.entries(seen).filter(([, t]) => t >= now));
  }

  save() {
    try {
      this.storage.setItem(this.seenKey, JSON.stringify(Object.fromEntries(this.seenIds)));
    } catch {
      /* full storage: kept in memory */
    }
  }

  seen(jobId) {
    const t = this.seenIds.get(jobId);
    return t !== undefined && t >= Date.now();
  }

  static expiry(job) {
    return job.expires_at != null ? parseWire(job.expires_at) : parseWire(job.created_at) + LEGACY_MAX_AGE_MS;
  }

  remember(message) {
    let forget = Date.now() + LEGACY_MAX_AGE_MS;
    if (message.kind === 'job') {
      try {
        forget = ReplayGuard.expiry(message) + CLOCK_SKEW_MS;
      } catch {
        /* bad timestamps: kept like a cancel */
      }
    }
    const known = this.seenIds.get(message.job_id);
    if (known !== undefined && known >= forget) return;
    this.seenIds.set(message.job_id, forget);
    this.save();
  }

  refusal(message) {
    if (message.kind !== 'job') return null;
    let created;
    let expiry;
    try {
      created = parseWire(message.created_at);
      expiry = ReplayGuard.expiry(message);
    } catch (exc) {
      return `bad timestamp: ${exc.message}`;
    }
    if (Date.now() - CLOCK_SKEW_MS > expiry) {
      return `expired at ${message.expires_at || `${message.created_at} + 30 days (no expires_at)`}`;
    }
    if (created < parseWire(this.firstStartedAt) - CLOCK_SKEW_MS) {
      return `issued before this device joined the fleet (created ${message.created_at}, device first started ${this.firstStartedAt})`;
    }
    return null;
  }
}
