// webpack 5 needs no loader or plugin for edgeport: it bundles the client's worker and emits the model and
// onnxruntime-web's .wasm as assets on its own. index.html is copied as it is.
import path from 'node:path';

export default {
  mode: 'production',
  entry: './src/index.js',
  output: { path: path.resolve('dist'), filename: '[name].js', chunkFilename: '[name].[contenthash].js', publicPath: 'auto', clean: true },
  experiments: { topLevelAwait: true },
  performance: { hints: false }, // the runtime's .wasm is 14 MB, on purpose
};
