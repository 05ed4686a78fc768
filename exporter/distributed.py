"""Batch prediction on engines people already run: a Dask DataFrame's partitions (predict_dask) and Spark's
mapInPandas (spark_predict).

Both run `edgeport predict`'s own chunk function (batch.predict_chunk) on each partition, so the decoding, the
output columns and the rejects are exactly the command's. The model is loaded once per worker process and kept
(served_model: keyed by the bundle's path and its manifest's sha256, which covers every file of the bundle), so
a partition costs its rows, not a model load; a bundle re-exported in place is loaded again.

Bad rows. By default a bad row fails the partition, and so the computation, with a BatchError naming the row
and the reason, like `edgeport predict` without --rejects. With rejects=True every row comes back: a bad row has
its key, empty outputs and the reason in an `error` column (missing on a predicted row), so
`out[out.error.isna()]` is the predictions and `out[out.error.notna()]` the rejects. Integer and boolean outputs
are then pandas' nullable dtypes, which can hold a rejected row's missing value. With id_column, a row without a
key is a bad row too (repeats across partitions are not looked for: that is the engine's join to do). Text
columns (a label, `error`, an object key) are pandas' string dtype, so `to_parquet` can type them.

Row numbers. Without id_column the key column is `row`, the row's number in the whole frame from 0, as `edgeport
predict` numbers a file; Dask counts each partition's rows first (one pass over the data) to know where each
starts. With id_column no counting is done: rows are known by their key, and a reason's row number counts from
its partition's start. Spark's batches have no order to count by: spark_predict needs id_column.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .batch import BatchError, Chunk, check_id_column, output_columns, predict_chunk
from .bundle import MANIFEST, read_bundle
from .decoding import table_columns

_MODELS: dict[tuple[str, str, bool], Any] = {}  # this process's models: (bundle path, manifest sha256, unverified)
_LOADING = threading.Lock()
NULLABLE = {"i": "Int64", "u": "UInt64", "b": "boolean"}
SPARK_TYPES = {"int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint", "float32": "float",
               "float64": "double", "bool": "boolean", "boolean": "boolean"}


def served_model(bundle_dir: str | Path, *, allow_unverified: bool = False):
    """The bundle's ServedModel, loaded (read, verified and warmed up, as the server does) once per process."""
    from .server.repository import load_served

    path = Path(bundle_dir).resolve()
    try:
        digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:
        raise BatchError(f"no bundle at {path} on this worker ({exc.strerror}): every worker reads the bundle "
                         "itself, so put it where they all see it (a shared or copied path)") from exc
    key = (str(path), digest, allow_unverified)
    with _LOADING:  # a worker's threads share one model
        model = _MODELS.get(key)
        if model is None:
            model = load_served(read_bundle(path, verify=False), allow_unverified=allow_unverified)
            for stale in [k for k in _MODELS if k[0] == key[0]]:  # the bundle was re-exported in place
                del _MODELS[stale]
            _MODELS[key] = model
    return model


def predict_frame(model, frame, first_row: int = 0, *, id_column: Optional[str] = None, text: bool = False,
                  rejects: bool = False, dtypes: Optional[dict] = None):
    """One partition's predictions (batch.predict_chunk's columns, as `dtypes`: output_meta's); a bad row raises,
    or with `rejects` comes back in place with an `error` column."""
    outputs, faults = predict_chunk(model, Chunk(first_row, frame, text), id_column)
    if not rejects:
        if faults:
            first = faults[0]
            where = f" ({id_column} {frame[id_column].iloc[first.row - first_row]!r})" if id_column else ""
            raise BatchError(f"{first}{where}: give rejects=True to keep bad rows, with their reason, in an "
                             "`error` column and go on")
        return outputs.astype(dtypes) if dtypes else outputs
    bad = np.array([f.row - first_row for f in faults], dtype=np.int64)
    good = np.ones(len(frame), dtype=bool)
    good[bad] = False
    key = id_column or "row"
    every = outputs.set_axis(np.flatnonzero(good)).reindex(range(len(frame)))
    every[key] = frame[id_column].to_numpy() if id_column else np.arange(first_row, first_row + len(frame))
    error = np.full(len(frame), None, dtype=object)
    error[bad] = [str(f) for f in faults]
    every["error"] = error
    return every.astype(dtypes or _nullable(outputs.dtypes.drop(key))).reset_index(drop=True)


def output_meta(model, *, id_column: Optional[str] = None, key_dtype: Any = np.int64, rejects: bool = False):
    """An empty DataFrame with the columns and dtypes predict_frame returns (Dask's `meta`, Spark's schema):
    the model's own outputs for one golden row, so the dtypes are what onnxruntime gives."""
    import pandas as pd

    from .decoding import feeds_from_rows

    bundle = model.bundle
    rows = bundle.golden()["rows"][:1]
    if not rows:
        raise BatchError(f"bundle {bundle.path} has no golden rows to tell its output types by; re-export it")
    values = model.session.run([o.name for o in bundle.outputs], feeds_from_rows(bundle.inputs, bundle.manifest.layout, rows))
    columns = output_columns(bundle.manifest, {o.role: v for o, v in zip(bundle.outputs, values)})
    key = id_column or "row"
    meta = pd.DataFrame({key: pd.Series([], dtype=_text(key_dtype)),
                         **{name: pd.Series(c[:0], dtype=_text(c.dtype)) for name, c in columns.items()}})
    if rejects:
        meta = meta.astype(_nullable(meta.dtypes.drop(key))).assign(error=pd.Series([], dtype=pd.StringDtype()))
    return meta


