// Types for edgeport-client/tfjs: the runtime for TF.js bundles (format tfjs-graph), an entry point of its own
// so that apps with only ONNX models never import @tensorflow/tfjs.
import type { Runtime } from './edgeport.js';

/** Pass it to loadModel: `loadModel(url, { runtimes: [tfjsRuntime] })`. */
export declare const tfjsRuntime: Runtime & { readonly format: 'tfjs-graph' };
