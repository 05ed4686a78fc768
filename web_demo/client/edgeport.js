// edgeport's JS client, the `edgeport-client` package: plain ES modules, no build step, the same code in
// browsers (bundled by Vite or webpack, or served as is) and in Node 20.
//
//   import { loadModel } from 'edgeport-client';
//   const model = await loadModel('models/iris/manifest.json', { fallbackUrl: 'https://api.example.com' });
//   const [result] = await model.predict([{ 'sepal length (cm)': 5.1, ... }]);
//   result.label, result.probabilities, result.confidence, result.served_by, result.fallback_reason
//
// The demo page, the Node parity runner and the browser parity harness all use this package, so the
// parity check proves what users run. It reads the bundle's manifest, verifies each file's sha256 before
// a runtime sees it, runs ONNX models in a worker of its own (onnx.js, worker.js), builds tensors from the
// manifest (decoding.js), and falls back to an Open Inference Protocol v2 server when the browser can't
// answer. TF.js bundles need the runtime from `edgeport-client/tfjs` (tfjs.js), passed in `runtimes`.
import { checkManifest, readBytes, resolveRelative, upgradeManifest, verifyFile } from './bundle.js';
import { buildInputs, describeColumns, toInferRequest } from './decoding.js';
import { EdgeportError, InferenceError, LoadError, ServerError } from './errors.js';
import { onnxRuntime } from './onnx.js';
import { startTelemetry } from './telemetry.js';

export { resolveRelative, sha256Hex, upgradeManifest, verifyFile } from './bundle.js';
export { buildInputs, describeColumns, toInferRequest } from './decoding.js';
export { EdgeportError, InferenceError, IntegrityError, LoadError, RowValidationError, ServerError } from './errors.js';

const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once past this
const DEFAULTS = { timeoutMs: 2000, confidenceThreshold: 0, onLowConfidence: 'server', retryDelayMs: 300 };

// ---------------------------------------------------------------- loading

/**
 * Load a bundle from its manifest URL (or, under Node, a file path), or from a parsed manifest whose files
 * `options.files` locates (an npm package made by `edgeport pack` does this).
 * With a fallback URL configured, a local load failure does not throw: the model answers from the server
 * and each result says why (`fallback_reason`). Without one, load failures throw typed errors.
 * With `hedge: true` and a fallback URL, it resolves as soon as the manifest is read: predictions made while
 * the runtime loads are raced against the server, and the first answer wins.
 */
export async function loadModel(source, options = {}) {
  const progress = options.onProgress ?? (() => {});
  progress({ stage: 'manifest', loaded: 0, total: 1 });
  const manifestUrl = isPlainObject(source) ? null : String(source);
  let manifest = source;
  if (manifestUrl !== null) {
    try {
      manifest = JSON.parse(new TextDecoder().decode(await readBytes(manifestUrl, options)));
    } catch (err) {
      throw new LoadError(`could not read the manifest at ${manifestUrl}: ${err.message}`, { code: 'manifest', cause: err });
    }
  }
  manifest = upgradeManifest(manifest);
  checkManifest(manifest);
  const policy = resolvePolicy(manifest, options);
  const model = new EdgeportModel(manifest, manifestUrl, policy, options);
  const local = model.loadLocal().catch((err) => {
    if (!policy.fallbackUrl) {
      model.telemetry?.stop(); // nobody will hold this model to release it
      throw err;
    }
    model.localError = err;
    progress({ stage: 'fallback', reason: err.code, message: err.message });
  });
  if (options.hedge && policy.fallbackUrl) {
    model.loading = local.finally(() => { model.loading = null; });
  } else {
    await local;
  }
  return model;
}

/**
 * The manifest URL of a registry's model: `reference` is NAME (its production alias), NAME@ALIAS, or NAME with
 * `{ version }` to pin one. `registryUrl` is where the registry's NAME/ folders are: `edgeport serve REGISTRY`'s
 * /bundles/, or a static copy of the registry directory. The alias document (NAME/_aliases.json) is read fresh
 * on every call; a version's files never change, so a browser may cache them for good.
 */
