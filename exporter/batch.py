"""Batch prediction: a file of rows (CSV, Parquet, JSON lines) through a bundle, into a file or a database table.

A nightly job and the browser can't disagree: this runs the very ONNX file the server runs, opened and warmed
up the same way (server.repository.load_served), and decodes rows by the same contract (decoding.py: a table's
columns in bulk by feeds_from_table, JSON rows of tensors by feeds_from_rows).

It streams: chunks of rows are read, decoded, run and written one after another (with --workers, that many
chunks at once, in order), so memory stays bounded whatever the file's size. A bad row is a reject, named by
its row number (0 is the first data row), written to --rejects with the reason, and the run goes on; without
--rejects the first bad row stops the run. A file is written beside its destination and renamed into place
when complete, so a killed run leaves the old file (or none), never half of one. A database table is written
chunk by chunk, each in its own transaction, keyed by (key, model, version): a run that is killed keeps what it
committed, and running again updates those rows instead of adding them twice.

Rows are read as the server would take them (batch_read.py): a CSV cell of a string input is its text ("NA" is a
category; only an empty cell is missing), and so is the --id column's ("00123" stays 00123). Files and tables are
written by batch_sinks.py. With --id, a row without an id, or
with an earlier row's, is a bad row (`missing-id`, `duplicate-id`): a table keeps one row an id, and a file agrees
with it. A model whose inputs name no columns (an unnamed matrix, tensors) takes JSON lines, each line the row the
server takes. Options that can't work (an output that is the data or the other output, an --id named like an
output column, an in-memory database) are refused before anything is read or written.
"""
from __future__ import annotations

import os
import resource
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .bundle import read_bundle
from .decoding import NUMPY_DTYPES, _utf8, feeds_from_rows, feeds_from_table, table_columns
from .batch_read import Chunk, ChunkReader
from .batch_sinks import TABLE_COLUMNS, RejectFile, _short, _sink
from .errors import BatchError, EdgeportError, InputFileError, RowValidationError
from .progress import Progress, quiet

DEFAULT_CHUNK_ROWS = 20_000
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class BatchResult:
    rows: int  # rows read
    predicted: int
    rejected: int
    seconds: float
    out: str
    peak_memory_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- the entry point

