// Tests of the JS client itself, under Node's own test runner: tensors, row validation, hashes, fallback.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  buildInputs, describeColumns, InferenceError, IntegrityError, LoadError, loadModel, RowValidationError, ServerError, toInferRequest, toResults,
  upgradeManifest, verifyFile,
} from '../client/edgeport.js';
import { tfjsRuntime } from '../client/tfjs.js';

const matrix = {
  manifest_version: 2, layout: 'matrix',
  inputs: [{ name: 'input', dtype: 'float32', shape: [null, 3], columns: ['a', 'b', 'c'], nullable: false }],
  outputs: [{ name: 'label', dtype: 'int64', shape: [null], role: 'label' },
    { name: 'probabilities', dtype: 'float32', shape: [null, 2], role: 'probabilities' }],
};
const mixed = {
  manifest_version: 2, layout: 'columns',
  inputs: [
    { name: 'age', column: 'age', dtype: 'float64', shape: [null, 1], nullable: true },
    { name: 'plan', column: 'plan', dtype: 'string', shape: [null, 1], categories: ['basic', 'premium'], nullable: false },
    { name: 'visits', column: 'visits', dtype: 'int64', shape: [null, 1], nullable: false },
  ],
  outputs: [{ name: 'value', dtype: 'float64', shape: [null, 1], role: 'value' }],
};
// Row decoding itself (every layout, dtype and fault) is held by tests/corpus/decoding.json: test/decoding.test.mjs.

test('bad rows name the row, the column and the expected type', () => {
  const cases = [
    [mixed, [{ age: 1, plan: 'basic' }], /row 0: missing column "visits" \(expected int64\)/],
    [mixed, [{ age: 1, plan: 'basic', visits: 1, extra: 2 }], /row 0: unexpected column "extra"/],
    [mixed, [{ age: '31', plan: 'basic', visits: 1 }], /row 0, column "age": expected a number \(float64\), got string "31"/],
    [mixed, [{ age: 1, plan: 7, visits: 1 }], /column "plan": expected a string, got number 7/],
    [mixed, [{ age: 1, plan: 'basic', visits: 1.5 }], /column "visits": expected an integer/],
    [mixed, [[1, 2, 3]], /row 0: expected an object keyed by column \(age, plan, visits\), got an array/],
    [matrix, [[1, 2]], /row 0, input "input": expected 3 values \(shape \[3\]\), got 2/],
    [matrix, [{ a: 1, b: 2 }], /row 0: missing column "c"/],
    [matrix, [], /non-empty array/],
    [matrix, [[1, null, 3]], /row 0, column "b": .*does not accept missing values/],
    [matrix, [[1, Infinity, 3]], /an infinite value \(Infinity\) does not fit float32/],
    [matrix, [[1, 1e39, 3]], /1e\+39 does not fit float32/],
  ];
  for (const [manifest, rows, message] of cases) {
    assert.throws(() => buildInputs(manifest, rows), (err) => err instanceof RowValidationError && message.test(err.message));
  }
});

test('version 1 manifests are upgraded in one place: layout inferred, nullable false, server_model_file = model_file', () => {
  const v1 = (inputs) => ({ manifest_version: 1, model_file: 'model.onnx', inputs });
  const one = upgradeManifest(v1([{ name: 'input', dtype: 'float32', shape: [null, 3] }]));
  assert.deepEqual([one.manifest_version, one.layout, one.inputs[0].nullable, one.server_model_file], [2, 'matrix', false, 'model.onnx']);
  const several = upgradeManifest(v1([{ name: 'a', dtype: 'float32', shape: [null, 2] }, { name: 'b', dtype: 'float32', shape: [null, 2], nullable: true }]));
  assert.deepEqual([several.layout, several.inputs.map((i) => i.nullable)], ['tensors', [false, true]]);
  const columns = upgradeManifest({ ...v1([{ name: 'age', column: 'age', dtype: 'float64', shape: [null, 1] }]), server_model_file: 'server.onnx' });
  assert.deepEqual([columns.layout, columns.server_model_file], ['columns', 'server.onnx']);
  assert.equal(upgradeManifest(mixed), mixed, 'version 2 is read as it is');
  for (const version of [3, 0, '2', undefined]) {
    assert.throws(() => upgradeManifest({ ...mixed, manifest_version: version }),
      (err) => err instanceof LoadError && err.message.includes(`manifest_version ${JSON.stringify(version)}`));
  }
});

