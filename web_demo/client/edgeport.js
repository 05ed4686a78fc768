// edgeport's JS client: one ES module, no build step, the same file in browsers and in Node 20.
//
//   const model = await loadModel('bundles/iris/manifest.json', { fallbackUrl: 'https://api.example.com' });
//   const [result] = await model.predict([{ 'sepal length (cm)': 5.1, ... }]);
//   result.label, result.probabilities, result.confidence, result.served_by, result.fallback_reason
//
// The demo page, the Node parity runner and the browser parity harness all use this module, so the
// parity check proves what users run. It reads the bundle's manifest, verifies the model file's
// sha256 before creating the onnxruntime-web session, builds tensors from the manifest, and falls
// back to an Open Inference Protocol v2 server when the browser can't answer.

// ---------------------------------------------------------------- errors

/** Base class: every error the client throws has a `code` a UI can switch on. */
export class EdgeportError extends Error {
  constructor(message, { code = 'error', cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.code = code;
  }
}
/**
 * A row doesn't fit the manifest. `code` is one of rows, row-type, extra-column, missing-column, row-length,
 * type, missing-value, range; `row` is the row at fault and `field` the column or input the message names.
 */
export class RowValidationError extends EdgeportError {
  constructor(message, { code, cause, row, field } = {}) {
    super(message, { code, cause });
    this.row = row;
    this.field = field;
  }
}
/** A bundle file doesn't match the sha256 in the manifest, or can't be verified here. */
export class IntegrityError extends EdgeportError {}
/** The manifest, the runtime or the model could not be loaded. */
export class LoadError extends EdgeportError {}
/** Local inference threw or passed its timeout. */
export class InferenceError extends EdgeportError {}
/** The fallback server failed (after one retry) or is not configured. */
export class ServerError extends EdgeportError {}
// names set by hand, not taken from the class: a minifier renames classes (err.name would be 'b')
for (const [type, name] of [[EdgeportError, 'EdgeportError'], [RowValidationError, 'RowValidationError'],
  [IntegrityError, 'IntegrityError'], [LoadError, 'LoadError'], [InferenceError, 'InferenceError'], [ServerError, 'ServerError']]) {
  Object.defineProperty(type.prototype, 'name', { value: name, writable: true, configurable: true });
}

const DEFAULTS = { timeoutMs: 2000, confidenceThreshold: 0, onLowConfidence: 'server', retryDelayMs: 300 };
const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';

// ---------------------------------------------------------------- loading

/**
 * Load a bundle from its manifest URL (or, under Node, a file path).
 * With a fallback URL configured, a local load failure does not throw: the model answers from the server
 * and each result says why (`fallback_reason`). Without one, load failures throw typed errors.
 */
export async function loadModel(manifestUrlOrPath, options = {}) {
  const progress = options.onProgress ?? (() => {});
  const manifestUrl = String(manifestUrlOrPath);
  progress({ stage: 'manifest', loaded: 0, total: 1 });
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(await readBytes(manifestUrl, options)));
  } catch (err) {
    throw new LoadError(`could not read the manifest at ${manifestUrl}: ${err.message}`, { code: 'manifest', cause: err });
  }
  manifest = upgradeManifest(manifest);
  checkManifest(manifest);
  const policy = resolvePolicy(manifest, options);
  const model = new EdgeportModel(manifest, manifestUrl, policy, options);
  try {
    await model.loadLocal();
  } catch (err) {
    if (!policy.fallbackUrl) throw err;
    model.localError = err;
    progress({ stage: 'fallback', reason: err.code, message: err.message });
  }
  return model;
}

function resolvePolicy(manifest, options) {
  const fromManifest = manifest.fallback ?? {};
  return {
    timeoutMs: options.timeoutMs ?? fromManifest.timeout_ms ?? DEFAULTS.timeoutMs,
    confidenceThreshold: options.confidenceThreshold ?? fromManifest.confidence_threshold ?? DEFAULTS.confidenceThreshold,
    onLowConfidence: options.onLowConfidence ?? fromManifest.on_low_confidence ?? DEFAULTS.onLowConfidence,
    fallbackUrl: (options.fallbackUrl ?? fromManifest.url ?? null) || null,
    retryDelayMs: options.retryDelayMs ?? DEFAULTS.retryDelayMs,
  };
}

