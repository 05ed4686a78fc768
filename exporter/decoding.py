"""Rows, or OIP v2 tensors, into onnxruntime feeds: the one decoder every Python path uses.

The python and server parity runtimes, the fallback server and its warm-up
all go through here, and the JS client's `buildInputs` follows the same
contract; tests/corpus/decoding.json holds both languages to it, case by case.

The contract, per value of an input:
  float32, float64,         a number (never a bool or a string). null (None) or NaN is a missing value:
  int32, int64              allowed only where the input is `nullable` and a float, and fed as NaN;
                            otherwise `missing-value`. ±Inf, a float32 beyond 3.4e38, an int32 outside
                            [-2**31, 2**31), an int64 outside [-2**63, 2**63) are `range`; a non-integer
                            for an integer input is `type`. (int32 is what TF.js has: Keras integer inputs,
                            token ids into an Embedding, are int32 in every artifact and on every path.)
  string                    any well-formed string ("" and unicode included) as is, but none holding
                            U+0000 (onnxruntime-web cuts strings there); null is "" where nullable,
                            otherwise `missing-value`; anything else is `type`. Unknown categories pass:
                            the model decides what they mean.
Per row, by the manifest's layout:
  columns   an object keyed by exactly the inputs' columns (`extra-column`, `missing-column`);
            each input is an [n, 1] tensor
  matrix    an array, flat with prod(shape[1:]) values or nested exactly like shape[1:] (`row-length`);
            or, where the input names its columns, an object keyed by them
  tensors   an object keyed by exactly the input names, each value flat or nested like its shape[1:]
Anything else is `row-type`; no rows at all is `rows`. The first error in row order wins (within a row,
inputs in manifest order, values in row-major order), and its message names the row and the column or input.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from .bundle import InputSpec
from .errors import RowValidationError

class Place(NamedTuple):
    """Where a value sits, for an error: the words, the row and the column or input."""
    text: str
    row: "int | None"
    field: str | None


NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64, "string": object}
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)
INT_RANGES = {"int32": (-(2**31), 2**31), "int64": (-(2**63), 2**63)}  # [low, end)
# measured: below about this many values, checking each in Python beats numpy's per-call overhead
BULK_VALUES = 16


def feeds_from_rows(inputs: Sequence[InputSpec], layout: str, rows: Any, first_row: int = 0) -> dict[str, np.ndarray]:
    """onnxruntime feeds for JSON rows (see the module docstring), or RowValidationError naming the first fault
    (rows are numbered from first_row: a batch's place in a file)."""
    if not isinstance(rows, list) or not rows:
        raise RowValidationError("predict takes a non-empty list of rows", code="rows")
    if layout == "columns":
        return _columns(inputs, rows, first_row)
    if layout == "matrix":
        return {inputs[0].name: _matrix(inputs[0], rows, first_row)}
    if layout == "tensors":
        return _tensors(inputs, rows, first_row)
    raise RowValidationError(f"unknown layout {layout!r}", code="rows")


class TableColumn(NamedTuple):
    """A table's column and the input it feeds."""
    spec: InputSpec
    name: str  # the column
    index: "int | None"  # its position in a matrix input; None for an input of the columns layout


def table_columns(inputs: Sequence[InputSpec], layout: str) -> "list[TableColumn] | None":
    """Which table column feeds which input: each input of the columns layout by its key, or each named column of
    a matrix input; None where the inputs don't name columns (an unnamed matrix, tensors). Tables (batch files),
    live drift, the prediction log and explanations all read columns through this."""
    if layout == "columns":
        return [TableColumn(spec, spec.key, None) for spec in inputs]
    if layout == "matrix" and inputs[0].columns:
        return [TableColumn(inputs[0], column, j) for j, column in enumerate(inputs[0].columns)]
    return None


def tensor_from_values(spec: InputSpec, shape: Sequence[int], flat: list) -> np.ndarray:
    """The feed for one OIP tensor given as its flat values: names, shapes and nesting are the caller's to check
    (server/oip.py); every value is checked here, by the same rules as rows."""
    values = _decode(spec, flat, lambda i: Place(f"input {spec.name!r}, value {i}", None, spec.name))
    return np.array(values, dtype=NUMPY_DTYPES[spec.dtype]).reshape(tuple(shape))


def feeds_from_table(inputs: Sequence[InputSpec], layout: str, table: Any, first_row: int = 0, *, text: bool = False
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, list[RowValidationError]]:
    """Feeds for a table's rows (a pandas DataFrame from CSV, Parquet or JSON lines), by the same contract as
    feeds_from_rows, checked column by column in bulk: (the good rows' feeds, a mask of the good rows, the first
    fault of each bad row). A row the bulk checks doubt goes through feeds_from_rows itself, so a bad row's
    message is the one the server would give, numbered from first_row. Tables hold columns: the `columns` layout,
    or one matrix input that names its columns; other inputs need JSON rows. `text`: the table came from CSV,
    where every cell was text (see _column)."""
    import pandas as pd

    columns = table_columns(inputs, layout)
    if columns is None:
        raise RowValidationError(f"a table's columns can't hold this model's {layout} inputs "
                                 f"({', '.join(s.name for s in inputs)}); give JSON lines, one row per line", code="rows")
    keyed = [(c.spec, c.name) for c in columns]
    missing = [key for _, key in keyed if key not in table.columns]
    if missing:
        raise RowValidationError(f'the data has no column "{missing[0]}"; the model takes '
                                 f"{', '.join(key for _, key in keyed)}", code="missing-column", field=missing[0])
    n = len(table)
    doubtful = np.zeros(n, dtype=bool)
    arrays, cells = {}, {}
    for spec, key in keyed:
        arrays[key], doubt, cells[key] = _column(spec, pd.Series(table[key]).reset_index(drop=True), text)
        doubtful |= doubt
    good = ~doubtful
    faults = []
    for r in np.flatnonzero(doubtful):
        row = {key: _plain(cells[key][r]) for _, key in keyed}
        try:
            feeds = feeds_from_rows(inputs, layout, [row], first_row + int(r))
        except RowValidationError as fault:
            faults.append(fault)
            continue
        good[r] = True  # the bulk check was stricter than the contract: the row's own values, as decoded
        for k, (spec, key) in enumerate(keyed):
            arrays[key][r] = feeds[spec.name].reshape(-1)[0 if layout == "columns" else k]
    if layout == "columns":
        feeds = {spec.name: arrays[key][good].astype(NUMPY_DTYPES[spec.dtype]).reshape(-1, 1) for spec, key in keyed}
    else:
        spec = inputs[0]
        feeds = {spec.name: np.column_stack([arrays[key][good] for _, key in keyed]).astype(NUMPY_DTYPES[spec.dtype])
                 .reshape(-1, len(keyed))}
    return feeds, good, faults


def _column(spec: InputSpec, column: Any, text: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column as the input's dtype, which rows may break the contract (to check one by one), and its cells as
    that check should see them. In text (CSV) a number is written as digits: "31" is the number 31 there; in typed
    data (Parquet, JSON lines) a string stays a string. A missing value is None, NaN or pd.NA alike."""
    import pandas as pd

    n = len(column)
    cells = column.to_numpy(dtype=object)
    absent = column.isna().to_numpy()  # None, NaN or pd.NA: pandas' string columns hold every missing value as one
    if spec.dtype == "string":
        is_text = np.fromiter((type(v) is str for v in cells), dtype=bool, count=n)
        values = np.where(is_text, cells, "").astype(object)
        malformed = np.fromiter(("\x00" in v or (not v.isascii() and not _utf8(v)) for v in values), dtype=bool, count=n)
        return values, (~is_text & ~(absent & spec.nullable)) | malformed, np.where(absent, None, cells)
    kind = column.dtype.kind
    doubt = np.zeros(n, dtype=bool)
    exact = None
    if kind in "iu":
        exact = column.to_numpy()
        floats = exact.astype(np.float64)
    elif kind == "f":
        floats = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # strings, booleans or a mix: what isn't a plain number is looked at row by row
        if kind == "b":
            doubt[:] = True
        else:
            doubt |= np.fromiter((isinstance(v, bool) for v in cells), dtype=bool, count=n)
        try:
            parsed = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        except OverflowError:  # an int beyond float64 (JSON's 10**400): infinite here, so the row check says `range`
            parsed = pd.to_numeric(pd.Series([_finite_or_inf(v) for v in cells], dtype=object),
                                   errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if text:  # digits are a number; what doesn't parse is checked (and refused) as the string it is
            doubt |= np.isnan(parsed) & ~absent
            cells = np.where(np.isnan(parsed) & ~absent, cells, parsed).astype(object)
            floats = parsed
        else:
            doubt |= np.fromiter((type(v) is not float and type(v) is not int and v is not None for v in cells),
                                 dtype=bool, count=n)
            floats = np.where(doubt, 0.0, parsed)
    nan = np.isnan(floats)
    if not (spec.nullable and spec.dtype not in INT_RANGES):
        doubt |= nan
    with np.errstate(invalid="ignore"):
        doubt |= np.isinf(floats)
        if spec.dtype == "float32":
            doubt |= np.abs(floats) > FLOAT32_MAX
        if spec.dtype in INT_RANGES:
            low, end = INT_RANGES[spec.dtype]
            if exact is not None:  # integers as read: exact, where a float64 would round past 2**53
                doubt |= (exact < low) | (exact > end - 1)
                return np.where(doubt, 0, exact).astype(np.int64), doubt, cells
            doubt |= (floats != np.floor(floats)) | (floats < low) | (floats >= end)
            return np.where(doubt | nan, 0, floats).astype(np.int64), doubt, cells
    return floats, doubt, cells


def _finite_or_inf(value: Any) -> Any:
    """An int too large for a float as ±inf; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any) -> Any:
    """A cell as JSON would hold it: numpy scalars as Python ones, pandas' missing marker as None (NaN stays NaN:
    _column has already made a text table's empty cells None)."""
    import pandas as pd

    if value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- layouts

def _columns(inputs: Sequence[InputSpec], rows: list, first_row: int = 0) -> dict[str, np.ndarray]:
    keys = [spec.key for spec in inputs]
    values: list[list] = [[] for _ in inputs]
    for r, row in enumerate(rows, first_row):
        _check_keys(row, r, keys, "column")
        for spec, column in zip(inputs, values):
            column.append(_value(spec, row[spec.key], lambda: Place(f'row {r}, column "{spec.key}"', r, spec.key)))
    return {spec.name: np.array(column, dtype=NUMPY_DTYPES[spec.dtype]).reshape(len(rows), 1)
            for spec, column in zip(inputs, values)}


def _matrix(spec: InputSpec, rows: list, first_row: int = 0) -> np.ndarray:
    dims = _inner_dims(spec, rows)
    flat: list = []
    for r, row in enumerate(rows, first_row):
        if isinstance(row, dict) and spec.columns:
            _check_keys(row, r, list(spec.columns), "column")
            flat.extend(_value(spec, row[c], lambda c=c: Place(f'row {r}, column "{c}"', r, c)) for c in spec.columns)
            continue
        if not isinstance(row, list):
            expected = f"an array of {math.prod(dims)} numbers" + (" or an object keyed by column" if spec.columns else "")
            raise RowValidationError(f'row {r}, input "{spec.name}": expected {expected}, got {_describe(row)}',
                                     code="row-type", row=r, field=spec.name)
        values = _flatten(row, dims, lambda: Place(f'row {r}, input "{spec.name}"', r, spec.name))
        flat.extend(_decode(spec, values, lambda i: _where_matrix(spec, r, i)))
    return np.array(flat, dtype=NUMPY_DTYPES[spec.dtype]).reshape(len(rows), *dims)


def _tensors(inputs: Sequence[InputSpec], rows: list, first_row: int = 0) -> dict[str, np.ndarray]:
    dims = {spec.name: _inner_dims(spec, [row.get(spec.name) if isinstance(row, dict) else None for row in rows])
            for spec in inputs}
    flat: dict[str, list] = {spec.name: [] for spec in inputs}
    keys = [spec.name for spec in inputs]
    for r, row in enumerate(rows, first_row):
        _check_keys(row, r, keys, "input")
        for spec in inputs:
            where = f'row {r}, input "{spec.name}"'
            values = _flatten(row[spec.name], dims[spec.name], lambda: Place(where, r, spec.name))
            flat[spec.name].extend(_decode(spec, values, lambda i: Place(f"{where}, value {i}", r, spec.name)))
    return {spec.name: np.array(flat[spec.name], dtype=NUMPY_DTYPES[spec.dtype]).reshape(len(rows), *dims[spec.name])
            for spec in inputs}


def _check_keys(row: Any, r: int, keys: list[str], what: str) -> None:
    if not isinstance(row, dict):
        raise RowValidationError(f"row {r}: expected an object keyed by {what} ({', '.join(keys)}), got {_describe(row)}",
                                 code="row-type", row=r)
    known = set(keys)
    extra = next((k for k in row if k not in known), None)
    if extra is not None:
        raise RowValidationError(f'row {r}: unexpected {what} "{extra}"; the model takes {", ".join(keys)}',
                                 code="extra-column", row=r, field=str(extra))
    missing = next((k for k in keys if k not in row), None)
    if missing is not None:
        raise RowValidationError(f'row {r}: missing {what} "{missing}"', code="missing-column", row=r, field=missing)


def _inner_dims(spec: InputSpec, rows: list) -> tuple[int, ...]:
    """shape[1:], with an unknown dimension taken from the first row that has one."""
    dims = list(spec.shape[1:])
    if all(isinstance(d, int) and d >= 0 for d in dims):
        return tuple(dims)
    level: Any = next((row for row in rows if isinstance(row, list)), [])
    for axis, d in enumerate(dims):
        size = len(level) if isinstance(level, list) else 1
        if not (isinstance(d, int) and d >= 0):
            dims[axis] = size
        level = level[0] if isinstance(level, list) and level else None
    return tuple(dims)


def _flatten(value: Any, dims: tuple[int, ...], where) -> list:
    """A row's values in row-major order: flat with prod(dims) values, or nested exactly like dims."""
    width = math.prod(dims)
    if not isinstance(value, list):
        raise _fault(where(), f"expected an array of {width} values shaped {list(dims)}, "
                     f"got {_describe(value)}", "row-length")
    if not any(isinstance(v, list) for v in value):
        if len(value) != width:
            raise _fault(where(), f"expected {width} values (shape {list(dims)}), got {len(value)}", "row-length")
        return value
    level = [value]
    for axis, size in enumerate(dims):
        below: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                found = f"{len(item)} items" if isinstance(item, list) else _describe(item)
                raise _fault(where(), f"nested values don't match shape {list(dims)}: {found} at depth "
                             f"{axis}, where the shape needs an array of {size}", "row-length")
            below.extend(item)
        level = below
    if any(isinstance(v, list) for v in level):
        raise _fault(where(), f"values are nested deeper than shape {list(dims)}", "row-length")
    return level


def _where_matrix(spec: InputSpec, r: int, i: int) -> Place:
    if spec.columns and len(spec.shape) == 2:
        return Place(f'row {r}, column "{spec.columns[i]}"', r, spec.columns[i])
    return Place(f'row {r}, input "{spec.name}", value {i}', r, spec.name)


# ---------------------------------------------------------------- values

def _decode(spec: InputSpec, values: list, where) -> list:
    """Every value checked by `_value`; where(i) names the i-th value in an error."""
    if len(values) > BULK_VALUES and spec.dtype in ("float32", "float64") and all(type(v) is float for v in values):
        # many floats, checked in bulk: finite and in range (a NaN or an Inf takes the value-by-value path)
        array = np.asarray(values, dtype=np.float64)
        limit = FLOAT32_MAX if spec.dtype == "float32" else FLOAT64_MAX
        if np.isfinite(array).all() and (not array.size or float(np.abs(array).max()) <= limit):
            return values
    return [_value(spec, v, lambda i=i: where(i)) for i, v in enumerate(values)]


def _value(spec: InputSpec, value: Any, where) -> Any:
    dtype = spec.dtype
    if dtype == "string":
        if isinstance(value, str):
            # onnxruntime-web cuts a string at U+0000, and a lone surrogate is no UTF-8 at all: either would make
            # the browser and the server read the value differently, so the contract refuses both
            if "\x00" in value:
                raise _fault(where(), "a string may not contain U+0000", "type")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _fault(where(), "a string must be well-formed Unicode (it has a lone surrogate)", "type") from None
            return value
        if value is None:
            if spec.nullable:
                return ""
            raise _fault(where(), f"a value is required (string); this model does not accept missing "
                         "values here", "missing-value")
        raise _fault(where(), f"expected a string, got {_describe(value)}", "type")
    if value is None or (type(value) is float and math.isnan(value)):
        if spec.nullable and dtype not in INT_RANGES:
            return math.nan
        raise _fault(where(), f"a value is required ({dtype}); this model does not accept missing "
                     "values here", "missing-value")
    if type(value) is bool or not isinstance(value, (int, float)):
        raise _fault(where(), f"expected a number ({dtype}), got {_describe(value)}", "type")
    if isinstance(value, float) and math.isinf(value):
        raise _fault(where(), f"an infinite value ({value}) does not fit {dtype}", "range")
    if dtype in INT_RANGES:
        if isinstance(value, float) and not value.is_integer():
            raise _fault(where(), f"expected an integer ({dtype}), got {value!r}", "type")
        low, end = INT_RANGES[dtype]
        if not low <= value < end:
            raise _fault(where(), f"{value} does not fit {dtype}", "range")
        return int(value)
    try:
        magnitude = abs(float(value))
    except OverflowError:  # a Python int beyond float64
        magnitude = math.inf
    if magnitude > (FLOAT32_MAX if dtype == "float32" else FLOAT64_MAX):
        raise _fault(where(), f"{_short(value)} does not fit {dtype}", "range")
    return value


def _fault(place: Place, message: str, code: str) -> RowValidationError:
    return RowValidationError(f"{place.text}: {message}", code=code, row=place.row, field=place.field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return f"string {_short(value)}"
    return f"{type(value).__name__} {_short(value)}"