test('describeColumns reads the layout: matrix columns, columns by column, tensors by input name', () => {
  assert.deepEqual(describeColumns(matrix).map((c) => [c.name, c.dtype, c.nullable]), [['a', 'float32', false], ['b', 'float32', false], ['c', 'float32', false]]);
  assert.deepEqual(describeColumns(mixed).map((c) => [c.name, c.dtype, c.nullable, c.categories]),
    [['age', 'float64', true, undefined], ['plan', 'string', false, ['basic', 'premium']], ['visits', 'int64', false, undefined]]);
  const tensors = { layout: 'tensors', inputs: [{ name: 'left', dtype: 'float32', shape: [null, 2], nullable: false }, { name: 'right', dtype: 'int64', shape: [null, 1], nullable: false }] };
  assert.deepEqual(describeColumns(tensors).map((c) => c.name), ['left', 'right']);
});

test('results: labels from BigInt, probabilities per row, confidence is the max', () => {
  const raw = { label: { data: BigInt64Array.from([1n, 0n]), dims: [2] },
    probabilities: { data: Float32Array.from([0.25, 0.75, 0.9, 0.1]), dims: [2, 2] } };
  const results = toResults(matrix, raw, 2);
  assert.equal(results[0].label, 1);
  assert.deepEqual(results[0].probabilities, [0.25, 0.75]);
  assert.equal(results[1].confidence, Math.fround(0.9));
});

test('an OIP v2 request carries names, shapes, datatypes and null for missing numbers', () => {
  const request = toInferRequest(mixed, buildInputs(mixed, [{ age: null, plan: 'basic', visits: 2 }]));
  assert.deepEqual(request.inputs, [
    { name: 'age', shape: [1, 1], datatype: 'FP64', data: [null] },
    { name: 'plan', shape: [1, 1], datatype: 'BYTES', data: ['basic'] },
    { name: 'visits', shape: [1, 1], datatype: 'INT64', data: [2] },
  ]);
  assert.deepEqual(request.outputs, [{ name: 'value' }]);
});

async function writeBundle(modelBytes, { tamper = false, manifest: changes = {} } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgeport-client-'));
  const sha = createHash('sha256').update(modelBytes).digest('hex');
  await writeFile(path.join(dir, 'model.onnx'), tamper ? Buffer.concat([modelBytes, Buffer.from([0])]) : modelBytes);
  const manifest = { ...mixed, name: 'm', version: '1', format: 'onnx', task: 'regression', model_file: 'model.onnx',
    server_model_file: 'model.onnx', files: [{ path: 'model.onnx', bytes: modelBytes.length, sha256: sha }],
    fallback: { confidence_threshold: 0.5, on_low_confidence: 'server', timeout_ms: 2000, url: null }, ...changes };
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  return { dir, manifest };
}

test('verifyFile accepts the right bytes and refuses changed ones', async () => {
  const bytes = new TextEncoder().encode('model bytes');
  const { manifest } = await writeBundle(Buffer.from(bytes));
  await verifyFile(manifest, 'model.onnx', bytes);
  await assert.rejects(verifyFile(manifest, 'model.onnx', new TextEncoder().encode('model bytez')),
    (err) => err instanceof IntegrityError && /failed its integrity check/.test(err.message));
});

test('loadModel refuses a manifest of another version, or one that breaks the layout or task rules, naming the fault', async () => {
  const refusals = [
    [{ manifest_version: 3 }, /unsupported manifest_version 3/],
    [{ layout: undefined }, /missing "layout"/],
    [{ layout: 'rows' }, /layout "rows"/],
    [{ layout: 'matrix' }, /layout matrix with 3 inputs/],
    [{ inputs: mixed.inputs.map(({ nullable, ...input }) => input) }, /boolean nullable/],
    [{ task: 'clustering' }, /a clustering model's outputs have the roles label, distances, not "value"/],
    [{ task: 'ranking' }, /task "ranking"/],
  ];
  for (const [changes, message] of refusals) {
    const { dir } = await writeBundle(Buffer.from('x'), { manifest: changes });
    await assert.rejects(loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt() }),
      (err) => err instanceof LoadError && err.code === 'manifest' && message.test(err.message), JSON.stringify(changes));
  }
});

