// Browser telemetry (client/telemetry.js): drift.py's buckets, the report's contract, and that it never touches
// a prediction: the same results, no slower, nothing thrown when the server is down, bounded in reports and memory.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { loadModel } from '../client/edgeport.js';
import { binIndex, CONFIDENCE_EDGES, Sketch, startTelemetry } from '../client/telemetry.js';

const FEATURE_STATS = {
  age: { count: 3, missing: 0, mean: 1.5, bins: { edges: [0, 1, 2, 3], counts: [1, 1, 1] } },
  plan: { count: 8, missing: 0, frequencies: { basic: 5, premium: 3 } },
  visits: { count: 8, missing: 0, mean: 2 }, // a manifest from before bins: nothing to count into
};
const COLUMNS = {
  manifest_version: 2, name: 'churn', version: '3', format: 'onnx', task: 'classification', layout: 'columns',
  model_file: 'model.onnx', server_model_file: 'model.onnx', classes: ['churn', 'stay'], feature_stats: FEATURE_STATS,
  inputs: [
    { name: 'age', column: 'age', dtype: 'float64', shape: [null, 1], nullable: true },
    { name: 'plan', column: 'plan', dtype: 'string', shape: [null, 1], nullable: true },
    { name: 'visits', column: 'visits', dtype: 'int64', shape: [null, 1], nullable: false },
  ],
  outputs: [{ name: 'label', dtype: 'string', shape: [null], role: 'label' },
    { name: 'probabilities', dtype: 'float32', shape: [null, 2], role: 'probabilities' }],
  fallback: { confidence_threshold: 0, on_low_confidence: 'server', url: null },
};

test("numeric buckets are drift.py's bin_index: inner edges at or below, outside values in the first or last", () => {
  const edges = [0, 1, 2, 3];
  // np.searchsorted(edges[1:-1], values, side="right") on the same values
  const values = [-5, 0, 0.5, 1, 2.999, 3, 100, Infinity, -Infinity];
  assert.deepEqual(values.map((v) => binIndex(v, edges)), [0, 0, 0, 1, 2, 2, 2, 2, 0]);
  assert.deepEqual([1, 5, 9].map((v) => binIndex(v, [5])), [0, 0, 0], 'a single edge is a single bucket');
  assert.deepEqual(CONFIDENCE_EDGES, [0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1]);
  assert.deepEqual([0.3, 0.5, 0.54, 0.55, 0.999, 1].map((v) => binIndex(v, CONFIDENCE_EDGES)), [0, 1, 1, 2, 10, 10]);
});

test('a sketch counts columns rows by bins and categories, with other and missing; features without buckets are left out', () => {
  const sketch = new Sketch(COLUMNS);
  const rows = [
    { age: -5, plan: 'basic', visits: 1 }, { age: 0.5, plan: 'zzz', visits: 1 }, { age: null, plan: null, visits: 1 },
    { age: NaN, plan: 'premium', visits: 1 }, { age: 3, plan: 'basic', visits: 1 }, { age: 100, plan: undefined, visits: 1 },
    { age: 1, plan: 'Basic', visits: 1 },
  ];
  rows.forEach((row) => sketch.add(row));
  [0.3, 0.97, 1].forEach((c) => sketch.addConfidence(c));
  assert.deepEqual(sketch.take(), {
    features: {
      age: { counts: [2, 1, 2], missing: 2 },
      plan: { counts: { basic: 2, premium: 1 }, other: 2, missing: 2 },
    },
    confidence: { counts: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2] },
  });
  assert.deepEqual(sketch.take(), { features: {} }, 'take starts again; a feature that saw nothing is left out');
});

test('a matrix input with columns is counted by column, from arrays and from objects', () => {
  const matrix = { layout: 'matrix', feature_stats: { a: { bins: { edges: [0, 10, 20] } }, b: { frequencies: {} }, c: { bins: { edges: [5] } } },
    inputs: [{ name: 'input', dtype: 'float32', shape: [null, 3], columns: ['a', 'b', 'c'], nullable: true }] };
  const sketch = new Sketch(matrix);
  sketch.add([15, 1, 99]);
  sketch.add(Float32Array.from([25, 2, -1]));
  sketch.add({ a: 5, b: null, c: 7 });
  const { features } = sketch.take();
  assert.deepEqual(features, { a: { counts: [1, 2], missing: 0 }, b: { counts: {}, other: 2, missing: 1 }, c: { counts: [3], missing: 0 } });
  const tensors = new Sketch({ layout: 'tensors', feature_stats: { x: { bins: { edges: [0, 1] } } }, inputs: [{ name: 'x', shape: [null, 4] }] });
  assert.deepEqual(tensors.features, [], 'a tensors layout has no columns to count');
});

// ---------------------------------------------------------------- through loadModel and predict