const MANIFEST_VERSION = 2;
const LAYOUTS = ['matrix', 'columns', 'tensors'];
const DTYPES = ['float32', 'float64', 'int32', 'int64', 'string'];

/**
 * A parsed manifest in today's form (version 2). Version 1 left the layout, `nullable` and
 * `server_model_file` implicit; this is the one place they are inferred: every other function reads
 * `manifest.layout`. Any other version is a LoadError naming it.
 */
export function upgradeManifest(manifest) {
  if (!manifest || typeof manifest !== 'object' || Array.isArray(manifest)) {
    throw new LoadError('the manifest is not a JSON object', { code: 'manifest' });
  }
  const version = manifest.manifest_version;
  if (version === MANIFEST_VERSION) return manifest;
  if (version !== 1) {
    throw new LoadError(`unsupported manifest_version ${JSON.stringify(version)}; this client reads versions 1 and ` +
      `${MANIFEST_VERSION}: re-export the bundle, or use the edgeport client that came with it`, { code: 'manifest' });
  }
  if (!Array.isArray(manifest.inputs) || !manifest.inputs.every((i) => i && typeof i === 'object')) {
    return { ...manifest, manifest_version: MANIFEST_VERSION }; // checkManifest says what is wrong
  }
  const inputs = manifest.inputs.map((input) => ({ ...input, nullable: input.nullable ?? false }));
  const layout = inputs.some((i) => i.column !== undefined && i.column !== null) ? 'columns' : inputs.length === 1 ? 'matrix' : 'tensors';
  return { ...manifest, manifest_version: MANIFEST_VERSION, layout, inputs,
    server_model_file: manifest.server_model_file ?? manifest.model_file };
}

function checkManifest(manifest) {
  const fail = (what) => { throw new LoadError(`manifest ${what}`, { code: 'manifest' }); };
  for (const field of ['name', 'version', 'format', 'task', 'layout', 'inputs', 'outputs', 'files', 'model_file', 'server_model_file']) {
    if (manifest[field] === undefined) fail(`is missing "${field}"`);
  }
  if (!LAYOUTS.includes(manifest.layout)) fail(`has layout ${JSON.stringify(manifest.layout)}; expected one of ${LAYOUTS.join(', ')}`);
  const { inputs, layout } = manifest;
  if (!Array.isArray(inputs) || inputs.length === 0) fail('has no inputs');
  for (const input of inputs) {
    if (typeof input?.name !== 'string' || !DTYPES.includes(input.dtype) || !Array.isArray(input.shape) || typeof input.nullable !== 'boolean') {
      fail(`input ${JSON.stringify(input?.name)} needs a name, a dtype (${DTYPES.join(', ')}), a shape and a boolean nullable`);
    }
  }
  if (layout === 'matrix' && inputs.length !== 1) fail(`has layout matrix with ${inputs.length} inputs; matrix takes one`);
  if (layout === 'columns' && inputs.some((i) => typeof i.column !== 'string')) fail('has layout columns, but not every input names its column');
  const allowed = TASK_ROLES[manifest.task];
  if (!allowed) fail(`has task ${JSON.stringify(manifest.task)}; expected one of ${Object.keys(TASK_ROLES).join(', ')}`);
  const roles = Array.isArray(manifest.outputs) ? manifest.outputs.map((o) => o?.role) : [];
  const stray = roles.find((r) => !allowed.includes(r));
  if (stray !== undefined || roles.length === 0) {
    fail(`outputs: a ${manifest.task} model's outputs have the roles ${allowed.join(', ')}` +
      (stray !== undefined ? `, not ${JSON.stringify(stray)}` : ', and it has none'));
  }
}

// the output roles each task may have (bundle.py's TASK_ROLES)
const TASK_ROLES = {
  classification: ['label', 'probabilities'],
  regression: ['value'],
  'multi-output-classification': ['label'],
  'anomaly-detection': ['label', 'score'],
  clustering: ['label', 'distances'],
  transformation: ['value'],
};