test('a version 1 bundle loads, and the model holds its upgraded manifest', async () => {
  const { dir } = await writeBundle(Buffer.from('x'), { manifest: { manifest_version: 1, layout: undefined, server_model_file: undefined,
    inputs: mixed.inputs.map(({ nullable, ...input }) => (nullable ? { ...input, nullable } : input)) } }); // undefined: left out
  const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt(), fallbackUrl: '' });
  assert.deepEqual([model.manifest.manifest_version, model.manifest.layout, model.manifest.server_model_file], [2, 'columns', 'model.onnx']);
  assert.deepEqual(model.manifest.inputs.map((i) => i.nullable), [true, false, false]);
  assert.deepEqual((await model.predict(ROW)).map((r) => r.value), [1.5]);
});

test('loadModel refuses a model file that fails its hash, before any session is created', async () => {
  const { dir } = await writeBundle(Buffer.from('not really onnx'), { tamper: true });
  let sessionCreated = false;
  const fakeOrt = { env: { wasm: {} }, InferenceSession: { create: async () => { sessionCreated = true; } } };
  await assert.rejects(loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt }),
    (err) => err instanceof IntegrityError && err.code === 'hash');
  assert.equal(sessionCreated, false);
});

function fakeServer(handler) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { requests.push({ url: req.url, body: JSON.parse(body || '{}') }); handler(req, res, requests.length); });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, requests, url: `http://127.0.0.1:${server.address().port}` })));
}

test('without WebAssembly the client falls back to the OIP v2 server, retrying a 5xx once', async () => {
  const { dir } = await writeBundle(Buffer.from('x'));
  const { server, requests, url } = await fakeServer((req, res, n) => {
    if (n === 1) { res.writeHead(503); res.end('{}'); return; }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ model_name: 'm', outputs: [{ name: 'value', shape: [1, 1], datatype: 'FP64', data: [42.5] }] }));
  });
  try {
    const model = await loadModel(path.join(dir, 'manifest.json'), { fallbackUrl: url, forceNoWasm: true, retryDelayMs: 10 });
    const [result] = await model.predict([{ age: 40, plan: 'basic', visits: 1 }]);
    assert.equal(result.value, 42.5);
    assert.equal(result.served_by, 'server');
    assert.equal(result.fallback_reason, 'no-wasm');
    assert.equal(requests.length, 2);
    assert.equal(requests[1].url, '/v2/models/m/versions/1/infer');
    assert.equal(requests[1].body.inputs[1].datatype, 'BYTES');
  } finally { server.close(); }
});

test('a server that keeps failing gives a typed ServerError, and bad rows never reach it', async () => {
  const { dir } = await writeBundle(Buffer.from('x'));
  const { server, requests, url } = await fakeServer((req, res) => { res.writeHead(500); res.end('{}'); });
  try {
    const model = await loadModel(path.join(dir, 'manifest.json'), { fallbackUrl: url, forceNoWasm: true, retryDelayMs: 10 });
    await assert.rejects(model.predict([{ age: 1, plan: 'basic', visits: 1 }]), (err) => err instanceof ServerError);
    assert.equal(requests.length, 2);
    await assert.rejects(model.predict([{ age: 1 }]), RowValidationError);
    assert.equal(requests.length, 2);
  } finally { server.close(); }
});

function fakeOrt({ runMs = 0, fail = false, value = 1.5, until = null } = {}) {
  class Tensor { constructor(type, data, dims) { Object.assign(this, { type, data, dims }); } }
  return {
    env: { wasm: {} },
    Tensor,
    InferenceSession: {
      create: async () => {
        await until;
        return {
          run: async (feeds) => {
            await new Promise((resolve) => setTimeout(resolve, runMs));
            if (fail) throw new Error('kernel exploded');
            const n = Object.values(feeds)[0].dims[0];
            return { value: { data: Float64Array.from({ length: n }, () => value), dims: [n, 1] } };
          },
        };
      },
    },
  };
}