export async function resolveModel(registryUrl, reference, { version, fetch: fetchFn = globalThis.fetch } = {}) {
  const [name, alias = 'production'] = String(reference).split('@');
  const base = String(registryUrl).replace(/\/?$/, '/');
  const folder = new URL(`${encodeURIComponent(name)}/`, new URL(base, globalThis.location?.href)).href;
  if (version !== undefined) return new URL(`${encodeURIComponent(version)}/manifest.json`, folder).href;
  let document;
  try {
    const response = await fetchFn(new URL('_aliases.json', folder).href, { cache: 'no-cache' });
    if (!response.ok) throw new Error(`it answered ${response.status}`);
    document = await response.json();
  } catch (err) {
    throw new LoadError(`could not read the aliases of ${name} at ${folder}: ${err.message}`, { code: 'manifest', cause: err });
  }
  const pinned = document?.aliases?.[alias];
  if (typeof pinned !== 'string') {
    throw new LoadError(`${name} has no alias ${JSON.stringify(alias)} (it has ${Object.keys(document?.aliases ?? {}).join(', ') || 'none'})`,
      { code: 'manifest' });
  }
  return new URL(`${encodeURIComponent(pinned)}/manifest.json`, folder).href;
}

function isPlainObject(value) {
  return Object.prototype.toString.call(value) === '[object Object]';
}

function resolvePolicy(manifest, options) {
  const fromManifest = manifest.fallback ?? {};
  return {
    timeoutMs: options.timeoutMs ?? fromManifest.timeout_ms ?? DEFAULTS.timeoutMs,
    confidenceThreshold: options.confidenceThreshold ?? fromManifest.confidence_threshold ?? DEFAULTS.confidenceThreshold,
    onLowConfidence: options.onLowConfidence ?? fromManifest.on_low_confidence ?? DEFAULTS.onLowConfidence,
    fallbackUrl: (options.fallbackUrl ?? fromManifest.url ?? null) || null,
    retryDelayMs: options.retryDelayMs ?? DEFAULTS.retryDelayMs,
    // the server asked: the version this client runs (pinned), or the server's own default; and the server's name
    // for each output role where it differs from the graph's (MLServer's scikit-learn runtime: predict_proba)
    versionPolicy: options.fallbackVersion ?? fromManifest.version_policy ?? 'pinned',
    outputNames: { ...(fromManifest.outputs ?? {}), ...(options.fallbackOutputs ?? {}) },
  };
}

/**
 * Turn raw outputs (`{role: {data, dims}}`) into one result per row: `label` (an array where the model gives one
 * per target), `probabilities` + `confidence`, `value` (a number, or an array for several targets or features),
 * `score` (anomaly detection: below 0 is an outlier), `distances` (clustering: to each centre).
 */
export function toResults(manifest, raw, rowCount) {
  const results = [];
  const probs = raw.probabilities;
  const width = probs ? (probs.dims.at(-1) ?? 1) : 0;
  const rowOf = (out, r) => {
    const n = out.data.length / rowCount;
    const slice = Array.from(out.data.slice(r * n, (r + 1) * n), plain);
    return slice.length === 1 ? slice[0] : slice;
  };
  for (let r = 0; r < rowCount; r++) {
    const result = {};
    if (raw.label) result.label = rowOf(raw.label, r);
    if (probs) {
      result.probabilities = Array.from(probs.data.slice(r * width, (r + 1) * width), Number);
      result.confidence = Math.max(...result.probabilities);
      // models without a label output (Keras classifiers): the most probable class
      if (!raw.label && manifest.classes) result.label = manifest.classes[result.probabilities.indexOf(result.confidence)];
    }
    if (raw.value) {
      const value = rowOf(raw.value, r);
      result.value = Array.isArray(value) ? value.map(Number) : Number(value);
    }
    if (raw.score) result.score = Number(rowOf(raw.score, r));
    if (raw.distances) result.distances = [rowOf(raw.distances, r)].flat().map(Number);
    results.push(result);
  }
  return results;
}