/** Resolve a bundle-relative path against the manifest's location (URL or file path). */
export function resolveRelative(manifestUrl, relative) {
  if (/^[a-z]+:/i.test(manifestUrl)) return new URL(relative, manifestUrl).href;
  if (!isNode && typeof location !== 'undefined') return new URL(relative, new URL(manifestUrl, location.href)).href;
  const slash = manifestUrl.lastIndexOf('/');
  return (slash >= 0 ? manifestUrl.slice(0, slash + 1) : './') + relative;
}

async function readBytes(url, options = {}, onChunk) {
  if (isNode && !/^(https?|data|blob):/i.test(url)) {
    const { readFile } = await import('node:fs/promises');
    const path = url.startsWith('file:') ? new URL(url) : url;
    return new Uint8Array(await readFile(path));
  }
  const fetchFn = options.fetch ?? globalThis.fetch;
  const response = await fetchFn(url);
  if (!response.ok) throw new LoadError(`GET ${url} answered ${response.status}`, { code: 'fetch' });
  if (!response.body?.getReader || !onChunk) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onChunk(loaded);
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) { bytes.set(chunk, offset); offset += chunk.length; }
  return bytes;
}

/** Hex sha256 with WebCrypto. Refuses (never skips) where WebCrypto is missing: plain http off localhost. */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new IntegrityError('cannot verify the model hash: WebCrypto is only available on https or localhost pages; ' +
      'serve the demo over https', { code: 'no-webcrypto' });
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Throw IntegrityError unless `bytes` match the manifest's entry for `path`. */
export async function verifyFile(manifest, path, bytes) {
  const entry = manifest.files.find((f) => f.path === path);
  if (!entry) throw new IntegrityError(`${path} is not listed in the manifest's files`, { code: 'hash' });
  const digest = await sha256Hex(bytes);
  if (bytes.length !== entry.bytes || digest !== entry.sha256) {
    throw new IntegrityError(`${path} failed its integrity check: sha256 ${digest.slice(0, 12)}…, expected ` +
      `${entry.sha256.slice(0, 12)}… (${bytes.length} bytes, expected ${entry.bytes}); refusing to run it`, { code: 'hash' });
  }
}

// ---------------------------------------------------------------- rows into tensors
//
// The decoding contract, shared with exporter/decoding.py and held by tests/corpus/decoding.json:
//   float32/float64/       a number (not a boolean, string or array). null, undefined or NaN is a missing
//   int32/int64            value: NaN where the input is nullable and a float, else `missing-value`.
//                          ±Infinity, a float32 beyond 3.4e38, an int32 outside [-2^31, 2^31), an int64
//                          outside [-2^63, 2^63): `range`; a non-integer for an integer input: `type`.
//                          (int32 is TF.js's integer type: Keras integer inputs are int32 everywhere.)
//   string                 any string as is; null/undefined is "" where nullable, else `missing-value`;
//                          anything else `type`. Unknown categories pass: the model decides.
// Per row, by manifest.layout: columns (an object keyed by exactly the columns), matrix (an array, flat
// or nested exactly like shape[1:]; or an object keyed by the input's columns), tensors (an object keyed
// by exactly the input names, each value flat or nested like its shape[1:]). The first fault in row
// order wins; within a row, inputs in manifest order and values in row-major order.

const TYPED = { float32: Float32Array, float64: Float64Array, int32: Int32Array };
const OIP_DATATYPE = { float32: 'FP32', float64: 'FP64', int32: 'INT32', int64: 'INT64', string: 'BYTES' };
const FLOAT32_MAX = 3.4028234663852886e38;
const INT_END = { int32: 2 ** 31, int64: 2 ** 63 }; // exact as doubles; intN holds [-end, end)

/** Column names the model takes, in order, with their dtypes (the demo builds its form from these). */
export function describeColumns(manifest) {
  const { inputs, layout } = manifest;
  if (layout === 'matrix') {
    const [input] = inputs;
    return (input.columns ?? []).map((name) => ({ name, dtype: input.dtype, nullable: input.nullable }));
  }
  return inputs.map((input) => ({
    name: layout === 'columns' ? input.column : input.name, dtype: input.dtype, nullable: input.nullable, categories: input.categories,
    ...(input.kind ? { kind: input.kind } : {}), // 'text': free text the model tokenizes, not a category
  }));
}