async function okServer() {
  return fakeServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ outputs: [{ name: 'value', shape: [1, 1], datatype: 'FP64', data: [7] }] }));
  });
}

const ROW = [{ age: 40, plan: 'basic', visits: 1 }];

test('a local answer within the timeout is served by the browser', async () => {
  const { dir } = await writeBundle(Buffer.from('x'));
  const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt(), fallbackUrl: '' });
  const [result] = await model.predict(ROW);
  assert.deepEqual([result.value, result.served_by, result.fallback_reason], [1.5, 'browser', null]);
});

test('inference past its timeout falls back to the server, with the reason', async () => {
  const { dir } = await writeBundle(Buffer.from('x'));
  const { server, url } = await okServer();
  try {
    const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ runMs: 300 }), fallbackUrl: url, timeoutMs: 50 });
    const [result] = await model.predict(ROW);
    assert.deepEqual([result.value, result.served_by, result.fallback_reason], [7, 'server', 'timeout']);
  } finally { server.close(); }
});

test('inference that throws falls back; without a server it is a typed InferenceError', async () => {
  const { dir } = await writeBundle(Buffer.from('x'));
  const { server, url } = await okServer();
  try {
    const withServer = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ fail: true }), fallbackUrl: url });
    assert.equal((await withServer.predict(ROW))[0].fallback_reason, 'inference-error');
  } finally { server.close(); }
  const alone = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ fail: true }), fallbackUrl: '' });
  await assert.rejects(alone.predict(ROW), (err) => err.name === 'InferenceError' && /kernel exploded/.test(err.message));
});

async function writeClassifierBundle(policy) {
  const dir = await mkdtemp(path.join(tmpdir(), 'edgeport-client-'));
  const bytes = Buffer.from('x');
  await writeFile(path.join(dir, 'model.onnx'), bytes);
  const manifest = { manifest_version: 1, name: 'c', version: '2', format: 'onnx', task: 'classification', model_file: 'model.onnx',
    files: [{ path: 'model.onnx', bytes: 1, sha256: createHash('sha256').update(bytes).digest('hex') }],
    inputs: [{ name: 'input', dtype: 'float32', shape: [null, 1], columns: ['x'], nullable: false }],
    outputs: [{ name: 'label', dtype: 'string', shape: [null], role: 'label' }, { name: 'probabilities', dtype: 'float32', shape: [null, 2], role: 'probabilities' }],
    classes: ['no', 'yes'], fallback: { confidence_threshold: 0.7, on_low_confidence: policy, timeout_ms: 2000, url: null } };
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
  return path.join(dir, 'manifest.json');
}

function unsureOrt() {
  class Tensor { constructor(type, data, dims) { Object.assign(this, { type, data, dims }); } }
  return { env: { wasm: {} }, Tensor, InferenceSession: { create: async () => ({ run: async () => ({
    label: { data: ['yes'], dims: [1] }, probabilities: { data: Float32Array.from([0.45, 0.55]), dims: [1, 2] } }) }) } };
}

test('low confidence with the abstain policy answers locally, marked low_confidence', async () => {
  const model = await loadModel(await writeClassifierBundle('abstain'), { ort: unsureOrt(), fallbackUrl: 'http://127.0.0.1:9' });
  const [result] = await model.predict([[1]]);
  assert.deepEqual([result.label, result.served_by, result.low_confidence, result.fallback_reason], ['yes', 'browser', true, null]);
});

