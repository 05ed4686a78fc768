// TF.js bundles (format tfjs-graph), as an entry point of its own: `edgeport-client/tfjs`. An app that
// only runs ONNX models never imports it, so it builds without @tensorflow/tfjs installed.
//
//   import { loadModel } from 'edgeport-client';
//   import { tfjsRuntime } from 'edgeport-client/tfjs';
//   const model = await loadModel(url, { runtimes: [tfjsRuntime] });
//
// TF.js runs on the page's thread (its WebGL backend needs the page's canvas).

/** The runtime loadModel uses for tfjs-graph bundles when it is passed in `options.runtimes`. */
export const tfjsRuntime = { format: 'tfjs-graph', createBackend: createTfjsBackend };

/** TF.js has no int64 or float64 tensors: integers run as int32 (Keras bundles declare int32), floats as float32. */
function tfDtype(dtype) {
  return dtype === 'int32' || dtype === 'int64' ? 'int32' : 'float32';
}

/**
 * `readFile(path)` resolves to a bundle file's bytes, already checked against the manifest's sha256: every
 * weight shard is checked, not just model.json.
 */
async function createTfjsBackend(manifest, modelJsonBytes, { options, progress, readFile }) {
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
      shards.push(await readFile(path));
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
