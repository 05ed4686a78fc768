// Rows into tensors, and tensors into an OIP v2 request. The decoding contract below is shared with
// exporter/decoding.py and held by tests/corpus/decoding.json: both languages give the same verdicts,
// the same row and field, and the same tensors on every case.
import { LAYOUTS } from './bundle.js';
import { LoadError, RowValidationError } from './errors.js';

// The contract:
//   float32/float64/       a number (not a boolean, string or array). null, undefined or NaN is a missing
//   int32/int64            value: NaN where the input is nullable and a float, else `missing-value`.
//                          ±Infinity, a float32 beyond 3.4e38, an int32 outside [-2^31, 2^31), an int64
//                          outside [-2^63, 2^63): `range`; a non-integer for an integer input: `type`.
//                          (int32 is TF.js's integer type: Keras integer inputs are int32 everywhere.)
//   string                 any string as is; null/undefined is "" where nullable, else `missing-value`;
//                          anything else `type`. Unknown categories pass: the model decides.
// Per row, by manifest.layout: columns (an object keyed by exactly the columns), matrix (an array, flat
// or nested exactly like shape[1:]; or an object keyed by the input's columns), tensors (an object keyed
// by exactly the input names, each value flat or nested like its shape[1:]). The first fault in row
// order wins; within a row, inputs in manifest order and values in row-major order.

const TYPED = { float32: Float32Array, float64: Float64Array, int32: Int32Array };
const OIP_DATATYPE = { float32: 'FP32', float64: 'FP64', int32: 'INT32', int64: 'INT64', string: 'BYTES' };
const FLOAT32_MAX = 3.4028234663852886e38;
const INT_END = { int32: 2 ** 31, int64: 2 ** 63 }; // exact as doubles; intN holds [-end, end)

/** Column names the model takes, in order, with their dtypes (the demo builds its form from these). */
export function describeColumns(manifest) {
  const { inputs, layout } = manifest;
  if (layout === 'matrix') {
    const [input] = inputs;
    return (input.columns ?? []).map((name) => ({ name, dtype: input.dtype, nullable: input.nullable }));
  }
  return inputs.map((input) => ({
    name: layout === 'columns' ? input.column : input.name, dtype: input.dtype, nullable: input.nullable, categories: input.categories,
    ...(input.kind ? { kind: input.kind } : {}), // 'text': free text the model tokenizes, not a category
  }));
}

/**
 * Build input tensors from rows, as `{name: {type, data, dims}}` (no runtime needed), or throw a
 * RowValidationError naming the first row and column at fault. `manifest` is a version-2 manifest
 * (as loadModel holds it; see upgradeManifest).
 */
export function buildInputs(manifest, rows) {
  if (!Array.isArray(rows) || rows.length === 0) {
    const got = Array.isArray(rows) ? 'an empty array' : describe(rows);
    throw new RowValidationError(`predict() takes a non-empty array of rows, got ${got}`, { code: 'rows' });
  }
  const { inputs, layout } = manifest;
  if (layout === 'matrix') return { [inputs[0].name]: buildMatrix(inputs[0], rows) };
  if (layout === 'columns') return buildColumns(inputs, rows);
  if (layout === 'tensors') return buildTensors(inputs, rows);
  throw new LoadError(`manifest layout ${JSON.stringify(layout)} is not one of ${LAYOUTS.join(', ')}; ` +
    'read version-1 manifests with upgradeManifest', { code: 'manifest' });
}

function buildColumns(inputs, rows) {
  const keys = inputs.map((input) => input.column ?? input.name);
  const values = inputs.map(() => new Array(rows.length));
  rows.forEach((row, r) => {
    checkKeys(row, r, keys, inputs, 'column');
    inputs.forEach((input, k) => {
      values[k][r] = checkValue(row[keys[k]], input, r, keys[k]);
    });
  });
  return Object.fromEntries(inputs.map((input, k) => [input.name, makeTensor(input.dtype, values[k], [rows.length, 1])]));
}

