// The one place the client names its onnxruntime-web build: the WASM-only one (a 14 MB .wasm), not the
// default JSEP/WebGPU build (28 MB). Pages without a bundler (the demo site, the parity harness) serve
// their own ort.js in its place, re-exporting the same build from where they host it.
export * from 'onnxruntime-web/wasm';
