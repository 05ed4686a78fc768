// Browser telemetry, opt-in (`loadModel(url, { telemetry: true })`): counts of what the client predicted,
// sent to the server's `POST /v2/models/{name}/versions/{version}/telemetry` so that drift and fallbacks in
// the field are seen. A report holds counts only, never a row:
//
//   {"predictions": 12, "served_by": {"browser": 10, "server": 2}, "fallback_reasons": {"timeout": 2},
//    "latency_ms": {"count": 12, "sum": 40.5}, "labels": {"churn": 3, "stay": 7},
//    "sketch": {"features": {...}, "confidence": {"counts": [...]}}}
//
// `predictions`, `served_by`, `fallback_reasons` and `latency_ms` (each row's `latency_ms`, as the caller saw it)
// cover every row predict() answered; `labels` and `sketch` only the rows the browser served, since the server
// already counts the ones it answered. The sketch's format and buckets are exporter/drift.py's (its module
// docstring): a numeric column counts over its manifest bins, a string column per training category plus `other`,
// both plus `missing`; the confidence over CONFIDENCE_EDGES. Everything held is fixed in size by the manifest.
//
// Telemetry never touches a prediction: predict() hands its rows and results over after they are ready, and they
// are counted on a later task (at most `maxPending` batches wait; more are dropped). A report goes with
// navigator.sendBeacon (fetch with keepalive where there is none, as in Node) every `flushMs`, on `pagehide` and
// when the page is hidden, at most `maxReportsPerMinute` times a minute (counts wait for the next one meanwhile).
// A report that can't be sent is dropped, silently.

export const CONFIDENCE_EDGES = [0, ...Array.from({ length: 11 }, (_, i) => Math.round((0.5 + 0.05 * i) * 100) / 100)];
const TELEMETRY_DEFAULTS = { flushMs: 10000, maxReportsPerMinute: 6, maxPending: 100 };

/** The bucket of a number: how many inner edges (edges[1:-1]) are at or below it (drift.py's bin_index). */
export function binIndex(value, edges) {
  let bucket = 0;
  for (let i = 1; i < edges.length - 1; i++) {
    if (edges[i] <= value) bucket = i; else break;
  }
  return bucket;
}

/**
 * What to count for each feature the manifest has training buckets for: `{ name, kind, edges | categories, read }`,
 * where `read(row)` finds that column's value in a row (a columns-layout row by column; a matrix row by its
 * input's `columns`, as an object or a flat array). Features without bins or frequencies, and tensors layouts,
 * are left out.
 */
export function sketchFeatures(manifest) {
  const stats = manifest.feature_stats ?? {};
  const { layout, inputs } = manifest;
  const matrixColumns = layout === 'matrix' ? inputs[0]?.columns ?? null : null;
  const features = [];
  for (const [name, entry] of Object.entries(stats)) {
    let read = null;
    if (layout === 'columns' && inputs.some((input) => (input.column ?? input.name) === name)) {
      read = (row) => row?.[name];
    } else if (matrixColumns?.includes(name) && (inputs[0].shape?.length ?? 2) === 2) {
      const index = matrixColumns.indexOf(name);
      read = (row) => (Array.isArray(row) || ArrayBuffer.isView(row) ? row[index] : row?.[name]);
    }
    if (!read) continue;
    if (Array.isArray(entry?.bins?.edges) && entry.bins.edges.length) {
      features.push({ name, kind: 'numeric', edges: entry.bins.edges, read });
    } else if (entry?.frequencies && typeof entry.frequencies === 'object') {
      features.push({ name, kind: 'categorical', categories: new Set(Object.keys(entry.frequencies)), read });
    }
  }
  return features;
}

/** A sketch (drift.py's format) to count rows into: `add(row)`, `addConfidence(c)`, `take()` (and start again). */
export class Sketch {
  constructor(manifest) {
    this.features = sketchFeatures(manifest);
    this.clear();
  }