function plain(value) {
  return typeof value === 'bigint' ? Number(value) : value;
}

// ---------------------------------------------------------------- the model

export class EdgeportModel {
  constructor(manifest, manifestUrl, policy, options) {
    this.manifest = manifest;
    this.manifestUrl = manifestUrl;
    this.policy = policy;
    this.options = options;
    this.backend = null;
    this.localError = null;
    this.loading = null; // while a hedged load is under way: settles when the runtime is ready or has failed
    this.released = false;
    this.classes = manifest.classes ?? null;
    // opt-in: counts of what was predicted, reported to the server (telemetry.js); null when off
    this.telemetry = startTelemetry(manifest, options.telemetry, { fallbackUrl: policy.fallbackUrl, fetch: options.fetch });
  }

  /** Columns the model takes, for building forms and validating rows. */
  get columns() { return describeColumns(this.manifest); }

  /** A bundle file's bytes, checked against the manifest's sha256 before anything reads them. */
  async readFile(path, onChunk) {
    const url = this.options.files?.[path] ?? (this.manifestUrl !== null ? resolveRelative(this.manifestUrl, path) : null);
    if (url === null || url === undefined) {
      throw new LoadError(`no URL for the bundle file ${path}: pass its URL in options.files, or load the manifest by URL`, { code: 'fetch' });
    }
    const bytes = await readBytes(String(url), this.options, onChunk, this.aborter?.signal);
    await verifyFile(this.manifest, path, bytes);
    return bytes;
  }

  async loadLocal() {
    const progress = this.options.onProgress ?? (() => {});
    if (typeof WebAssembly !== 'object' || this.options.forceNoWasm) {
      throw new LoadError('this browser has no WebAssembly, so the model cannot run here', { code: 'no-wasm' });
    }
    const { format } = this.manifest;
    const runtime = [...(this.options.runtimes ?? []), onnxRuntime].find((r) => r?.format === format);
    if (!runtime) {
      throw new LoadError(format === 'tfjs-graph'
        ? "this bundle is a TF.js model: import { tfjsRuntime } from 'edgeport-client/tfjs' and pass { runtimes: [tfjsRuntime] } to loadModel"
        : `bundle format ${format} is not supported by this client`, { code: 'format' });
    }
    const prepared = runtime.prepare?.(this.manifest, this.options) ?? null; // overlaps the download below
    try {
      await this.openRuntime(runtime, prepared, progress);
    } catch (err) {
      prepared?.terminate(err);
      throw err;
    }
  }

  async openRuntime(runtime, prepared, progress) {
    const path = this.manifest.model_file;
    const expected = this.manifest.files.find((f) => f.path === path)?.bytes ?? 0;
    let bytes;
    const loadTimeoutMs = this.options.loadTimeoutMs ?? 30000;
    this.aborter = typeof AbortController === 'function' ? new AbortController() : null;
    try {
      // the manifest knows the true size; Content-Length may be the compressed one
      bytes = await withTimeout(this.readFile(path, (loaded) => progress({ stage: 'model', loaded, total: expected })), loadTimeoutMs,
        () => new LoadError(`downloading ${path} took longer than ${loadTimeoutMs} ms`, { code: 'fetch' }));
    } catch (err) {
      this.aborter?.abort(); // a download that timed out stops
      throw err instanceof EdgeportError ? err : new LoadError(`could not fetch ${path}: ${err.message}`, { code: 'fetch', cause: err });
    } finally {
      this.aborter = null;
    }
    progress({ stage: 'runtime', loaded: 0, total: 1 });
    try {
      const backend = await runtime.createBackend(this.manifest, bytes,
        { options: this.options, progress, prepared, readFile: (p) => this.readFile(p) });
      if (this.released) { // released while it loaded (a hedged load): nobody will use it
        await backend.release();
        return;
      }
      this.backend = backend;
    } catch (err) {
      if (err instanceof EdgeportError && err.code !== 'timeout') throw err;
      throw new LoadError(`the runtime could not load the model: ${err.message}`, { code: 'runtime', cause: err });
    }
    progress({ stage: 'ready', loaded: 1, total: 1 });
  }

