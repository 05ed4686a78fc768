// The decoding contract, held by tests/corpus/decoding.json: the JS client's buildInputs must give every
// case the verdict, code, message and tensors the corpus says. pytest holds exporter/decoding.py to the
// same file, so the browser and the server decode every row alike.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { buildInputs, RowValidationError, toInferRequest } from '../client/edgeport.js';

const CORPUS = new URL('../../tests/corpus/decoding.json', import.meta.url);
const CODES = ['rows', 'row-type', 'extra-column', 'missing-column', 'row-length', 'type', 'missing-value', 'range'];
const TYPED = { float32: Float32Array, float64: Float64Array, int32: Int32Array };

/** The corpus with its {"$number": "NaN" | "Infinity" | "-Infinity"} markers replaced by the values. */
function readCorpus() {
  return JSON.parse(readFileSync(CORPUS, 'utf8'), (key, value) => {
    if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length === 1 && '$number' in value) {
      assert.ok(['NaN', 'Infinity', '-Infinity'].includes(value.$number), `unknown marker ${JSON.stringify(value)}`);
      return Number(value.$number);
    }
    return value;
  });
}

const { cases } = readCorpus();
const manifestOf = (c) => ({ manifest_version: 2, name: c.id, version: '1', layout: c.layout, inputs: c.inputs, outputs: [] });

test('the corpus is well formed and covers every code in every layout where it applies', () => {
  const ids = new Set();
  for (const c of cases) {
    assert.match(c.id, /^[a-z0-9]+(-[a-z0-9]+)*$/, `${c.id}: ids are kebab-case`);
    assert.ok(!ids.has(c.id), `${c.id} appears twice`);
    ids.add(c.id);
    assert.ok(['matrix', 'columns', 'tensors'].includes(c.layout), `${c.id}: layout ${c.layout}`);
    for (const input of c.inputs) assert.equal(typeof input.nullable, 'boolean', `${c.id}: input ${input.name} needs nullable`);
    if (c.verdict === 'accept') {
      assert.deepEqual(Object.keys(c.tensors).sort(), c.inputs.map((i) => i.name).sort(), `${c.id}: a tensor per input`);
    } else {
      assert.equal(c.verdict, 'refuse', c.id);
      assert.ok(CODES.includes(c.code), `${c.id}: code ${c.code}`);
      assert.equal(c.code === 'rows', c.row === undefined, `${c.id}: every refusal but "rows" names its row`);
    }
  }
  const applies = {
    matrix: CODES,
    columns: CODES.filter((code) => code !== 'row-length'),
    tensors: CODES,
  };
  for (const [layout, codes] of Object.entries(applies)) {
    const seen = new Set(cases.filter((c) => c.layout === layout).map((c) => c.code ?? 'accept'));
    for (const code of ['accept', ...codes]) assert.ok(seen.has(code), `no ${layout} case for ${code}`);
  }
  const dtypes = new Set(cases.flatMap((c) => c.inputs.map((i) => `${c.layout}/${i.dtype}`)));
  for (const layout of ['matrix', 'columns', 'tensors']) {
    for (const dtype of ['float32', 'float64', 'int32', 'int64', 'string']) assert.ok(dtypes.has(`${layout}/${dtype}`), `no ${layout} case with ${dtype}`);
  }
});

/** Values equal as the tensor's dtype holds them; NaN equals NaN. */
function assertData(actual, expected, dtype, where) {
  assert.equal(actual.length, expected.length, `${where}: length`);
  if (dtype === 'string') {
    assert.ok(Array.isArray(actual), `${where}: strings are an array`);
    assert.deepEqual(actual, expected, where);
  } else if (dtype === 'int64') {
    assert.ok(actual instanceof BigInt64Array, `${where}: int64 is a BigInt64Array`);
    assert.deepEqual(Array.from(actual), expected.map((v) => BigInt(v)), where);
  } else {
    assert.ok(actual instanceof TYPED[dtype], `${where}: ${dtype} is a ${TYPED[dtype].name}`);
    const want = TYPED[dtype].from(expected);
    actual.forEach((v, i) => assert.ok(Object.is(v, want[i]) || (v === 0 && want[i] === 0), `${where}[${i}]: ${v}, expected ${want[i]}`));
  }
}

