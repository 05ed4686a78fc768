// The client's worker: loads the model into onnxruntime-web and runs it, off the page's main thread.
// Created by onnx.js as `new Worker(new URL('./worker.js', import.meta.url), { type: 'module' })`, the form
// Vite, webpack and Rollup plugins recognise and bundle. Messages: {id, type: 'load', bytes, settings,
// outputs} | {id, type: 'warm-up', settings} | {id, type: 'run', inputs} | {id, type: 'release'}; each is answered
// {id, result} or {id, error}.
import * as ort from './ort.js';
import { ownBuffers, openSession, runSession, warmUp } from './session.js';

let session = null;
let outputs = [];

// one message at a time, in order: the model opens after the warm-up, and runs never overlap
let queue = Promise.resolve();
self.onmessage = ({ data: message }) => {
  queue = queue.then(() => handle(message));
};

async function handle(message) {
  const { id, type } = message;
  try {
    if (type === 'warm-up') {
      await warmUp(ort, message.settings);
      self.postMessage({ id, result: true });
    } else if (type === 'load') {
      session = await openSession(ort, message.bytes, message.settings);
      outputs = message.outputs;
      self.postMessage({ id, result: true });
    } else if (type === 'run') {
      const raw = await runSession(ort, session, outputs, message.inputs);
      self.postMessage({ id, result: raw }, ownBuffers(Object.values(raw).map((o) => o.data)));
    } else if (type === 'release') {
      await session?.release();
      session = null;
      self.postMessage({ id, result: true });
    }
  } catch (err) {
    self.postMessage({ id, error: { message: String(err?.message ?? err) } });
  }
}