def _text(dtype) -> Any:
    """pandas' string dtype for an object one: Dask and Arrow type an object column by a made-up value, which
    to_parquet can't write; a label or an error is text."""
    import pandas as pd

    return pd.StringDtype() if np.dtype(object) == dtype else dtype


def _nullable(dtypes) -> dict:
    return {name: NULLABLE.get(dtype.kind, dtype) for name, dtype in dtypes.items()}


# ---------------------------------------------------------------- Dask

def predict_dask(bundle_dir: str | Path, ddf, *, id_column: Optional[str] = None, text: bool = False,
                 rejects: bool = False, allow_unverified: bool = False):
    """The bundle's predictions for every row of the Dask DataFrame `ddf`, lazily: a Dask DataFrame of
    `edgeport predict`'s columns (the key, then the outputs), one partition for each of ddf's.

    `text`: ddf was read from CSV (dask.dataframe.read_csv), where digits in a text column are a number, as
    `edgeport predict` reads CSV; give read_csv dtype=str for the model's string inputs, as it does."""
    model = served_model(bundle_dir, allow_unverified=allow_unverified)  # here: the meta, and a bad bundle fails now
    _check_table_model(model)
    if id_column is not None:
        check_id_column(model.bundle.manifest, id_column, error_column=rejects, option="id_column")
        if id_column not in ddf.columns:
            raise BatchError(f"id_column {id_column}: the data has no such column; it has "
                             f"{', '.join(map(str, ddf.columns))}")
    key_dtype = ddf._meta[id_column].dtype if id_column else np.int64
    meta = output_meta(model, id_column=id_column, key_dtype=key_dtype, rejects=rejects)
    starts = None
    if id_column is None:  # the rows' numbers in the whole frame: where each partition starts
        starts = np.concatenate([[0], np.cumsum(ddf.map_partitions(len).compute())])[:-1].tolist()
    options = dict(id_column=id_column, text=text, rejects=rejects, dtypes=meta.dtypes.to_dict())
    return ddf.map_partitions(_predict_partition, str(Path(bundle_dir).resolve()), starts, allow_unverified, options,
                              meta=meta)


def _check_table_model(model) -> None:
    """A frame holds columns: a model whose inputs name none (an unnamed matrix, tensors) can't take one."""
    bundle = model.bundle
    if table_columns(bundle.inputs, bundle.manifest.layout) is None:
        shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in bundle.inputs)
        raise BatchError(f"bundle {bundle.path}: this model's inputs ({shapes}) name no columns, so a DataFrame's "
                         "columns can't feed it; predict JSON lines with `edgeport predict` or ask the server")


def _predict_partition(frame, bundle_dir: str, starts: Optional[list[int]], allow_unverified: bool, options: dict,
                       partition_info: Optional[dict] = None):
    first_row = starts[partition_info["number"]] if starts and partition_info else 0
    return predict_frame(served_model(bundle_dir, allow_unverified=allow_unverified), frame, first_row, **options)


# ---------------------------------------------------------------- Spark

def spark_predict(bundle_dir: str | Path, id_column: str, *, key_type: str = "string", rejects: bool = False,
                  allow_unverified: bool = False) -> tuple[Callable[[Iterator[Any]], Iterator[Any]], str]:
    """(function, schema) for `sdf.mapInPandas(function, schema)`: the bundle's predictions for every row of the
    Spark DataFrame sdf, keyed by its `id_column` (of Spark type `key_type`), with predict_dask's columns.

    The schema is a DDL string, so building it needs no Spark; the function loads the model once per Python
    worker. Batches are typed data (Spark reads CSV into typed columns itself), not CSV text."""
    if not id_column:
        raise BatchError("spark_predict needs id_column, the key column: Spark's batches come in no order, so a row "
                         "can't be known by its number")
    model = served_model(bundle_dir, allow_unverified=allow_unverified)
    _check_table_model(model)
    check_id_column(model.bundle.manifest, id_column, error_column=rejects, option="id_column")
    meta = output_meta(model, id_column=id_column, key_dtype=object, rejects=rejects)
    schema = ", ".join(f"`{name}` {key_type if name == id_column else _spark_type(dtype)}"
                       for name, dtype in meta.dtypes.items())
    path = str(Path(bundle_dir).resolve())
    dtypes = meta.dtypes.drop(id_column).to_dict()  # the key stays as Spark typed it

    def predict_batches(batches: Iterator[Any]) -> Iterator[Any]:
        model = served_model(path, allow_unverified=allow_unverified)
        for frame in batches:
            yield predict_frame(model, frame, id_column=id_column, rejects=rejects, dtypes=dtypes)

    return predict_batches, schema


def _spark_type(dtype) -> str:
    name = str(dtype).lower()
    return SPARK_TYPES.get(name, "string")  # object: class names, and the error column