test('low confidence with the server policy asks the server and keeps the browser confidence', async () => {
  const { server, url, requests } = await fakeServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ outputs: [{ name: 'label', shape: [1], datatype: 'BYTES', data: ['no'] },
      { name: 'probabilities', shape: [1, 2], datatype: 'FP32', data: [0.8, 0.2] }] }));
  });
  try {
    const model = await loadModel(await writeClassifierBundle('server'), { ort: unsureOrt(), fallbackUrl: url });
    const [result] = await model.predict([[1]]);
    assert.deepEqual([result.label, result.served_by, result.fallback_reason, result.low_confidence], ['no', 'server', 'low-confidence', false]);
    assert.ok(Math.abs(result.browser_confidence - 0.55) < 1e-6);
    assert.equal(requests[0].url, '/v2/models/c/versions/2/infer');
    assert.deepEqual(requests[0].body.parameters, { fallback_reason: 'low-confidence' });
  } finally { server.close(); }
});

test('TF.js: int32 inputs stay int32, and a dynamic-op refusal switches to executeAsync instead of reaching the user', async () => {
  const topology = Buffer.from(JSON.stringify({ modelTopology: { node: [{ op: 'MatMul' }] }, weightsManifest: [] }));
  const { dir } = await writeBundle(topology, { manifest: {
    format: 'tfjs-graph', layout: 'matrix', inputs: [{ name: 'tokens', dtype: 'int32', shape: [null, 3], nullable: false }],
  } });
  const calls = { execute: 0, executeAsync: 0, dtypes: [] };
  const fakeTf = {
    ready: async () => {}, getBackend: () => 'cpu', dispose: () => {},
    zeros: (shape, dtype) => { calls.dtypes.push(`zeros:${dtype}`); return { shape, dtype }; },
    tensor: (data, dims, dtype) => { calls.dtypes.push(`tensor:${dtype}`); return { data, dims, dtype }; },
    loadGraphModel: async () => ({
      execute: () => { calls.execute += 1; throw new Error("This execution contains the node 'lstm/while', which has the dynamic op 'While'. Please use model.executeAsync() instead."); },
      executeAsync: async (feeds) => {
        calls.executeAsync += 1;
        const n = feeds.tokens.shape?.[0] ?? feeds.tokens.dims[0];
        return { shape: [n, 1], data: async () => Float32Array.from({ length: n }, () => 0.25) };
      },
      dispose: () => {},
    }),
  };
  await assert.rejects(loadModel(path.join(dir, 'manifest.json'), { tf: fakeTf }),
    (err) => err instanceof LoadError && err.code === 'format' && err.message.includes("from 'edgeport-client/tfjs'"),
    'the TF.js runtime is an entry point of its own: without it a tfjs-graph bundle says where to get it');
  const model = await loadModel(path.join(dir, 'manifest.json'), { tf: fakeTf, runtimes: [tfjsRuntime] });
  const results = await model.predict([[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(results.map((r) => [r.value, r.served_by]), [[0.25, 'browser'], [0.25, 'browser']]);
  assert.equal(calls.execute, 1, 'execute is tried once, at the warm-up; then executeAsync');
  assert.equal(calls.executeAsync, 2);
  assert.deepEqual(calls.dtypes, ['zeros:int32', 'tensor:int32']);
  await assert.rejects(model.predict([[1, 2, 2 ** 31]]), (err) => err instanceof RowValidationError && /does not fit int32/.test(err.message));
});

test('error names are set by hand, so they survive a minifier renaming the classes', async () => {
  const client = await import('../client/edgeport.js');
  for (const name of ['EdgeportError', 'RowValidationError', 'IntegrityError', 'LoadError', 'InferenceError', 'ServerError']) {
    const type = client[name];
    assert.equal(Object.getOwnPropertyDescriptor(type.prototype, 'name')?.value, name);
    const renamed = { [`b${name.length}`]: class extends type {} }[`b${name.length}`]; // what a minifier leaves
    assert.equal(new type('m').name, name);
    assert.equal(new renamed('m').name, name, 'a subclass under another identifier keeps the documented name');
  }
});

test('nothing is exported undeclared: every export of each entry point is in its .d.ts, and the reverse', async () => {
  const { readFile } = await import('node:fs/promises');
  const pkg = JSON.parse(await readFile(new URL('../client/package.json', import.meta.url), 'utf8'));
  const entries = Object.entries(pkg.exports).filter(([, target]) => target.types);
  assert.deepEqual(entries.map(([name]) => name).sort(), ['.', './tfjs']);
  for (const [, target] of entries) {
    const module = await import(new URL(`../client/${target.default}`, import.meta.url).href);
    const declarations = await readFile(new URL(`../client/${target.types}`, import.meta.url), 'utf8');
    const declared = new Set([...declarations.matchAll(/^export declare (?:function|class|const) (\w+)/gm)].map((m) => m[1]));
    assert.deepEqual([...Object.keys(module)].sort(), [...declared].sort(), target.default);
  }
});

/** A gate a fake session waits on while it is created: `open()` lets it finish. */
function gate() {
  let open;
  const until = new Promise((resolve) => { open = resolve; });
  return { until, open };
}

test('a parsed manifest loads with options.files naming each file URL (as edgeport pack does); each file is still verified', async () => {
  const bytes = Buffer.from('model');
  const { dir, manifest } = await writeBundle(bytes);
  const ort = fakeOrt();
  const elsewhere = path.join(dir, 'hashed-name-1234.onnx');
  await writeFile(elsewhere, bytes);
  const model = await loadModel(manifest, { ort, files: { 'model.onnx': elsewhere } });
  const [result] = await model.predict([{ age: 40, plan: 'basic', visits: 1 }]);
  assert.deepEqual([result.value, result.served_by], [1.5, 'browser']);
  await writeFile(elsewhere, Buffer.from('modem'));
  await assert.rejects(loadModel(manifest, { ort, files: { 'model.onnx': elsewhere } }), (err) => err instanceof IntegrityError && err.code === 'hash');
  await assert.rejects(loadModel(manifest, { ort }), (err) => err instanceof LoadError && err.code === 'fetch' && /model\.onnx.*options\.files/.test(err.message));
});

test('hedging: while the runtime loads, the server answers (fallback_reason loading); once it is ready, the browser does', async () => {
  const { dir } = await writeBundle(Buffer.from('model'));
  const { server, requests, url } = await fakeServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ model_name: 'm', outputs: [{ name: 'value', shape: [1, 1], datatype: 'FP64', data: [42.5] }] }));
  });
  try {
    const { until, open } = gate();
    const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ value: 7, until }), fallbackUrl: url, hedge: true });
    const row = { age: 40, plan: 'basic', visits: 1 };
    const [first] = await model.predict([row]);
    assert.deepEqual([first.value, first.served_by, first.fallback_reason], [42.5, 'server', 'loading']);
    assert.equal(requests[0].body.parameters.fallback_reason, 'loading');
    open();
    await model.loading;
    const [second] = await model.predict([row]);
    assert.deepEqual([second.value, second.served_by, second.fallback_reason], [7, 'browser', null]);
    assert.equal(requests.length, 1, 'a ready runtime asks no server');
  } finally {
    server.close();
  }
});