function buildMatrix(input, rows) {
  const columns = input.columns ?? null;
  const dims = innerDims(input, rows);
  const byColumn = columns && dims.length === 1;
  const values = [];
  rows.forEach((row, r) => {
    if (isArrayLike(row)) {
      const flat = flatten(row, dims, input.name, r);
      for (let i = 0; i < flat.length; i++) {
        values.push(byColumn ? checkValue(flat[i], input, r, columns[i]) : checkValue(flat[i], input, r, input.name, i));
      }
    } else if (columns && isRecord(row)) {
      checkKeys(row, r, columns, columns.map(() => input), 'column');
      for (const c of columns) values.push(checkValue(row[c], input, r, c));
    } else {
      const width = dims.reduce((a, b) => a * b, 1);
      throw new RowValidationError(`row ${r}, input "${input.name}": expected an array of ${width} values` +
        `${columns ? ' or an object keyed by column' : ''}, got ${describe(row)}`, { code: 'row-type', row: r, field: input.name });
    }
  });
  return makeTensor(input.dtype, values, [rows.length, ...dims]);
}

function buildTensors(inputs, rows) {
  const names = inputs.map((input) => input.name);
  const dims = inputs.map((input) => innerDims(input, rows.map((row) => (isRecord(row) ? row[input.name] : undefined))));
  const values = inputs.map(() => []);
  rows.forEach((row, r) => {
    checkKeys(row, r, names, inputs, 'input');
    inputs.forEach((input, k) => {
      const flat = flatten(row[input.name], dims[k], input.name, r);
      for (let i = 0; i < flat.length; i++) {
        values[k].push(checkValue(flat[i], input, r, input.name, i));
      }
    });
  });
  return Object.fromEntries(inputs.map((input, k) => [input.name, makeTensor(input.dtype, values[k], [rows.length, ...dims[k]])]));
}

/** A plain object (not null, an array, a typed array, a Map...). */
function isRecord(value) {
  return Object.prototype.toString.call(value) === '[object Object]';
}

function isArrayLike(value) {
  return Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView));
}

/** Extra keys first, then missing ones; own keys only (a column named "constructor" is not found on the prototype). */
function checkKeys(row, r, keys, inputs, what) {
  if (!isRecord(row)) {
    throw new RowValidationError(`row ${r}: expected an object keyed by ${what} (${keys.join(', ')}), got ${describe(row)}`,
      { code: 'row-type', row: r });
  }
  const known = new Set(keys);
  for (const key of Object.keys(row)) {
    if (!known.has(key)) {
      throw new RowValidationError(`row ${r}: unexpected ${what} "${key}"; the model takes ${keys.join(', ')}`,
        { code: 'extra-column', row: r, field: key });
    }
  }
  keys.forEach((key, k) => {
    if (!Object.hasOwn(row, key)) {
      throw new RowValidationError(`row ${r}: missing ${what} "${key}" (expected ${inputs[k].dtype})`, { code: 'missing-column', row: r, field: key });
    }
  });
}

/** shape[1:], an unknown dimension taken from the first array row (as exporter/decoding.py does). */
function innerDims(input, rows) {
  const dims = input.shape.slice(1);
  const known = (d) => Number.isInteger(d) && d >= 0;
  if (dims.every(known)) return dims;
  let level = rows.find(isArrayLike) ?? [];
  return dims.map((d) => {
    const size = isArrayLike(level) ? level.length : 1;
    level = isArrayLike(level) && level.length ? level[0] : null;
    return known(d) ? d : size;
  });
}

/** A row's values in row-major order: flat with prod(dims) values, or nested exactly like dims; else `row-length`. */
function flatten(value, dims, name, r) {
  const width = dims.reduce((a, b) => a * b, 1);
  const fail = (why) => {
    throw new RowValidationError(`row ${r}, input "${name}": ${why}`, { code: 'row-length', row: r, field: name });
  };
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) value = Array.from(value);
  if (!Array.isArray(value)) fail(`expected an array of ${width} values shaped [${dims}], got ${describe(value)}`);
  if (!value.some(Array.isArray)) {
    if (value.length !== width) fail(`expected ${width} values (shape [${dims}]), got ${value.length}`);
    return value;
  }
  let level = [value];
  dims.forEach((size, axis) => {
    const below = [];
    for (const item of level) {
      if (!Array.isArray(item) || item.length !== size) {
        fail(`nested values don't match shape [${dims}]: ${Array.isArray(item) ? `${item.length} items` : describe(item)} ` +
          `at depth ${axis}, where the shape needs an array of ${size}`);
      }
      for (const v of item) below.push(v);
    }
    level = below;
  });
  if (level.some(Array.isArray)) fail(`values are nested deeper than shape [${dims}]`);
  return level;
}

