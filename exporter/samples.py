"""Sample data: reading it, turning it into JSON rows and back, and describing it.

A sample is what the user passes with --sample: CSV with a header, Parquet,
`.npy`, or `.npz` with one array per named input (multi-input Keras models). It decides the graph's input signature, gives the golden rows, and
gives `feature_stats` for the manifest.

Rows are the JSON form every runtime shares (golden.json, the JS client, the
node and browser runners): a list of arrays for a single matrix or tensor
input, a list of objects keyed by column for per-column inputs, or a list of
objects keyed by input name (each a nested array) for several tensor inputs.
JSON has no NaN, so a missing number is `null`.

Tables are what the original model takes: a DataFrame, an ndarray, or (for
several tensor inputs) a dict of ndarrays keyed by input name. Which form a
bundle uses is its manifest's `layout`; rows become onnxruntime feeds in
decoding.py, never here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import InputSpec
from .drift import numeric_bins
from .errors import InputFileError, SampleError


def read_sample(path: str | Path) -> Any:
    """Read a CSV (with header), Parquet or .npy file into a DataFrame or ndarray."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"sample file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
            if not arrays or len({len(a) for a in arrays.values()}) != 1:
                raise SampleError(f"sample {path.name} must hold one array per input, all with the same number of rows")
            return arrays
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim == 1:
                array = array.reshape(-1, 1)
            if array.size == 0:
                raise SampleError(f"sample {path.name} is empty")
            return array
        else:
            raise SampleError(f"unsupported sample format {suffix!r} for {path.name}: use .csv (with a header row), .parquet, .npy or .npz")
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(f"could not read sample {path.name} ({type(exc).__name__}: {exc})") from exc
    if frame.empty:
        raise SampleError(f"sample {path.name} has no rows")
    if suffix == ".csv":  # pandas reads "007" as 7: a converter that learns a column is text reads it again as text
        frame.attrs[CSV_PATH] = str(path)
    return frame


CSV_PATH = "edgeport_csv_path"


def csv_text_columns(table: Any, columns: Sequence[str]) -> dict:
    """The given columns of a sample read from CSV, again, as the text in the file ("007" stays "007"; only an
    empty cell is missing); {} for a sample that didn't come from CSV."""
    import pandas as pd

    path = getattr(table, "attrs", {}).get(CSV_PATH)
    if not path or not columns:
        return {}
    text = pd.read_csv(path, usecols=list(columns), dtype={c: str for c in columns}, keep_default_na=False,
                       na_values={c: [""] for c in columns})
    return {c: text[c].set_axis(table.index) for c in columns}


def is_string_dtype(series: Any) -> bool:
    import pandas as pd

    return not pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def rows_from_table(table: Any, inputs: Sequence[InputSpec], layout: str) -> list:
    """JSON rows from a table, shaped for `inputs` in `layout`."""
    if layout == "tensors":
        arrays = {spec.name: np.asarray(table[spec.name], dtype=np.float64) for spec in inputs}
        return [{name: _nested_json(array[i]) for name, array in arrays.items()} for i in range(table_len(table))]
    if layout == "matrix":
        columns = list(inputs[0].columns or ())
        if hasattr(table, "iloc"):
            table = table[columns].to_numpy() if columns else table.to_numpy()
        array = np.asarray(table, dtype=np.float64)
        if array.ndim > 2:  # images and other tensors go through as nested lists
            return [_nested_json(r) for r in array]
        return [[_json_number(v) for v in row] for row in array]
    rows = []
    for record in table.to_dict(orient="records"):
        row = {}
        for spec in inputs:
            value = record[spec.key]
            if getattr(spec, "kind", None) == "text":  # CSV can't tell an empty text from a missing one
                row[spec.key] = "" if _is_missing(value) else str(value)
            elif spec.dtype == "string":
                row[spec.key] = None if _is_missing(value) else str(value)
            else:
                row[spec.key] = _json_number(value)
        rows.append(row)
    return rows