def predict_file(bundle_dir: str | Path, data: str | Path, out: str, *, table: Optional[str] = None,
                 id_column: Optional[str] = None, rejects: Optional[str | Path] = None, workers: int = 1,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, allow_unverified: bool = False,
                 progress: Progress = quiet) -> BatchResult:
    """Predict every row of `data` into `out`: a file (its suffix picks the format) or a SQLAlchemy URL (`table`)."""
    from .server.repository import load_served

    if workers < 1 or chunk_rows < 1:
        raise BatchError(f"--workers and --chunk-rows must be at least 1, not {workers} and {chunk_rows}")
    data = Path(data)
    if not data.is_file():
        raise InputFileError(f"no data file at {data}")
    _check_paths(data, out, rejects)
    model = load_served(read_bundle(bundle_dir, verify=False), allow_unverified=allow_unverified)
    manifest = model.bundle.manifest
    if id_column is not None:
        check_id_column(manifest, id_column, table="://" in out)
    reader = ChunkReader(data, model, chunk_rows, id_column)
    sink = _sink(out, table, model)
    reject_sink = RejectFile(Path(rejects), "--rejects") if rejects else None
    progress(f"predicting {data} with {manifest.name} version {manifest.version} into {sink.describe()}"
             f" ({workers} worker{'s' if workers > 1 else ''}, {chunk_rows:,} rows a chunk)")
    started = time.monotonic()
    counts = {"rows": 0, "predicted": 0, "rejected": 0}
    last_report = started
    seen = SeenKeys() if id_column is not None else None
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="edgeport-batch") as pool:
            pending: deque = deque()

            def drain(limit: int) -> None:
                nonlocal last_report
                while len(pending) > limit:
                    chunk, future = pending.popleft()
                    outputs, faults = future.result()
                    if faults and reject_sink is None:
                        first = faults[0]
                        raise BatchError(f"{first} (row {first.row} of {data}; {sink.written()}. Give --rejects FILE "
                                         "to set bad rows aside and go on)")
                    sink.write(outputs)
                    if faults:
                        reject_sink.write(chunk, faults)
                    counts["rows"] += len(chunk.frame)
                    counts["predicted"] += len(outputs)
                    counts["rejected"] += len(faults)
                    now = time.monotonic()
                    if now - last_report >= PROGRESS_EVERY_S:
                        last_report = now
                        done = f" ({reader.fraction():.0%} of the file)" if reader.fraction() is not None else ""
                        progress(f"{counts['rows']:,} rows{done}, {counts['rows'] / (now - started):,.0f} rows/s, "
                                 f"{counts['rejected']:,} rejected")

            for chunk in reader:
                # ids are checked here, in file order, so a repeat is known across chunks whatever the workers do
                known = id_faults(chunk.frame, id_column, chunk.first_row, seen) if id_column is not None else None
                pending.append((chunk, pool.submit(predict_chunk, model, chunk, id_column, known)))
                drain(workers * 2)  # at most this many chunks in memory
            drain(0)
        sink.commit()
        if reject_sink is not None:
            reject_sink.commit()
    except BaseException as exc:
        sink.abandon()
        if reject_sink is not None:
            reject_sink.abandon()
        if isinstance(exc, EdgeportError) and getattr(sink, "committed", 0) and "committed" not in str(exc):
            raise BatchError(f"{exc} ({sink.written()})") from exc
        raise
    seconds = time.monotonic() - started
    peak = peak_memory_mb()
    return BatchResult(counts["rows"], counts["predicted"], counts["rejected"], seconds, sink.describe(), peak)


def _check_paths(data: Path, out: str, rejects: Optional[str | Path]) -> None:
    """Refuse, before anything is touched, an output that is the data file or the other output."""
    files = [("DATA", data)] + ([] if "://" in out else [("--out", Path(out))])
    if rejects is not None:
        files.append(("--rejects", Path(rejects)))
    for i, (name, path) in enumerate(files):
        for other_name, other in files[:i]:
            if _same_file(path, other):
                raise BatchError(f"{name} {path} is the same file as {other_name} {other}: give {name} a file of its "
                                 "own (nothing was written)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_id_column(manifest, id_column: str, *, table: bool = False, error_column: bool = False,
                    option: str = "--id") -> None:
    """Refuse a key column named like a column the output has of its own (an output, a table's model, version or
    predicted_at, the `error` column of rejects): one would overwrite the other."""
    if not id_column:
        raise BatchError(f"{option} needs a column name, not an empty one")
    taken = [(c, "an output of the model") for c in output_column_names(manifest)]
    if table:
        taken += [(c, "a column the table has of its own") for c in TABLE_COLUMNS]
    if error_column:
        taken.append(("error", "where a rejected row's reason goes"))
    fold = (lambda c: c.casefold()) if table else (lambda c: c)  # databases fold a column name's case
    for column, what in taken:
        if fold(column) == fold(id_column):
            raise BatchError(f"{option} {id_column}: the output has a column {column!r} of its own ({what}), so the "
                             f"ids and it would overwrite each other; rename the data's {id_column!r} column first")


