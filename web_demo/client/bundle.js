// Reading a bundle: its manifest (upgraded to version 2 and checked), its files, and their sha256.
import { IntegrityError, LoadError } from './errors.js';

export const isNode = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';

const MANIFEST_VERSION = 2;
export const LAYOUTS = ['matrix', 'columns', 'tensors'];
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

export function checkManifest(manifest) {
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
  const files = Array.isArray(manifest.files) ? manifest.files : [];
  if (!Array.isArray(manifest.files) || files.some((f) => typeof f?.path !== 'string' || !Number.isInteger(f.bytes) || typeof f.sha256 !== 'string')) {
    fail('files must be a list of {path, bytes, sha256}');
  }
  if (!Array.isArray(manifest.outputs) || manifest.outputs.some((o) => typeof o?.name !== 'string' || !Array.isArray(o.shape))) {
    fail('outputs must each have a name and a shape');
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

export async function readBytes(url, options = {}, onChunk, signal) {
  if (isNode && !/^(https?|data|blob):/i.test(url)) {
    const fsModule = 'node:fs/promises'; // named by a variable: browser bundlers leave it alone
    const { readFile } = await import(/* webpackIgnore: true */ /* @vite-ignore */ fsModule);
    const path = url.startsWith('file:') ? new URL(url) : url;
    return new Uint8Array(await readFile(path));
  }
  const fetchFn = options.fetch ?? globalThis.fetch;
  const response = await fetchFn(url, signal ? { signal } : undefined);
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