async function writeBundle(manifest) {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgeport-telemetry-'));
  const bytes = Buffer.from('model');
  await writeFile(path.join(dir, 'model.onnx'), bytes);
  const files = [{ path: 'model.onnx', bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') }];
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify({ ...manifest, files }));
  return path.join(dir, 'manifest.json');
}

/** A classifier: 'churn' with 0.9 when age > 2, else 'stay' with 0.6. */
function fakeOrt() {
  class Tensor { constructor(type, data, dims) { Object.assign(this, { type, data, dims }); } }
  return {
    env: { wasm: {} },
    Tensor,
    InferenceSession: {
      create: async () => ({
        run: async (feeds) => {
          const ages = Array.from(feeds.age.data);
          return {
            label: { data: ages.map((a) => (a > 2 ? 'churn' : 'stay')), dims: [ages.length] },
            probabilities: { data: Float32Array.from(ages.flatMap((a) => (a > 2 ? [0.9, 0.1] : [0.4, 0.6]))), dims: [ages.length, 2] },
          };
        },
      }),
    },
  };
}

/** A fetch that keeps what it is sent. */
function recorder({ fail = null } = {}) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init, body: JSON.parse(init.body) });
    if (fail === 'reject') throw new TypeError('fetch failed');
    if (fail === 'throw') throw new Error('boom');
    return new Response('{}', { status: fail === 'status' ? 500 : 200 });
  };
  return { calls, fetch };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 5));
const ROWS = [{ age: 3.5, plan: 'basic', visits: 1 }, { age: 0.5, plan: 'premium', visits: 2 }, { age: null, plan: 'gold', visits: 3 }];

test('after N predictions a report goes to the server with the right counts, and release() sends it', async () => {
  const { calls, fetch } = recorder();
  const model = await loadModel(await writeBundle(COLUMNS),
    { ort: fakeOrt(), fetch, fallbackUrl: 'http://api.example/', telemetry: { flushMs: 60000 } });
  for (let i = 0; i < 4; i++) await model.predict(ROWS);
  assert.equal(calls.length, 0, 'nothing sent before a flush');
  await model.release();
  await tick();
  assert.equal(calls.length, 1);
  const [{ url, init, body }] = calls;
  assert.equal(url, 'http://api.example/v2/models/churn/versions/3/telemetry');
  assert.deepEqual([init.method, init.keepalive], ['POST', true]);
  assert.deepEqual(Object.keys(body).sort(), ['fallback_reasons', 'labels', 'latency_ms', 'predictions', 'served_by', 'sketch']);
  assert.equal(body.predictions, 12);
  assert.deepEqual(body.served_by, { browser: 12, server: 0 });
  assert.deepEqual(body.fallback_reasons, {});
  assert.equal(body.latency_ms.count, 12);
  assert.ok(body.latency_ms.sum >= 0);
  assert.deepEqual(body.labels, { churn: 4, stay: 8 });
  assert.deepEqual(body.sketch, {
    features: { age: { counts: [4, 0, 4], missing: 4 }, plan: { counts: { basic: 4, premium: 4 }, other: 4, missing: 0 } },
    // float32 probabilities: 0.6 is 0.60000002, in [0.6, 0.65); 0.9 is 0.89999998, in [0.85, 0.9)
    confidence: { counts: [0, 0, 0, 8, 0, 0, 0, 0, 4, 0, 0] },
  });
});

test('rows the server answered count in served_by and fallback_reasons, not in the labels or the sketch', async () => {
  const { calls, fetch } = recorder();
  const serverFetch = async (url, init) => {
    if (url.endsWith('/telemetry')) return fetch(url, init);
    return new Response(JSON.stringify({ outputs: [{ name: 'label', data: ['stay'] }, { name: 'probabilities', data: [0.2, 0.8] }] }));
  };
  const model = await loadModel(await writeBundle(COLUMNS),
    { fetch: serverFetch, forceNoWasm: true, fallbackUrl: 'http://api.example', telemetry: true });
  await model.predict([ROWS[0]]);
  await model.release();
  await tick();
  const [{ body }] = calls;
  assert.deepEqual([body.predictions, body.served_by, body.fallback_reasons], [1, { browser: 0, server: 1 }, { 'no-wasm': 1 }]);
  assert.deepEqual([body.labels, body.sketch], [{}, { features: {} }]);
});

test('a report holds no raw value of a row', async () => {
  const { calls, fetch } = recorder();
  const distinctive = { age: 2.718281828, plan: 'ZQX-distinctive-plan', visits: 987654 };
  const model = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fetch, fallbackUrl: 'http://api.example', telemetry: true });
  await model.predict([distinctive, distinctive]);
  await model.release();
  await tick();
  const sent = calls[0].init.body;
  for (const value of ['2.718281828', 'ZQX', 'distinctive', '987654']) assert.ok(!sent.includes(value), `${value} in ${sent}`);
  assert.deepEqual(calls[0].body.sketch.features.plan, { counts: {}, other: 2, missing: 0 });
});