  clear() {
    this.counts = this.features.map((f) => (f.kind === 'numeric'
      ? { counts: new Array(Math.max(f.edges.length - 1, 1)).fill(0), missing: 0 }
      : { counts: {}, other: 0, missing: 0 }));
    this.confidence = new Array(CONFIDENCE_EDGES.length - 1).fill(0);
    this.seenConfidence = false;
  }

  add(row) {
    this.features.forEach((feature, k) => {
      const entry = this.counts[k];
      const value = feature.read(row);
      if (feature.kind === 'numeric') {
        const number = toNumber(value);
        if (Number.isNaN(number)) entry.missing += 1;
        else entry.counts[binIndex(number, feature.edges)] += 1;
      } else if (value === null || value === undefined || (typeof value === 'number' && Number.isNaN(value))) {
        entry.missing += 1;
      } else {
        const key = String(value);
        if (feature.categories.has(key)) entry.counts[key] = (entry.counts[key] ?? 0) + 1;
        else entry.other += 1;
      }
    });
  }

  addConfidence(confidence) {
    if (typeof confidence !== 'number' || Number.isNaN(confidence)) return;
    this.confidence[binIndex(confidence, CONFIDENCE_EDGES)] += 1;
    this.seenConfidence = true;
  }

  /** The counts so far as a sketch (features that saw nothing left out), and a fresh start. */
  take() {
    const features = {};
    this.features.forEach((feature, k) => {
      const entry = this.counts[k];
      const seen = entry.missing + (feature.kind === 'numeric' ? entry.counts.reduce((a, b) => a + b, 0)
        : entry.other + Object.values(entry.counts).reduce((a, b) => a + b, 0));
      if (seen) features[feature.name] = entry;
    });
    const sketch = { features, ...(this.seenConfidence ? { confidence: { counts: this.confidence } } : {}) };
    this.clear();
    return sketch;
  }
}

/** drift.py counts what pandas' to_numeric makes a number: numbers, booleans and numeric strings; the rest is missing. */
function toNumber(value) {
  if (typeof value === 'number') return value;
  if (typeof value === 'boolean') return Number(value);
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'string' && value.trim() !== '') {
    const number = Number(value.trim());
    return Number.isNaN(number) ? NaN : number;
  }
  return NaN;
}

function labelKey(label) {
  if (typeof label === 'boolean') return label ? 'True' : 'False';
  return Array.isArray(label) || label === null || label === undefined ? null : String(label);
}

/**
 * Telemetry for one loaded model; `options` is loadModel's `telemetry` (true or an object) and `fallbackUrl` the
 * model's. Null when it is off or there is nowhere to send reports.
 */
export function startTelemetry(manifest, options, { fallbackUrl = null, fetch: fetchFn } = {}) {
  if (!options) return null;
  const given = Object.entries(options === true ? {} : options).filter(([, value]) => value !== undefined);
  const settings = { ...TELEMETRY_DEFAULTS, ...Object.fromEntries(given) };
  const base = settings.url ?? fallbackUrl;
  if (!base) return null;
  const url = `${String(base).replace(/\/$/, '')}/v2/models/${encodeURIComponent(manifest.name)}` +
    `/versions/${encodeURIComponent(manifest.version)}/telemetry`;
  return new Telemetry(manifest, url, settings, fetchFn);
}

export class Telemetry {
  constructor(manifest, url, settings, fetchFn) {
    this.url = url;
    this.settings = settings;
    this.fetch = fetchFn;
    // labels are counted by class, named as the server names them (Python's str: True, not true); a model
    // without classes reports none, so `labels` stays as bounded as the manifest
    this.classes = new Set((manifest.classes ?? []).map(labelKey));
    this.sketch = new Sketch(manifest);
    this.pending = [];
    this.dropped = 0; // batches that found the queue full (not reported: nothing about them is known)
    this.sent = []; // when recent reports went, for the per-minute limit
    this.scheduled = null;
    this.stopped = false;
    this.reset();
    this.timer = setInterval(() => this.flush(), settings.flushMs);
    this.timer.unref?.(); // a Node process doesn't stay up for telemetry
    this.onPagehide = () => this.flush();
    this.onHide = () => { if (globalThis.document?.visibilityState === 'hidden') this.flush(); };
    globalThis.addEventListener?.('pagehide', this.onPagehide);
    globalThis.document?.addEventListener?.('visibilitychange', this.onHide);
  }

