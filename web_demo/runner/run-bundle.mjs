// The node parity runtime: load a bundle through the JS client and print its outputs on rows as JSON.
//   node runner/run-bundle.mjs BUNDLE_DIR [ROWS.json]      (ROWS defaults to the bundle's golden rows)
// Prints {"outputs": {role: [...]}, "timings": {...}} on stdout; on failure prints {"error": ...} and exits 1.
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { loadModel } from '../client/edgeport.js';
import { tfjsRuntime } from '../client/tfjs.js';
import { collectOutputs } from './collect.mjs';

async function main() {
  const [bundleDir, rowsFile] = process.argv.slice(2);
  if (!bundleDir) throw new Error('usage: run-bundle.mjs BUNDLE_DIR [ROWS.json]');
  const rows = JSON.parse(await readFile(rowsFile ?? path.join(bundleDir, 'golden.json'), 'utf8')).rows;
  const t0 = performance.now();
  const model = await loadModel(path.join(bundleDir, 'manifest.json'), { fallbackUrl: '', runtimes: [tfjsRuntime] });
  const t1 = performance.now();
  const results = await model.predict(rows);
  const t2 = performance.now();
  await model.predict(rows.slice(0, 1));
  const t3 = performance.now();
  process.stdout.write(JSON.stringify({
    outputs: collectOutputs(model.manifest, results),
    timings: { load_ms: t1 - t0, first_batch_ms: t2 - t1, single_row_ms: t3 - t2 },
  }));
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: `${err.name}: ${err.message}`, code: err.code ?? null }));
  process.exitCode = 1;
});