for (const c of cases) {
  test(`corpus: ${c.id}`, () => {
    const manifest = manifestOf(c);
    if (c.verdict === 'accept') {
      const feeds = buildInputs(manifest, c.rows);
      assert.deepEqual(Object.keys(feeds).sort(), Object.keys(c.tensors).sort());
      for (const [name, want] of Object.entries(c.tensors)) {
        assert.equal(feeds[name].type, want.dtype, `${name}: type`);
        assert.deepEqual(feeds[name].dims, want.shape, `${name}: dims`);
        assertData(feeds[name].data, want.data, want.dtype, name);
      }
      return;
    }
    assert.throws(() => buildInputs(manifest, c.rows), (err) => {
      assert.ok(err instanceof RowValidationError, `${err.name}: ${err.message}`);
      assert.equal(err.code, c.code, err.message);
      if (c.row !== undefined) {
        assert.match(err.message, new RegExp(`\\brow ${c.row}\\b`), 'the message names the row');
        assert.equal(err.row, c.row);
      }
      if (c.field !== undefined) {
        assert.ok(err.message.includes(c.field), `the message names "${c.field}": ${err.message}`);
        assert.equal(err.field, c.field);
      }
      return true;
    });
  });
}

// ---------------------------------------------------------------- what the corpus can't say in JSON

const churn = {
  manifest_version: 2, layout: 'columns', outputs: [{ name: 'value', dtype: 'float64', shape: [null, 1], role: 'value' }],
  inputs: [
    { name: 'age', column: 'age', dtype: 'float64', shape: [null, 1], nullable: true },
    { name: 'plan', column: 'plan', dtype: 'string', shape: [null, 1], nullable: true },
    { name: 'visits', column: 'visits', dtype: 'int64', shape: [null, 1], nullable: false },
  ],
};

test('undefined is a missing value, like null', () => {
  const feeds = buildInputs(churn, [{ age: undefined, plan: undefined, visits: 1 }]);
  assert.ok(Number.isNaN(feeds.age.data[0]));
  assert.deepEqual(feeds.plan.data, ['']);
  assert.throws(() => buildInputs(churn, [{ age: 1, plan: 'a', visits: undefined }]), (err) => err.code === 'missing-value');
});

test('typed arrays are flat rows and flat tensor values; a BigInt is not a number', () => {
  const image = { manifest_version: 2, layout: 'matrix', inputs: [{ name: 'pixels', dtype: 'float32', shape: [null, 2, 2], nullable: false }] };
  assert.deepEqual(Array.from(buildInputs(image, [Float32Array.from([1, 2, 3, 4])]).pixels.data), [1, 2, 3, 4]);
  assert.throws(() => buildInputs(image, [new Float64Array(3)]), (err) => err.code === 'row-length');
  const codes = { manifest_version: 2, layout: 'tensors', inputs: [{ name: 'ids', dtype: 'int64', shape: [null, 2], nullable: false }] };
  assert.throws(() => buildInputs(codes, [{ ids: [1n, 2n] }]), (err) => err.code === 'type' && /bigint 1n/.test(err.message));
});

test('a Map is not a row object', () => {
  assert.throws(() => buildInputs(churn, [new Map([['age', 1]])]), (err) => err.code === 'row-type');
});

test('a manifest without a layout is refused before any row is read', () => {
  const { layout, ...v1ish } = churn;
  assert.throws(() => buildInputs(v1ish, [{ age: 1, plan: 'a', visits: 1 }]), (err) => err.name === 'LoadError' && /upgradeManifest/.test(err.message));
});

test('the server gets the decoded values: a missing float as null, a missing nullable string as ""', () => {
  const request = toInferRequest(churn, buildInputs(churn, [{ age: null, plan: null, visits: 2 ** 53 }, { age: NaN, plan: 'Zürich', visits: -3 }]));
  assert.deepEqual(request.inputs, [
    { name: 'age', shape: [2, 1], datatype: 'FP64', data: [null, null] },
    { name: 'plan', shape: [2, 1], datatype: 'BYTES', data: ['', 'Zürich'] },
    { name: 'visits', shape: [2, 1], datatype: 'INT64', data: [2 ** 53, -3] },
  ]);
  assert.deepEqual(JSON.parse(JSON.stringify(request)).inputs[0].data, [null, null], 'JSON carries the nulls');
});
