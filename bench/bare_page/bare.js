// The least a page can do to predict one row in the browser with onnxruntime-web: its WASM-only build with
// the proxy worker on (the model loads and runs off the main thread), the model file by URL, one row, and a
// mark when the answer is there. bench/page_bench.py measures the demo page against it; it fills in the
// runtime's URL (the site's content-hashed vendor directory) where {{ORT}} stands.
import * as ort from '{{ORT}}';

const row = JSON.parse(document.getElementById('row').textContent);
ort.env.wasm.proxy = true;
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(row.model, { executionProviders: ['wasm'] });
const outputs = await session.run({ [row.input]: new ort.Tensor(row.type, row.data, row.dims) });
performance.mark('bare:first-prediction');
document.getElementById('out').textContent = JSON.stringify(Object.fromEntries(
  Object.entries(outputs).map(([name, tensor]) => [name, Array.from(tensor.data, Number)])));
