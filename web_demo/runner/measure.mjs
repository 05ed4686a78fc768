// Latency measurements of the JS client, shared by the node bench runner and the browser bench page.
export async function measure(loadModel, manifestUrl, rows, { repeats = 200, batchRepeats = 20, runtimes = [] } = {}) {
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const t0 = performance.now();
  const model = await loadModel(manifestUrl, { fallbackUrl: '', runtimes });
  const t1 = performance.now();
  await model.predict(rows.slice(0, 1));
  const t2 = performance.now();
  // a mean over many calls: browsers coarsen performance.now() to 0.1 ms off cross-origin-isolated pages
  const s0 = performance.now();
  for (let i = 0; i < repeats; i++) await model.predict(rows.slice(i % rows.length, (i % rows.length) + 1));
  const singleMean = (performance.now() - s0) / repeats;
  const batch = rows.length >= 256 ? rows.slice(0, 256) : Array.from({ length: 256 }, (_, i) => rows[i % rows.length]);
  const batches = [];
  for (let i = 0; i < batchRepeats; i++) {
    const s = performance.now();
    await model.predict(batch);
    batches.push(performance.now() - s);
  }
  // memory: the Node process's resident set, or Chromium's JS heap (WASM memory is outside the JS heap)
  const memoryMb = globalThis.process?.memoryUsage ? process.memoryUsage().rss / 2 ** 20
    : (globalThis.performance?.memory?.usedJSHeapSize ?? NaN) / 2 ** 20;
  return { load_ms: t1 - t0, first_inference_ms: t2 - t1, single_row_ms: singleMean, batch_256_ms: median(batches),
    first_prediction_since_navigation_ms: t2, memory_mb: memoryMb };
}
