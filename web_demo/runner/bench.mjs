// node runner/bench.mjs BUNDLE_DIR: the client's latencies under Node, as JSON.
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { loadModel } from '../client/edgeport.js';
import { tfjsRuntime } from '../client/tfjs.js';
import { measure } from './measure.mjs';

const [bundleDir] = process.argv.slice(2);
const rows = JSON.parse(await readFile(path.join(bundleDir, 'golden.json'), 'utf8')).rows;
process.stdout.write(JSON.stringify(await measure(loadModel, path.join(bundleDir, 'manifest.json'), rows, { runtimes: [tfjsRuntime] })));