test('hedging: a server that fails leaves the answer to the browser, and without hedge loadModel waits for the runtime', async () => {
  const { dir } = await writeBundle(Buffer.from('model'));
  const { server, url } = await fakeServer((req, res) => { res.writeHead(400); res.end('{"error": "no"}'); });
  try {
    const { until, open } = gate();
    const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ value: 7, until }), fallbackUrl: url, hedge: true });
    const answer = model.predict([{ age: 40, plan: 'basic', visits: 1 }]);
    setTimeout(open, 50);
    const [result] = await answer;
    assert.deepEqual([result.value, result.served_by], [7, 'browser']);
    const slow = gate();
    let loaded = false;
    const pending = loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ until: slow.until }), fallbackUrl: url }).then((m) => { loaded = true; return m; });
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(loaded, false, 'without hedge, loadModel resolves only when the runtime is ready');
    slow.open();
    const [late] = await (await pending).predict([{ age: 40, plan: 'basic', visits: 1 }]);
    assert.equal(late.served_by, 'browser');
  } finally {
    server.close();
  }
});

test("the server's answer is checked against the manifest: a wrong one is a ServerError (server-response), never a prediction", async () => {
  const { dir } = await writeBundle(Buffer.from('x'), { manifest: {
    ...matrix, task: 'classification', classes: ['no', 'yes'],
    outputs: [{ name: 'label', dtype: 'string', shape: [null], role: 'label' }, { name: 'probabilities', dtype: 'float32', shape: [null, 2], role: 'probabilities' }],
  } });
  const answers = [
    [{ label: ['yes'], probabilities: [[0.2, 0.8]] }, null], // one row of three: wrong count
    [{ label: ['yes', 'no', 'maybe'], probabilities: [[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]] }, /not one of the model's classes/],
    [{ label: ['yes', 'no', 'no'], probabilities: [[0.2, null], [0.9, 0.1], [0.5, 0.5]] }, /not numbers/],
    [{ label: ['yes', 'no', 'no'], probabilities: 'oops' }, /no data array/],
    [{ label: ['yes', 'no', 'no'] }, /no "probabilities" output/],
  ];
  for (const [outputs, message] of answers) {
    const { server, url } = await fakeServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ outputs: Object.entries(outputs).map(([name, data]) => ({ name, shape: [1], datatype: 'BYTES', data })) }));
    });
    try {
      const model = await loadModel(path.join(dir, 'manifest.json'), { fallbackUrl: url, forceNoWasm: true, retryDelayMs: 1 });
      await assert.rejects(model.predict([[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        (err) => err instanceof ServerError && err.code === 'server-response' && (message ?? /3 values|1 value|values for 3 rows/).test(err.message));
    } finally {
      server.close();
    }
  }
});