/**
 * Build input tensors from rows, as `{name: {type, data, dims}}` (no runtime needed), or throw a
 * RowValidationError naming the first row and column at fault. `manifest` is a version-2 manifest
 * (as loadModel holds it; see upgradeManifest).
 */
export function buildInputs(manifest, rows) {
  if (!Array.isArray(rows) || rows.length === 0) {
    const got = Array.isArray(rows) ? 'an empty array' : describe(rows);
    throw new RowValidationError(`predict() takes a non-empty array of rows, got ${got}`, { code: 'rows' });
  }
  const { inputs, layout } = manifest;
  if (layout === 'matrix') return { [inputs[0].name]: buildMatrix(inputs[0], rows) };
  if (layout === 'columns') return buildColumns(inputs, rows);
  if (layout === 'tensors') return buildTensors(inputs, rows);
  throw new LoadError(`manifest layout ${JSON.stringify(layout)} is not one of ${LAYOUTS.join(', ')}; ` +
    'read version-1 manifests with upgradeManifest', { code: 'manifest' });
}

function buildColumns(inputs, rows) {
  const keys = inputs.map((input) => input.column ?? input.name);
  const values = inputs.map(() => new Array(rows.length));
  rows.forEach((row, r) => {
    checkKeys(row, r, keys, inputs, 'column');
    inputs.forEach((input, k) => {
      values[k][r] = checkValue(row[keys[k]], input, r, keys[k]);
    });
  });
  return Object.fromEntries(inputs.map((input, k) => [input.name, makeTensor(input.dtype, values[k], [rows.length, 1])]));
}

function buildMatrix(input, rows) {
  const columns = input.columns ?? null;
  const dims = innerDims(input, rows);
  const byColumn = columns && dims.length === 1;
  const values = [];
  rows.forEach((row, r) => {
    if (isArrayLike(row)) {
      const flat = flatten(row, dims, input.name, r);
      for (let i = 0; i < flat.length; i++) {
        values.push(byColumn ? checkValue(flat[i], input, r, columns[i]) : checkValue(flat[i], input, r, input.name, i));
      }
    } else if (columns && isRecord(row)) {
      checkKeys(row, r, columns, columns.map(() => input), 'column');
      for (const c of columns) values.push(checkValue(row[c], input, r, c));
    } else {
      const width = dims.reduce((a, b) => a * b, 1);
      throw new RowValidationError(`row ${r}, input "${input.name}": expected an array of ${width} values` +
        `${columns ? ' or an object keyed by column' : ''}, got ${describe(row)}`, { code: 'row-type', row: r, field: input.name });
    }
  });
  return makeTensor(input.dtype, values, [rows.length, ...dims]);
}

function buildTensors(inputs, rows) {
  const names = inputs.map((input) => input.name);
  const dims = inputs.map((input) => innerDims(input, rows.map((row) => (isRecord(row) ? row[input.name] : undefined))));
  const values = inputs.map(() => []);
  rows.forEach((row, r) => {
    checkKeys(row, r, names, inputs, 'input');
    inputs.forEach((input, k) => {
      const flat = flatten(row[input.name], dims[k], input.name, r);
      for (let i = 0; i < flat.length; i++) {
        values[k].push(checkValue(flat[i], input, r, input.name, i));
      }
    });
  });
  return Object.fromEntries(inputs.map((input, k) => [input.name, makeTensor(input.dtype, values[k], [rows.length, ...dims[k]])]));
}

/** A plain object (not null, an array, a typed array, a Map...). */
function isRecord(value) {
  return Object.prototype.toString.call(value) === '[object Object]';
}

function isArrayLike(value) {
  return Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView));
}