  reset() {
    this.report = { predictions: 0, served_by: { browser: 0, server: 0 }, fallback_reasons: {},
      latency_ms: { count: 0, sum: 0 }, labels: {} };
  }

  /** Hand over a prediction's rows and results; counted later, never on the caller's time. Never throws. */
  record(rows, results) {
    if (this.stopped) return;
    if (this.pending.length >= this.settings.maxPending) {
      this.dropped += 1;
      return;
    }
    this.pending.push([rows, results]);
    this.scheduled ??= setTimeout(() => this.drain(), 0);
  }

  drain() {
    this.scheduled = null;
    const batches = this.pending;
    this.pending = [];
    for (const [rows, results] of batches) {
      try {
        this.count(rows, results);
      } catch {
        // a row the caller changed since (or anything else odd) is not worth a prediction's failure
      }
    }
  }

  count(rows, results) {
    const { report } = this;
    results.forEach((result, i) => {
      report.predictions += 1;
      const by = result.served_by === 'server' ? 'server' : 'browser';
      report.served_by[by] += 1;
      if (result.fallback_reason) {
        report.fallback_reasons[result.fallback_reason] = (report.fallback_reasons[result.fallback_reason] ?? 0) + 1;
      }
      if (Number.isFinite(result.latency_ms)) {
        report.latency_ms.count += 1;
        report.latency_ms.sum += result.latency_ms;
      }
      if (by !== 'browser') return;
      const key = labelKey(result.label);
      if (key !== null && this.classes.has(key)) report.labels[key] = (report.labels[key] ?? 0) + 1;
      this.sketch.add(rows[i]);
      this.sketch.addConfidence(result.confidence);
    });
  }

  /** Send what was counted, if anything and the per-minute limit allows; counts wait otherwise. Never throws. */
  flush() {
    try {
      if (this.pending.length) this.drain();
      if (!this.report.predictions) return;
      const now = Date.now();
      this.sent = this.sent.filter((t) => now - t < 60000);
      if (this.sent.length >= this.settings.maxReportsPerMinute) return;
      this.sent.push(now);
      const body = JSON.stringify({ ...this.report, sketch: this.sketch.take() });
      this.reset();
      this.send(body);
    } catch {
      // telemetry is never worth an error
    }
  }

  send(body) {
    const navigator = globalThis.navigator;
    if (typeof navigator?.sendBeacon === 'function' && typeof Blob === 'function') {
      // text/plain is a CORS-safelisted type: a beacon to another origin needs no preflight
      navigator.sendBeacon(this.url, new Blob([body], { type: 'text/plain' })); // false (queue full): dropped
      return;
    }
    const fetchFn = this.fetch ?? globalThis.fetch;
    if (typeof fetchFn !== 'function') return;
    Promise.resolve()
      .then(() => fetchFn(this.url, { method: 'POST', keepalive: true, headers: { 'content-type': 'application/json' }, body }))
      .catch(() => {}); // the server is down: the report is dropped
  }

  /** Send what is left and stop: no timer, no listeners, nothing more recorded. */
  stop() {
    if (this.stopped) return;
    this.flush();
    this.stopped = true;
    clearInterval(this.timer);
    if (this.scheduled) clearTimeout(this.scheduled);
    globalThis.removeEventListener?.('pagehide', this.onPagehide);
    globalThis.document?.removeEventListener?.('visibilitychange', this.onHide);
  }
}