/**
 * One value of row `r`, decoded by the contract above. An error names `field`: a column, or (with the value's
 * index `i` in row-major order) an input.
 */
function checkValue(value, input, r, field, i) {
  const { dtype } = input;
  if (dtype === 'string') {
    if (typeof value === 'string') {
      // onnxruntime-web cuts a string at U+0000, and a lone surrogate is no UTF-8 at all: either would make the
      // browser and the server read the value differently, so the contract refuses both
      if (value.includes('\u0000')) throw valueError('type', 'a string may not contain U+0000', r, field, i);
      if (!value.isWellFormed()) throw valueError('type', 'a string must be well-formed Unicode (it has a lone surrogate)', r, field, i);
      return value;
    }
    if (value === null || value === undefined) {
      if (input.nullable === true) return '';
      throw valueError('missing-value', 'a value is required (string); this model does not accept missing values here', r, field, i);
    }
    throw valueError('type', `expected a string, got ${describe(value)}`, r, field, i);
  }
  if (value === null || value === undefined || Number.isNaN(value)) {
    if (input.nullable === true && !Object.hasOwn(INT_END, dtype)) return NaN;
    throw valueError('missing-value', `a value is required (${dtype}); this model does not accept missing values here`, r, field, i);
  }
  if (typeof value !== 'number') throw valueError('type', `expected a number (${dtype}), got ${describe(value)}`, r, field, i);
  if (!Number.isFinite(value)) throw valueError('range', `an infinite value (${value}) does not fit ${dtype}`, r, field, i);
  if (Object.hasOwn(INT_END, dtype)) {
    if (!Number.isInteger(value)) throw valueError('type', `expected an integer (${dtype}), got ${value}`, r, field, i);
    if (value < -INT_END[dtype] || value >= INT_END[dtype]) throw valueError('range', `${value} does not fit ${dtype}`, r, field, i);
  } else if (dtype === 'float32' && Math.abs(value) > FLOAT32_MAX) {
    throw valueError('range', `${value} does not fit float32`, r, field, i);
  }
  return value;
}

function valueError(code, why, r, field, i) {
  const where = i === undefined ? `row ${r}, column "${field}"` : `row ${r}, input "${field}", value ${i}`;
  return new RowValidationError(`${where}: ${why}`, { code, row: r, field });
}

function describe(value) {
  if (value === null || value === undefined) return String(value);
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  const text = typeof value === 'string' ? JSON.stringify(value) : typeof value === 'bigint' ? `${value}n` : String(value);
  return `${typeof value} ${text.length > 40 ? `${text.slice(0, 37)}...` : text}`;
}

function makeTensor(dtype, values, dims) {
  if (dtype === 'string') return { type: 'string', data: values, dims };
  if (dtype === 'int64') return { type: 'int64', data: BigInt64Array.from(values, (v) => BigInt(v)), dims };
  return { type: dtype, data: TYPED[dtype].from(values), dims };
}

/**
 * An OIP v2 infer request body for inputs from buildInputs: the decoded values, so the server sees what the
 * browser would have run. JSON has no NaN: a missing float goes as null; a missing nullable string is already "".
 */
export function toInferRequest(manifest, inputs, parameters, outputNames = {}) {
  return {
    ...(parameters ? { parameters } : {}),
    inputs: manifest.inputs.map((spec) => {
      const t = inputs[spec.name];
      const data = spec.dtype === 'string' ? Array.from(t.data)
        : spec.dtype === 'int64' || spec.dtype === 'int32' ? Array.from(t.data, Number) // exact: every integer came from a JS number
          : Array.from(t.data, (v) => (Number.isNaN(v) ? null : v));
      return { name: spec.name, shape: t.dims, datatype: OIP_DATATYPE[spec.dtype], data };
    }),
    outputs: manifest.outputs.map((o) => ({ name: outputNames[o.role] ?? o.name })), // the server's names, where they differ
  };
}