/** Extra keys first, then missing ones; own keys only (a column named "constructor" is not found on the prototype). */
function checkKeys(row, r, keys, inputs, what) {
  if (!isRecord(row)) {
    throw new RowValidationError(`row ${r}: expected an object keyed by ${what} (${keys.join(', ')}), got ${describe(row)}`,
      { code: 'row-type', row: r });
  }
  const known = new Set(keys);
  for (const key of Object.keys(row)) {
    if (!known.has(key)) {
      throw new RowValidationError(`row ${r}: unexpected ${what} "${key}"; the model takes ${keys.join(', ')}`,
        { code: 'extra-column', row: r, field: key });
    }
  }
  keys.forEach((key, k) => {
    if (!Object.hasOwn(row, key)) {
      throw new RowValidationError(`row ${r}: missing ${what} "${key}" (expected ${inputs[k].dtype})`, { code: 'missing-column', row: r, field: key });
    }
  });
}

/** shape[1:], an unknown dimension taken from the first array row (as exporter/decoding.py does). */
function innerDims(input, rows) {
  const dims = input.shape.slice(1);
  const known = (d) => Number.isInteger(d) && d >= 0;
  if (dims.every(known)) return dims;
  let level = rows.find(isArrayLike) ?? [];
  return dims.map((d) => {
    const size = isArrayLike(level) ? level.length : 1;
    level = isArrayLike(level) && level.length ? level[0] : null;
    return known(d) ? d : size;
  });
}

/** A row's values in row-major order: flat with prod(dims) values, or nested exactly like dims; else `row-length`. */
function flatten(value, dims, name, r) {
  const width = dims.reduce((a, b) => a * b, 1);
  const fail = (why) => {
    throw new RowValidationError(`row ${r}, input "${name}": ${why}`, { code: 'row-length', row: r, field: name });
  };
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) value = Array.from(value);
  if (!Array.isArray(value)) fail(`expected an array of ${width} values shaped [${dims}], got ${describe(value)}`);
  if (!value.some(Array.isArray)) {
    if (value.length !== width) fail(`expected ${width} values (shape [${dims}]), got ${value.length}`);
    return value;
  }
  let level = [value];
  dims.forEach((size, axis) => {
    const below = [];
    for (const item of level) {
      if (!Array.isArray(item) || item.length !== size) {
        fail(`nested values don't match shape [${dims}]: ${Array.isArray(item) ? `${item.length} items` : describe(item)} ` +
          `at depth ${axis}, where the shape needs an array of ${size}`);
      }
      for (const v of item) below.push(v);
    }
    level = below;
  });
  if (level.some(Array.isArray)) fail(`values are nested deeper than shape [${dims}]`);
  return level;
}

/**
 * One value of row `r`, decoded by the contract above. An error names `field`: a column, or (with the value's
 * index `i` in row-major order) an input.
 */
function checkValue(value, input, r, field, i) {
  const { dtype } = input;
  if (dtype === 'string') {
    if (typeof value === 'string') {
      // onnxruntime-web cuts a string at U+0000, and a lone surrogate is no UTF-8 at all: either would make the
      // browser and the server read the value differently, so the contract refuses both
      if (value.includes('\u0000')) throw valueError('type', 'a string may not contain U+0000', r, field, i);
      if (!value.isWellFormed()) throw valueError('type', 'a string must be well-formed Unicode (it has a lone surrogate)', r, field, i);
      return value;
    }
    if (value === null || value === undefined) {
      if (input.nullable === true) return '';
      throw valueError('missing-value', 'a value is required (string); this model does not accept missing values here', r, field, i);
    }
    throw valueError('type', `expected a string, got ${describe(value)}`, r, field, i);
  }
  if (value === null || value === undefined || Number.isNaN(value)) {
    if (input.nullable === true && !Object.hasOwn(INT_END, dtype)) return NaN;
    throw valueError('missing-value', `a value is required (${dtype}); this model does not accept missing values here`, r, field, i);
  }
  if (typeof value !== 'number') throw valueError('type', `expected a number (${dtype}), got ${describe(value)}`, r, field, i);
  if (!Number.isFinite(value)) throw valueError('range', `an infinite value (${value}) does not fit ${dtype}`, r, field, i);
  if (Object.hasOwn(INT_END, dtype)) {
    if (!Number.isInteger(value)) throw valueError('type', `expected an integer (${dtype}), got ${value}`, r, field, i);
    if (value < -INT_END[dtype] || value >= INT_END[dtype]) throw valueError('range', `${value} does not fit ${dtype}`, r, field, i);
  } else if (dtype === 'float32' && Math.abs(value) > FLOAT32_MAX) {
    throw valueError('range', `${value} does not fit float32`, r, field, i);
  }
  return value;
}

