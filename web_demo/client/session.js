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