  /**
   * Predict for an array of rows. Resolves to one result per row with `label`/`probabilities`/`confidence`
   * (classifiers) or `value` (regressors), plus `served_by`, `latency_ms`, `fallback_reason`.
   */
  async predict(rows) {
    if (this.released) throw new InferenceError('this model was released; load it again to predict', { code: 'released' });
    const inputs = buildInputs(this.manifest, rows); // bad rows are the caller's bug: never sent to the server
    const results = await (this.loading ? this.hedge(rows)
      : !this.backend ? this.fromServer(rows, reasonOf(this.localError)) : this.fromBrowser(rows, inputs));
    this.telemetry?.record(rows, results); // only hands them over: counting happens on a later task
    return results;
  }

  /** While the runtime loads: the server and the browser race, and the first answer wins. */
  async hedge(rows) {
    const browser = this.loading.then(() => {
      if (!this.backend) throw this.localError;
      return this.fromBrowser(rows, buildInputs(this.manifest, rows));
    });
    const server = this.fromServer(rows, 'loading');
    try {
      return await Promise.any([browser, server]);
    } catch (err) {
      // both failed: the server's error, as without hedging, with the browser's as its cause
      const [local, remote] = err.errors ?? [];
      if (remote instanceof ServerError) throw new ServerError(remote.message, { code: remote.code, cause: local });
      throw local instanceof EdgeportError ? local : remote;
    }
  }

  async fromBrowser(rows, inputs) {
    const started = now();
    let raw;
    try {
      raw = await withTimeout(this.backend.run(inputs), this.policy.timeoutMs,
        () => new InferenceError(`inference took longer than ${this.policy.timeoutMs} ms`, { code: 'timeout' }));
    } catch (err) {
      const reason = err.code === 'timeout' ? 'timeout' : 'inference-error';
      if (!this.policy.fallbackUrl) throw err instanceof EdgeportError ? err : new InferenceError(`inference failed: ${err.message}`, { code: reason, cause: err });
      return this.fromServer(rows, reason);
    }
    const latency = now() - started;
    const results = toResults(this.manifest, raw, rows.length).map((r) => ({
      ...r, served_by: 'browser', model_version: this.manifest.version, latency_ms: latency, fallback_reason: null,
      low_confidence: isLow(r, this.policy),
    }));
    if (results.some((r) => r.low_confidence) && this.policy.onLowConfidence === 'server' && this.policy.fallbackUrl) {
      try {
        const served = await this.fromServer(rows, 'low-confidence');
        return served.map((r, i) => ({ ...r, browser_confidence: results[i].confidence }));
      } catch {
        return results; // the server could not help; the local answer, marked low-confidence, is still an answer
      }
    }
    return results;
  }

  /** OIP v2 infer on the fallback server, retried once with backoff. */
  async fromServer(rows, reason) {
    if (!this.policy.fallbackUrl) {
      throw new ServerError(`the model can't run here (${reason}) and no fallback server is configured`, { code: 'no-fallback', cause: this.localError });
    }
    const started = now();
    const { outputNames, versionPolicy } = this.policy;
    const body = JSON.stringify(toInferRequest(this.manifest, buildInputs(this.manifest, rows), { fallback_reason: reason }, outputNames));
    const { name, version } = this.manifest;
    const pinned = versionPolicy === 'pinned' ? `/versions/${encodeURIComponent(version)}` : '';
    const url = `${this.policy.fallbackUrl.replace(/\/$/, '')}/v2/models/${encodeURIComponent(name)}${pinned}/infer`;
    let lastError;
    for (let attempt = 0; attempt < 2; attempt++) {
      if (attempt) await sleep(this.policy.retryDelayMs);
      try {
        const response = await withTimeout((this.options.fetch ?? globalThis.fetch)(url, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body,
        }), this.options.serverTimeoutMs ?? 10000, () => new ServerError('the fallback server did not answer in time', { code: 'server-unreachable' }));
        const payload = await response.json().catch(() => ({}));
        if (!response.ok) {
          lastError = new ServerError(`fallback server answered ${response.status}: ${payload.error ?? response.statusText}`, { code: 'server-status' });
          if (response.status < 500) break; // a 4xx will not change on retry
          continue;
        }
        const raw = fromInferResponse(this.manifest, payload, rows.length, outputNames);
        const latency = now() - started;
        const answered = typeof payload.model_version === 'string' ? payload.model_version : version;
        return toResults(this.manifest, raw, rows.length).map((r) => ({
          ...r, served_by: 'server', model_version: answered, latency_ms: latency, fallback_reason: reason,
          low_confidence: isLow(r, this.policy),
        }));
      } catch (err) {
        lastError = err instanceof ServerError ? err : new ServerError(`fallback server unreachable: ${err.message}`, { code: 'server-unreachable', cause: err });
      }
    }
    throw lastError;
  }

  /** Free the runtime (the worker and its WASM memory). Safe to call twice; predict() afterwards throws. */
  async release() {
    if (this.released) return;
    this.released = true;
    this.telemetry?.stop(); // sends what is left
    const { backend } = this;
    this.backend = null;
    await backend?.release();
  }
}