function valueError(code, why, r, field, i) {
  const where = i === undefined ? `row ${r}, column "${field}"` : `row ${r}, input "${field}", value ${i}`;
  return new RowValidationError(`${where}: ${why}`, { code, row: r, field });
}

function describe(value) {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  const text = typeof value === 'string' ? JSON.stringify(value) : typeof value === 'bigint' ? `${value}n` : String(value);
  return `${typeof value} ${text.length > 40 ? `${text.slice(0, 37)}...` : text}`;
}

function makeTensor(dtype, values, dims) {
  if (dtype === 'string') return { type: 'string', data: values, dims };
  if (dtype === 'int64') return { type: 'int64', data: BigInt64Array.from(values, (v) => BigInt(v)), dims };
  return { type: dtype, data: TYPED[dtype].from(values), dims };
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

// ---------------------------------------------------------------- runtimes

async function createOnnxBackend(manifest, modelBytes, options) {
  const ort = options.ort ?? (await import('onnxruntime-web'));
  const isolated = globalThis.crossOriginIsolated === true;
  // threads need SharedArrayBuffer, i.e. a cross-origin isolated page; one thread is also deterministic
  ort.env.wasm.numThreads = options.numThreads ?? (isolated ? Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 1) : 1);
  if (options.wasmPaths) ort.env.wasm.wasmPaths = options.wasmPaths;
  // in browsers, run inference in onnxruntime-web's proxy worker: the page stays responsive and the
  // inference timeout can actually fire (a synchronous WASM call on the main thread can't be raced)
  ort.env.wasm.proxy = options.proxy ?? (!isNode && typeof Worker !== 'undefined');
  const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'] });
  return {
    name: 'onnxruntime-web',
    async run(inputs) {
      const feeds = {};
      for (const [name, t] of Object.entries(inputs)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
      const out = await session.run(feeds);
      const raw = {};
      for (const spec of manifest.outputs) raw[spec.role] = { data: out[spec.name].data, dims: out[spec.name].dims };
      return raw;
    },
    async release() { await session.release?.(); },
  };
}

/** TF.js has no int64 or float64 tensors: integers run as int32 (Keras bundles declare int32), floats as float32. */
function tfDtype(dtype) {
  return dtype === 'int32' || dtype === 'int64' ? 'int32' : 'float32';
}

async function createTfjsBackend(manifest, manifestUrl, modelJsonBytes, options, progress) {
  const tf = options.tf ?? (await import('@tensorflow/tfjs'));
  if (options.tfBackend) await tf.setBackend(options.tfBackend);
  await tf.ready();
  const modelJson = JSON.parse(new TextDecoder().decode(modelJsonBytes));
  const dir = manifest.model_file.includes('/') ? manifest.model_file.slice(0, manifest.model_file.lastIndexOf('/') + 1) : '';
  const weightSpecs = [];
  const shards = [];
  for (const group of modelJson.weightsManifest ?? []) {
    weightSpecs.push(...group.weights);
    for (const shard of group.paths) {
      const path = dir + shard;
      const bytes = await readBytes(resolveRelative(manifestUrl, path), options);
      await verifyFile(manifest, path, bytes); // every weight shard is checked, not just model.json
      shards.push(bytes);
      progress({ stage: 'model', loaded: shards.length, total: (modelJson.weightsManifest ?? []).reduce((n, g) => n + g.paths.length, 0) });
    }
  }
  const weightData = new Uint8Array(shards.reduce((n, b) => n + b.length, 0));
  let offset = 0;
  for (const bytes of shards) { weightData.set(bytes, offset); offset += bytes.length; }
  const artifacts = { ...modelJson, weightSpecs, weightData: weightData.buffer };
  delete artifacts.weightsManifest;
  const model = await tf.loadGraphModel({ load: async () => artifacts });
  // execute() is synchronous and enough for models without control flow; executeAsync() for the rest (RNN
  // loops). A model whose dynamic ops the scan misses switches on TF.js's own "dynamic op" refusal, which
  // is no error of the user's and must never reach them.
  let needsAsync = JSON.stringify(modelJson.modelTopology).match(/"op":\s*"(Enter|Exit|Merge|Switch|NextIteration|LoopCond|If|StatelessIf|While|StatelessWhile|NonMaxSuppression\w*|Where)"/) !== null;
  const execute = async (feeds) => {
    if (!needsAsync) {
      try {
        return model.execute(feeds);
      } catch (err) {
        if (!/dynamic op/i.test(err?.message ?? '')) throw err;
        needsAsync = true;
      }
    }
    return model.executeAsync(feeds);
  };
  // one warm-up run on zeros: TF.js compiles kernels on first use, which would otherwise land on the user's first prediction
  if (options.warmup !== false) {
    const zeros = Object.fromEntries(manifest.inputs.map((i) => [i.name, tf.zeros([1, ...i.shape.slice(1).map((d) => d ?? 1)], tfDtype(i.dtype))]));
    const out = await execute(zeros);
    tf.dispose([out, ...Object.values(zeros)]);
  }
  const [output] = manifest.outputs;
  return {
    name: `tfjs-${tf.getBackend()}`,
    async run(inputs) {
      const feeds = {};
      for (const [name, t] of Object.entries(inputs)) feeds[name] = tf.tensor(t.data, t.dims, tfDtype(t.type));
      try {
        const result = await execute(feeds);
        const tensor = Array.isArray(result) ? result[0] : result;
        const raw = { [output.role]: { data: await tensor.data(), dims: tensor.shape } };
        tf.dispose(result);
        return raw;
      } finally {
        tf.dispose(Object.values(feeds));
      }
    },
    async release() { model.dispose(); },
  };
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
    this.classes = manifest.classes ?? null;
  }

  /** Columns the model takes, for building forms and validating rows. */
  get columns() { return describeColumns(this.manifest); }

  async loadLocal() {
    const progress = this.options.onProgress ?? (() => {});
    if (typeof WebAssembly !== 'object' || this.options.forceNoWasm) {
      throw new LoadError('this browser has no WebAssembly, so the model cannot run here', { code: 'no-wasm' });
    }
    if (!['onnx', 'tfjs-graph'].includes(this.manifest.format)) {
      throw new LoadError(`bundle format ${this.manifest.format} is not supported by this client`, { code: 'format' });
    }
    const path = this.manifest.model_file;
    const expected = this.manifest.files.find((f) => f.path === path)?.bytes ?? 0;
    let bytes;
    try {
      bytes = await withTimeout(readBytes(resolveRelative(this.manifestUrl, path), this.options,
        // the manifest knows the true size; Content-Length may be the compressed one
        (loaded) => progress({ stage: 'model', loaded, total: expected })), this.options.loadTimeoutMs ?? 30000, 'loading the model');
    } catch (err) {
      throw err instanceof EdgeportError ? err : new LoadError(`could not fetch ${path}: ${err.message}`, { code: 'fetch', cause: err });
    }
    await verifyFile(this.manifest, path, bytes);
    progress({ stage: 'runtime', loaded: 0, total: 1 });
    try {
      this.backend = this.manifest.format === 'onnx'
        ? await createOnnxBackend(this.manifest, bytes, this.options)
        : await createTfjsBackend(this.manifest, this.manifestUrl, bytes, this.options, progress);
    } catch (err) {
      if (err instanceof IntegrityError) throw err;
      throw new LoadError(`the runtime could not load the model: ${err.message}`, { code: 'runtime', cause: err });
    }
    progress({ stage: 'ready', loaded: 1, total: 1 });
  }

  /**
   * Predict for an array of rows. Resolves to one result per row with `label`/`probabilities`/`confidence`
   * (classifiers) or `value` (regressors), plus `served_by`, `latency_ms`, `fallback_reason`.
   */
  async predict(rows) {
    const inputs = buildInputs(this.manifest, rows); // bad rows are the caller's bug: never sent to the server
    if (!this.backend) return this.fromServer(rows, reasonOf(this.localError));
    const started = now();
    let raw;
    try {
      raw = await withTimeout(this.backend.run(inputs), this.policy.timeoutMs, 'inference');
    } catch (err) {
      const reason = err.code === 'timeout' ? 'timeout' : 'inference-error';
      if (!this.policy.fallbackUrl) throw err instanceof EdgeportError ? err : new InferenceError(`inference failed: ${err.message}`, { code: reason, cause: err });
      return this.fromServer(rows, reason);
    }
    const latency = now() - started;
    const results = toResults(this.manifest, raw, rows.length).map((r) => ({
      ...r, served_by: 'browser', latency_ms: latency, fallback_reason: null, low_confidence: isLow(r, this.policy),
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
    const body = JSON.stringify(toInferRequest(this.manifest, buildInputs(this.manifest, rows), { fallback_reason: reason }));
    const { name, version } = this.manifest;
    const url = `${this.policy.fallbackUrl.replace(/\/$/, '')}/v2/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/infer`;
    let lastError;
    for (let attempt = 0; attempt < 2; attempt++) {
      if (attempt) await sleep(this.policy.retryDelayMs);
      try {
        const response = await withTimeout((this.options.fetch ?? globalThis.fetch)(url, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body,
        }), this.options.serverTimeoutMs ?? 10000, 'the fallback server');
        const payload = await response.json().catch(() => ({}));
        if (!response.ok) {
          lastError = new ServerError(`fallback server answered ${response.status}: ${payload.error ?? response.statusText}`, { code: 'server-status' });
          if (response.status < 500) break; // a 4xx will not change on retry
          continue;
        }
        const raw = fromInferResponse(this.manifest, payload);
        const latency = now() - started;
        return toResults(this.manifest, raw, rows.length).map((r) => ({
          ...r, served_by: 'server', latency_ms: latency, fallback_reason: reason, low_confidence: isLow(r, this.policy),
        }));
      } catch (err) {
        lastError = err instanceof ServerError ? err : new ServerError(`fallback server unreachable: ${err.message}`, { code: 'server-unreachable', cause: err });
      }
    }
    throw lastError;
  }

  async release() { await this.backend?.release(); }
}

/**
 * An OIP v2 infer request body for inputs from buildInputs: the decoded values, so the server sees what the
 * browser would have run. JSON has no NaN: a missing float goes as null; a missing nullable string is already "".
 */
export function toInferRequest(manifest, inputs, parameters) {
  return {
    ...(parameters ? { parameters } : {}),
    inputs: manifest.inputs.map((spec) => {
      const t = inputs[spec.name];
      const data = spec.dtype === 'string' ? Array.from(t.data)
        : spec.dtype === 'int64' || spec.dtype === 'int32' ? Array.from(t.data, Number) // exact: every integer came from a JS number
          : Array.from(t.data, (v) => (Number.isNaN(v) ? null : v));
      return { name: spec.name, shape: t.dims, datatype: OIP_DATATYPE[spec.dtype], data };
    }),
    outputs: manifest.outputs.map((o) => ({ name: o.name })),
  };
}

function fromInferResponse(manifest, payload) {
  const raw = {};
  for (const spec of manifest.outputs) {
    const out = (payload.outputs ?? []).find((o) => o.name === spec.name);
    if (!out) throw new ServerError(`fallback server response has no "${spec.name}" output`, { code: 'server-response' });
    raw[spec.role] = { data: out.data.flat(Infinity), dims: out.shape };
  }
  return raw;
}

function isLow(result, policy) {
  return result.confidence !== undefined && result.confidence < policy.confidenceThreshold;
}

function reasonOf(error) {
  return error?.code === 'no-wasm' ? 'no-wasm' : error?.code === 'hash' || error?.code === 'no-webcrypto' ? 'integrity' : 'load-error';
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new InferenceError(`${what} took longer than ${ms} ms`, { code: 'timeout' })), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }
function now() { return globalThis.performance?.now() ?? Date.now(); }