test('predict() gives the same results with telemetry on, is no slower, and counts only after it has returned', async () => {
  const { fetch } = recorder();
  const off = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fallbackUrl: '' });
  const on = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fetch, telemetry: { url: 'http://t.example' } });
  const strip = (results) => results.map(({ latency_ms, ...r }) => r);
  assert.deepEqual(strip(await on.predict(ROWS)), strip(await off.predict(ROWS)));
  assert.equal(on.telemetry.report.predictions, 0, 'counted on a later task, not in predict()');
  await tick();
  assert.equal(on.telemetry.report.predictions, 3);

  const median = async (model) => {
    const times = [];
    for (let i = 0; i < 200; i++) {
      const started = performance.now();
      await model.predict(ROWS);
      times.push(performance.now() - started);
    }
    return times.sort((a, b) => a - b)[100];
  };
  await median(on); await median(off); // warm both
  const [withTelemetry, without] = [await median(on), await median(off)];
  assert.ok(withTelemetry < without + 0.5, `median ${withTelemetry.toFixed(3)} ms with telemetry, ${without.toFixed(3)} ms without`);
  await on.release(); await off.release();
});

test('a server that is down, refuses or throws never reaches predict(); the report is dropped, not kept', async () => {
  for (const fail of ['reject', 'throw', 'status']) {
    const { calls, fetch } = recorder({ fail });
    const model = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fetch, telemetry: { url: 'http://down.example', flushMs: 10 } });
    for (let i = 0; i < 5; i++) {
      assert.equal((await model.predict(ROWS)).length, 3);
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
    assert.ok(calls.length >= 1, fail);
    assert.equal(model.telemetry.report.predictions, 0, 'a failed report is not counted again');
    await model.release();
  }
  const throwing = () => { throw new Error('sync'); };
  const model = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fetch: throwing, telemetry: { url: 'http://down.example' } });
  await model.predict(ROWS);
  await tick();
  model.telemetry.flush();
  await model.release();
});

test('reports are limited per minute (counts wait for the next), and batches waiting to be counted are bounded', async () => {
  const { calls, fetch } = recorder();
  const model = await loadModel(await writeBundle(COLUMNS),
    { ort: fakeOrt(), fetch, telemetry: { url: 'http://t.example', flushMs: 60000, maxReportsPerMinute: 2, maxPending: 3 } });
  for (let i = 0; i < 5; i++) {
    await model.predict(ROWS);
    await tick();
    model.telemetry.flush();
  }
  await tick();
  assert.equal(calls.length, 2);
  assert.equal(model.telemetry.report.predictions, 9, 'what was not sent waits for the next report');

  for (let i = 0; i < 10; i++) await model.predict(ROWS); // no task in between: the queue fills
  assert.equal(model.telemetry.pending.length, 3);
  assert.equal(model.telemetry.dropped, 7);
  await model.release();
});

test('in a browser a report goes with navigator.sendBeacon, as text/plain', async () => {
  const beacons = [];
  const { calls, fetch } = recorder();
  const descriptor = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  Object.defineProperty(globalThis, 'navigator', { configurable: true, value: { sendBeacon: (url, blob) => { beacons.push({ url, blob }); return true; } } });
  try {
    const model = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fetch, fallbackUrl: 'http://api.example', telemetry: true });
    await model.predict(ROWS);
    await model.release();
  } finally {
    if (descriptor) Object.defineProperty(globalThis, 'navigator', descriptor); else delete globalThis.navigator;
  }
  assert.equal(calls.length, 0);
  assert.equal(beacons.length, 1);
  assert.equal(beacons[0].url, 'http://api.example/v2/models/churn/versions/3/telemetry');
  assert.equal(beacons[0].blob.type, 'text/plain');
  assert.equal(JSON.parse(await beacons[0].blob.text()).predictions, 3);
});

test('telemetry is off by default, and off without a URL to report to', async () => {
  const plain = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), fallbackUrl: 'http://api.example' });
  const nowhere = await loadModel(await writeBundle(COLUMNS), { ort: fakeOrt(), telemetry: true });
  assert.deepEqual([plain.telemetry, nowhere.telemetry], [null, null]);
});

test("labels are counted only by the manifest's classes, named as the server names them, so the server takes the report", async () => {
  const { calls, fetch } = recorder();
  const bools = startTelemetry({ ...COLUMNS, classes: [false, true] }, { flushMs: 60000 }, { fallbackUrl: 'http://t.example', fetch });
  const row = { age: 1, plan: 'basic', visits: 1 };
  bools.record([row, row, row], [true, false, 'maybe'].map((label) => ({ label, served_by: 'browser', latency_ms: 1, fallback_reason: null })));
  const clusters = startTelemetry({ ...COLUMNS, classes: undefined, feature_stats: {} }, { flushMs: 60000 }, { fallbackUrl: 'http://t.example', fetch });
  clusters.record([row], [{ label: 4, served_by: 'browser', latency_ms: 1, fallback_reason: null }]);
  await tick();
  bools.stop(); clusters.stop();
  await tick();
  assert.deepEqual(calls.map((c) => c.body.labels), [{ True: 1, False: 1 }, {}]);
  assert.deepEqual(calls[1].body.sketch, { features: {} });
});
