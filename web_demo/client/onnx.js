// ONNX bundles: onnxruntime-web's WASM-only build, in the client's own worker in browsers (the page's main
// thread never compiles WASM or runs a model, so it has no long tasks), on the calling thread in Node.
import { InferenceError, LoadError } from './errors.js';
import { isNode } from './bundle.js';
import { ownBuffers, openSession, runSession, sessionSettings } from './session.js';

/**
 * The runtime loadModel uses for ONNX bundles. `prepare` starts what needs no model (in browsers: the worker,
 * onnxruntime-web's module and its WASM) while the page downloads and verifies the model; `createBackend`
 * then opens the model: a backend `{name, run(inputs) -> raw outputs by role, release()}`.
 */
export const onnxRuntime = {
  format: 'onnx',
  prepare(manifest, options) {
    return useWorker(options) ? startWorker(options) : null;
  },
  createBackend(manifest, modelBytes, { options, prepared }) {
    return prepared ? workerBackend(prepared, manifest, modelBytes, options) : inThreadBackend(manifest, modelBytes, options);
  },
};

function useWorker(options) {
  return options.worker ?? (!isNode && typeof Worker !== 'undefined' && !options.ort);
}

async function inThreadBackend(manifest, modelBytes, options) {
  const ort = options.ort ?? (await import('./ort.js'));
  const session = await openSession(ort, modelBytes, sessionSettings(options));
  return {
    name: 'onnxruntime-web',
    run: (inputs) => runSession(ort, session, manifest.outputs, inputs),
    release: async () => { await session.release?.(); },
  };
}

/** The client's worker and a call(message) -> Promise of its answer; terminate() ends it. */
function startWorker(options) {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const pending = new Map();
  let nextId = 0;
  let broken = null; // a worker that failed to start or crashed answers nothing more
  const fail = (error) => {
    broken = error;
    for (const { reject } of pending.values()) reject(error);
    pending.clear();
  };
  worker.onmessage = ({ data }) => {
    const call = pending.get(data.id);
    if (!call) return; // an answer that came after its timeout
    pending.delete(data.id);
    if (data.error) call.reject(new Error(data.error.message));
    else call.resolve(data.result);
  };
  worker.onerror = (event) => {
    event.preventDefault?.();
    fail(new LoadError(`the edgeport worker failed: ${event.message || 'its script could not be loaded'}`, { code: 'runtime' }));
  };
  worker.onmessageerror = () => fail(new LoadError('the edgeport worker sent a message that could not be read', { code: 'runtime' }));
  const call = (message, transfer = []) => new Promise((resolve, reject) => {
    if (broken) { reject(broken); return; }
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...message, id }, transfer);
  });
  // a warm-up that fails says nothing here: opening the model fails the same way, and says so
  call({ type: 'warm-up', settings: sessionSettings(options) }).catch(() => {});
  return {
    call,
    terminate(reason) {
      worker.terminate();
      fail(reason ?? new LoadError('the edgeport worker was stopped', { code: 'runtime' }));
    },
  };
}

async function workerBackend({ call, terminate }, manifest, modelBytes, options) {
  try {
    await call({ type: 'load', bytes: modelBytes, settings: sessionSettings(options), outputs: manifest.outputs }, ownBuffers([modelBytes]));
  } catch (err) {
    terminate(err);
    throw err;
  }
  return {
    name: 'onnxruntime-web (worker)',
    run: (inputs) => call({ type: 'run', inputs }, ownBuffers(Object.values(inputs).map((t) => t.data))),
    async release() {
      await call({ type: 'release' }).catch(() => {});
      terminate(new InferenceError('the model was released while this prediction ran', { code: 'released' }));
    },
  };
}