test('release() twice is fine; predict() after it is a typed InferenceError (released), never a hang', async () => {
  const { dir } = await writeBundle(Buffer.from('model'));
  const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt() });
  await model.release();
  await model.release();
  await assert.rejects(model.predict([{ age: 40, plan: 'basic', visits: 1 }]), (err) => err instanceof InferenceError && err.code === 'released');
});

test('a model download past loadTimeoutMs is a LoadError (fetch) and is aborted; Infinity means no timeout', async () => {
  const { dir, manifest } = await writeBundle(Buffer.from('model'));
  let aborted = false;
  const slowFetch = (url, init) => new Promise((resolve, reject) => {
    init?.signal?.addEventListener('abort', () => { aborted = true; reject(new Error('aborted')); });
  });
  await assert.rejects(loadModel(manifest, { ort: fakeOrt(), files: { 'model.onnx': 'https://cdn.example/model.onnx' }, fetch: slowFetch, loadTimeoutMs: 30 }),
    (err) => err instanceof LoadError && err.code === 'fetch' && /longer than 30 ms/.test(err.message));
  assert.equal(aborted, true, 'the download is aborted');
  const model = await loadModel(path.join(dir, 'manifest.json'), { ort: fakeOrt({ runMs: 20 }), loadTimeoutMs: Infinity, timeoutMs: Infinity });
  const [result] = await model.predict([{ age: 40, plan: 'basic', visits: 1 }]);
  assert.equal(result.served_by, 'browser');
});

test('hedging: when both fail, the server error surfaces (as without hedging), with the browser error as its cause', async () => {
  const { dir } = await writeBundle(Buffer.from('model'));
  const { server, url } = await fakeServer((req, res) => { res.writeHead(400); res.end('{"error": "no such model"}'); });
  try {
    const { until, open } = gate();
    const broken = fakeOrt({ until });
    broken.InferenceSession.create = async () => { await until; throw new Error('bad model'); };
    const model = await loadModel(path.join(dir, 'manifest.json'), { ort: broken, fallbackUrl: url, hedge: true });
    const answer = model.predict([{ age: 40, plan: 'basic', visits: 1 }]);
    setTimeout(open, 30);
    await assert.rejects(answer, (err) => err instanceof ServerError && err.code === 'server-status' && err.cause instanceof LoadError);
  } finally {
    server.close();
  }
});

