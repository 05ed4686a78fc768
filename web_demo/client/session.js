// One onnxruntime-web session: opened and run the same way in the client's worker and, where there is
// no worker (Node, `worker: false`), on the calling thread.

/** Settings for `openSession` that can cross to a worker: plain data, decided on the page. */
export function sessionSettings(options) {
  const isolated = globalThis.crossOriginIsolated === true;
  return {
    // threads need SharedArrayBuffer, i.e. a cross-origin isolated page; one thread is also deterministic
    numThreads: options.numThreads ?? (isolated ? Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 1) : 1),
    wasmPaths: options.wasmPaths ?? null,
  };
}

export async function openSession(ort, modelBytes, { numThreads, wasmPaths }) {
  ort.env.wasm.numThreads = numThreads;
  if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.wasm.proxy = false; // the client runs sessions in a worker of its own
  return ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'] });
}

// A 67-byte ONNX graph, y = Identity(x): opening it makes onnxruntime-web fetch and compile its WASM, which it
// otherwise does only when the first real session opens. The worker does this while the page downloads and
// verifies the model, so the two overlap instead of running one after the other.
const IDENTITY_ONNX = 'CAgSADo3ChAKAXgSAXkiCElkZW50aXR5EgF3Wg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQDQ==';

/** Start onnxruntime-web's WASM now, with no model yet. */
export async function warmUp(ort, settings) {
  const bytes = Uint8Array.from(atob(IDENTITY_ONNX), (c) => c.charCodeAt(0));
  const session = await openSession(ort, bytes, settings);
  await session.release?.();
}

/** Feed `{name: {type, data, dims}}` tensors; return the outputs as `{role: {data, dims}}`. */
export async function runSession(ort, session, outputs, inputs) {
  const feeds = {};
  for (const [name, t] of Object.entries(inputs)) feeds[name] = new ort.Tensor(t.type, t.data, t.dims);
  const out = await session.run(feeds);
  const raw = {};
  for (const spec of outputs) raw[spec.role] = { data: out[spec.name].data, dims: out[spec.name].dims };
  return raw;
}

/** The buffers of typed arrays that own all of theirs: those can be transferred rather than copied. */
export function ownBuffers(arrays) {
  const buffers = new Set();
  for (const a of arrays) {
    if (ArrayBuffer.isView(a) && a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength) buffers.add(a.buffer);
  }
  return [...buffers];
}