def table_from_rows(rows: Sequence, inputs: Sequence[InputSpec], layout: str) -> Any:
    """The inverse of rows_from_table: what the original Python model is called with."""
    import pandas as pd

    if layout == "tensors":
        return {spec.name: np.array([row[spec.name] for row in rows], dtype=np.float64) for spec in inputs}
    if layout == "matrix":
        return np.array(rows, dtype=np.float64)  # numpy reads None as NaN, at any nesting
    data = {}
    for spec in inputs:
        values = [row.get(spec.key) for row in rows]
        if spec.dtype == "string":
            data[spec.key] = pd.Series(values, dtype=object)
        else:
            data[spec.key] = pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.DataFrame(data)


def feature_stats(table: Any, inputs: Sequence[InputSpec], layout: str, pii: Sequence[str] = ()) -> dict:
    """Per-column statistics of the sample, for the demo form and drift checks: a numeric column's `bins` are
    about ten quantile bins of the sample (drift.numeric_bins), a string column's `frequencies` its top 50. A
    column named as personal data (`pii`) records how many values it has and nothing about them: the manifest
    is public."""
    import pandas as pd

    stats = _feature_stats(table, inputs, layout)
    for name in pii:
        if name in stats:
            stats[name] = {"count": stats[name].get("count", 0), "missing": stats[name].get("missing", 0), "pii": True}
    return stats


def _feature_stats(table: Any, inputs: Sequence[InputSpec], layout: str) -> dict:
    import pandas as pd

    if layout == "tensors":
        return {spec.name: _numeric_stats(pd.Series(np.asarray(table[spec.name], dtype=np.float64).ravel()))
                for spec in inputs}
    if layout == "matrix":
        array = np.asarray(table.to_numpy() if hasattr(table, "iloc") else table, dtype=np.float64)
        if array.ndim != 2:
            flat = array.reshape(len(array), -1)
            return {inputs[0].name: _numeric_stats(pd.Series(flat.ravel()))}
        names = list(inputs[0].columns or ()) or [f"x{i}" for i in range(array.shape[1])]
        return {name: _numeric_stats(pd.Series(array[:, i])) for i, name in enumerate(names)}
    stats = {}
    for spec in inputs:
        column = table[spec.key]
        if getattr(spec, "kind", None) == "text":
            stats[spec.key] = _text_stats(column)
        elif spec.dtype == "string":
            counts = column.astype(object).where(column.notna(), None).value_counts(dropna=True)
            stats[spec.key] = {
                "count": int(column.notna().sum()),
                "missing": int(column.isna().sum()),
                "frequencies": {str(k): int(v) for k, v in counts.head(50).items()},
            }
        else:
            stats[spec.key] = _numeric_stats(column.astype(np.float64))
    return stats


def _text_stats(column: Any) -> dict:
    """Free text: how much there is, and how long, never the texts themselves (the manifest is public, and no
    two texts repeat the way categories do)."""
    present = column.dropna().astype(str)
    lengths = present.str.len()
    return {
        "count": int(present.size),
        "missing": int(column.isna().sum()),
        "min_length": int(lengths.min()) if present.size else None,
        "mean_length": float(lengths.mean()) if present.size else None,
        "max_length": int(lengths.max()) if present.size else None,
    }


def _numeric_stats(series: Any) -> dict:
    present = series.dropna()
    if present.empty:
        return {"count": 0, "missing": int(series.isna().sum()), "mean": None, "std": None, "min": None, "max": None}
    stats = {
        "count": int(present.size),
        "missing": int(series.isna().sum()),
        "mean": float(present.mean()),
        "std": float(present.std(ddof=0)),
        "min": float(present.min()),
        "max": float(present.max()),
    }
    bins = numeric_bins(present.to_numpy())  # training's distribution, for drift (drift.py)
    return {**stats, "bins": bins} if bins else stats


def table_len(table: Any) -> int:
    return len(next(iter(table.values()))) if isinstance(table, dict) else len(table)


def head(table: Any, n: int) -> Any:
    """The first n rows of any table."""
    if isinstance(table, dict):
        return {k: v[:n] for k, v in table.items()}
    return table.iloc[:n] if hasattr(table, "iloc") else table[:n]


def _nested_json(array: np.ndarray) -> Any:
    return np.where(np.isnan(array), None, array).tolist()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))