test('a manifest object whose files or outputs are malformed is a LoadError (manifest), not a TypeError', async () => {
  const { manifest } = await writeBundle(Buffer.from('model'));
  for (const change of [{ files: 'model.onnx' }, { files: [{ path: 'model.onnx' }] }, { outputs: [{ role: 'value', shape: [null, 1] }] }]) {
    await assert.rejects(loadModel({ ...manifest, ...change }, { ort: fakeOrt() }), (err) => err instanceof LoadError && err.code === 'manifest');
  }
});

test('resolveModel reads NAME/_aliases.json fresh, follows NAME@ALIAS, pins a version, and names what is missing', async () => {
  let production = '1';
  const asked = [];
  const fetchFn = async (url, init) => {
    asked.push([url, init?.cache]);
    if (!url.endsWith('/iris/_aliases.json')) return new Response('{}', { status: 404 });
    return Response.json({ name: 'iris', aliases: { production, canary: '3' }, versions: ['1', '2', '3'] });
  };
  const { resolveModel } = await import('../client/edgeport.js');
  assert.equal(await resolveModel('https://api.example/bundles', 'iris', { fetch: fetchFn }), 'https://api.example/bundles/iris/1/manifest.json');
  production = '2';
  assert.equal(await resolveModel('https://api.example/bundles/', 'iris', { fetch: fetchFn }), 'https://api.example/bundles/iris/2/manifest.json');
  assert.equal(await resolveModel('https://api.example/bundles/', 'iris@canary', { fetch: fetchFn }), 'https://api.example/bundles/iris/3/manifest.json');
  assert.deepEqual(asked.map(([, cache]) => cache), ['no-cache', 'no-cache', 'no-cache'], 'the alias document is revalidated on every load');
  assert.equal(await resolveModel('https://cdn.example/registry', 'iris', { version: '1', fetch: fetchFn }), 'https://cdn.example/registry/iris/1/manifest.json');
  await assert.rejects(resolveModel('https://api.example/bundles/', 'iris@beta', { fetch: fetchFn }),
    (err) => err instanceof LoadError && /no alias "beta" \(it has production, canary\)/.test(err.message));
  await assert.rejects(resolveModel('https://api.example/bundles/', 'nope', { fetch: fetchFn }),
    (err) => err instanceof LoadError && /aliases of nope.*404/.test(err.message));
});

test("the fallback target: the server's default version and its own output names (MLServer's predict_proba), or a clear ServerError without the map", async () => {
  const { dir } = await writeBundle(Buffer.from('x'), { manifest: {
    ...matrix, task: 'classification', classes: ['no', 'yes'],
    outputs: [{ name: 'label', dtype: 'string', shape: [null], role: 'label' }, { name: 'probabilities', dtype: 'float32', shape: [null, 2], role: 'probabilities' }],
  } });
  const { server, requests, url } = await fakeServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ model_name: 'm', model_version: 'v7', outputs: [
      { name: 'predict', shape: [1], datatype: 'BYTES', data: ['yes'] },
      { name: 'predict_proba', shape: [1, 2], datatype: 'FP64', data: [0.3, 0.7] }] }));
  });
  try {
    const mapped = await loadModel(path.join(dir, 'manifest.json'), { fallbackUrl: url, forceNoWasm: true,
      fallbackVersion: 'default', fallbackOutputs: { label: 'predict', probabilities: 'predict_proba' } });
    const [result] = await mapped.predict([[1, 2, 3]]);
    assert.deepEqual([result.label, result.probabilities, result.served_by, result.model_version], ['yes', [0.3, 0.7], 'server', 'v7']);
    assert.equal(requests[0].url, '/v2/models/m/infer', "the server's own default version");
    assert.deepEqual(requests[0].body.outputs, [{ name: 'predict' }, { name: 'predict_proba' }]);
    const unmapped = await loadModel(path.join(dir, 'manifest.json'), { fallbackUrl: url, forceNoWasm: true, retryDelayMs: 1 });
    await assert.rejects(unmapped.predict([[1, 2, 3]]), (err) => err instanceof ServerError && err.code === 'server-response' &&
      /no "label" output .*"predict", "predict_proba".*fallbackOutputs/.test(err.message));
    assert.equal(requests.at(-1).url, '/v2/models/m/versions/1/infer', 'pinned by default');
  } finally {
    server.close();
  }
});