class SeenKeys:
    """The ids met so far, as sorted arrays of 8-byte hashes (runs merged as they grow, so a lookup stays cheap
    and memory stays 8 bytes an id)."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def found(self, hashes: np.ndarray) -> np.ndarray:
        """Which of these hashes were added before."""
        found = np.zeros(len(hashes), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[at] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        self.runs.append(np.sort(hashes))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))


def id_faults(frame, id_column: str, first_row: int, seen: Optional[SeenKeys] = None) -> dict[int, RowValidationError]:
    """The rows whose id is missing (null, NaN or empty) and, given `seen` (the run's ids so far, updated here),
    the rows that repeat an earlier row's id: by their place in the chunk."""
    import pandas as pd

    if id_column not in frame.columns:
        return {}
    ids = frame[id_column]
    cells = ids.to_numpy(dtype=object)
    n = len(cells)
    missing = ids.isna().to_numpy() | np.fromiter((type(v) is str and v == "" for v in cells), dtype=bool, count=n)
    # a lone surrogate (JSON's "\ud800"): no output file could hold the id
    # and an id that is a list or an object (JSON lines) is no key either
    malformed = np.fromiter(((type(v) is str and not v.isascii() and not _utf8(v)) or isinstance(v, (list, dict))
                             for v in cells), dtype=bool, count=n)
    faults = {}
    for i in np.flatnonzero(missing | malformed):
        r, where = first_row + int(i), f'row {first_row + int(i)}, column "{id_column}"'
        faults[int(i)] = (RowValidationError(f"{where}: the id is missing; with --id every row needs one",
                                             code="missing-id", row=r, field=id_column) if missing[i] else
                          RowValidationError(f"{where}: an id must be a number or well-formed text, not "
                                             f"{_short(cells[i])}", code="type", row=r, field=id_column))
    if seen is None:
        return faults
    present = np.flatnonzero(~(missing | malformed))
    # by value, whatever type pandas gave the chunk's column (5 in an int column and in a mixed one are one id; the
    # number 1 and the text "1" are two)
    hashes = pd.util.hash_array(np.array([_key_text(v) for v in cells[present]], dtype=object))
    repeated = pd.Series(hashes).duplicated().to_numpy() | seen.found(hashes)
    for i in present[repeated]:
        r = first_row + int(i)
        faults[int(i)] = RowValidationError(f'row {r}, column "{id_column}": the id {_short(cells[i])} is an earlier '
                                            "row's too; each row's id must be its own (a table keeps one row an id)",
                                            code="duplicate-id", row=r, field=id_column)
    seen.add(hashes[~repeated])
    return dict(sorted(faults.items()))


def _key_text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"b:{bool(value)}"
    if isinstance(value, (int, np.integer)):
        return f"n:{int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"n:{int(value)}" if float(value).is_integer() else f"n:{float(value)!r}"
    return f"s:{value}"


# ---------------------------------------------------------------- one chunk

def predict_chunk(model, chunk: Chunk, id_column: Optional[str] = None,
                  known: Optional[dict[int, RowValidationError]] = None) -> tuple[Any, list[RowValidationError]]:
    """The outputs of a chunk's good rows as a DataFrame (its key column first), and the bad rows' faults. `known`:
    faults already found (by row in the chunk: predict_file's id checks); without it a missing id is checked here."""
    import pandas as pd

    frame = chunk.frame
    bundle = model.bundle
    layout = bundle.manifest.layout
    if id_column is not None and id_column not in frame.columns:
        raise BatchError(f"--id {id_column}: the data has no such column; it has {', '.join(map(str, frame.columns))}")
    if known is None:
        known = id_faults(frame, id_column, chunk.first_row) if id_column is not None else {}
    if table_columns(bundle.inputs, layout) is not None:
        feeds, good, faults = feeds_from_table(bundle.inputs, layout, frame, chunk.first_row, text=chunk.text)
    else:
        feeds, good, faults = _feeds_row_by_row(bundle.inputs, layout, frame, chunk.first_row)
    if known:  # a row with a bad id is set aside whatever its values: its id fault is the one reported
        bad = np.zeros(len(frame), dtype=bool)
        bad[list(known)] = True
        feeds = {name: array[~bad[good]] for name, array in feeds.items()}
        good = good & ~bad
        by_row = {f.row: f for f in faults}
        by_row.update({chunk.first_row + i: f for i, f in known.items()})
        faults = [by_row[r] for r in sorted(by_row)]
    keys = frame[id_column].to_numpy()[good] if id_column else np.arange(chunk.first_row, chunk.first_row + len(frame))[good]
    columns = {id_column or "row": keys}
    if good.any():
        names = [o.name for o in bundle.outputs]
        values = model.session.run(names, feeds)
        columns.update(output_columns(bundle.manifest, {o.role: v for o, v in zip(bundle.outputs, values)}))
    else:
        columns.update(empty_output_columns(bundle.manifest))
    return pd.DataFrame(columns), faults


def _feeds_row_by_row(inputs, layout: str, frame, first_row: int):
    """Rows of tensors (JSON lines): each row decoded alone, so a bad one is set aside and the others go on."""
    rows = frame["__row__"].tolist() if "__row__" in frame.columns else frame.to_dict("records")
    good = np.zeros(len(rows), dtype=bool)
    faults, decoded = [], []
    for i, row in enumerate(rows):
        try:
            decoded.append(feeds_from_rows(inputs, layout, [row], first_row + i))
            good[i] = True
        except RowValidationError as fault:
            faults.append(fault)
    feeds = {spec.name: np.concatenate([d[spec.name] for d in decoded]) for spec in inputs} if decoded else {}
    return feeds, good, faults


def output_column_names(manifest) -> list[str]:
    names = []
    for spec in manifest.outputs:
        width = 1 if len(spec.shape) < 2 or spec.shape[1] in (None, -1, 1) else int(np.prod(spec.shape[1:]))
        names.extend(_names(manifest, spec.role, width))
    if any(o.role == "probabilities" for o in manifest.outputs):
        names.append("confidence")
    return names


def empty_output_columns(manifest) -> dict[str, Any]:
    """The output columns of no rows, typed as real rows' are (a label as its classes' type, numbers as the model
    gives them): pandas would type an empty list float64, and a Parquet schema or a table made from it would be
    wrong for every later row."""
    import pandas as pd

    arrays = {}
    for spec in manifest.outputs:
        width = 1 if len(spec.shape) < 2 or spec.shape[1] in (None, -1, 1) else int(np.prod(spec.shape[1:]))
        try:
            dtype = NUMPY_DTYPES.get(spec.dtype) or np.dtype(spec.dtype)
        except TypeError:
            dtype = np.float32
        arrays[spec.role] = np.zeros((0, width), dtype=dtype)
    return {name: pd.Series([], dtype="string") if column.dtype == object else column
            for name, column in output_columns(manifest, arrays).items()}


def output_columns(manifest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by role as table columns: label, probability_<class> per class and confidence, value (value_<i> for
    several), score, distance_<i>; the label as the class name where the model gives an index."""
    columns: dict[str, np.ndarray] = {}
    classes = list(manifest.classes) if manifest.classes is not None else None
    for role, array in outputs.items():
        flat = _flat(array)
        if role == "label" and flat.shape[1] == 1 and classes and array.dtype.kind in "iu" and not all(
                isinstance(c, (int, np.integer)) for c in classes):
            flat = np.asarray(classes, dtype=object)[flat]  # a Keras-style index into the classes
        for name, column in zip(_names(manifest, role, flat.shape[1]), flat.T):
            columns[name] = column
    if "probabilities" in outputs:
        probabilities = _flat(outputs["probabilities"])
        columns["confidence"] = probabilities.max(axis=1) if len(probabilities) else probabilities[:, 0]
    return columns


def _flat(array) -> np.ndarray:
    """An output as rows of values, [n, width] (numpy can't infer width from -1 when n is 0)."""
    array = np.asarray(array)
    return array.reshape(len(array), int(np.prod(array.shape[1:], dtype=np.int64)))


def _names(manifest, role: str, width: int) -> list[str]:
    if role == "probabilities":
        classes = list(manifest.classes) if manifest.classes is not None and len(manifest.classes) == width else range(width)
        return [f"probability_{c}" for c in classes]
    base = {"distances": "distance"}.get(role, role)
    return [base] if width == 1 else [f"{base}_{i}" for i in range(width)]


def peak_memory_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry a large parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