/**
 * The server's outputs by role, checked against the manifest first (values per row, numbers where the model
 * gives numbers, labels among its classes): a wrong answer is a ServerError, never a prediction.
 */
function fromInferResponse(manifest, payload, rowCount, outputNames = {}) {
  const bad = (why) => new ServerError(`the fallback server's answer does not fit the model: ${why}`, { code: 'server-response' });
  const outputs = Array.isArray(payload?.outputs) ? payload.outputs : [];
  const raw = {};
  for (const spec of manifest.outputs) {
    const served = outputNames[spec.role] ?? spec.name;
    const out = outputs.find((o) => o?.name === served);
    if (!out) {
      throw bad(`it has no "${served}" output (the model's ${spec.role}; it has ${outputs.map((o) => JSON.stringify(o?.name)).join(', ') || 'none'}` +
        `${outputNames[spec.role] ? '' : '; a server that names it otherwise needs fallbackOutputs, or export --fallback-output'})`);
    }
    if (!Array.isArray(out.data)) throw bad(`"${served}" has no data array`);
    const data = out.data.flat(Infinity);
    const inner = spec.shape.slice(1);
    const known = inner.every((d) => Number.isInteger(d) && d >= 0);
    const width = spec.role === 'probabilities' && manifest.classes ? manifest.classes.length
      : known ? inner.reduce((a, b) => a * b, 1) : data.length / rowCount;
    if (!Number.isInteger(width) || data.length !== rowCount * width) {
      throw bad(`"${served}" has ${data.length} values for ${rowCount} row${rowCount === 1 ? '' : 's'}`);
    }
    if (spec.dtype === 'string' ? !data.every((v) => typeof v === 'string') : !data.every((v) => typeof v === 'number')) {
      throw bad(`"${served}" holds values that are not ${spec.dtype === 'string' ? 'strings' : 'numbers'}`);
    }
    if (spec.role === 'label' && manifest.task === 'classification' && manifest.classes && !data.every((v) => manifest.classes.includes(v))) {
      throw bad(`"${served}" holds a label that is not one of the model's classes`);
    }
    raw[spec.role] = { data, dims: known && !(spec.role === 'probabilities' && manifest.classes) ? [rowCount, ...inner] : [rowCount, width] };
  }
  return raw;
}

function isLow(result, policy) {
  return result.confidence !== undefined && result.confidence < policy.confidenceThreshold;
}

function reasonOf(error) {
  return error?.code === 'no-wasm' ? 'no-wasm' : error?.code === 'hash' || error?.code === 'no-webcrypto' ? 'integrity' : 'load-error';
}

/** `promise`, or the error `onTimeout()` makes after `ms`. Infinity (or more than a timer can count) means never. */
function withTimeout(promise, ms, onTimeout) {
  if (!(ms < MAX_TIMER_MS)) return promise;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }
function now() { return globalThis.performance?.now() ?? Date.now(); }
