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

Rows are read as the server would take them: a CSV cell of a string input is its text ("NA" is a category; only
an empty cell is missing), and so is the --id column's ("00123" stays 00123). With --id, a row without an id, or
with an earlier row's, is a bad row (`missing-id`, `duplicate-id`): a table keeps one row an id, and a file agrees
with it. A model whose inputs name no columns (an unnamed matrix, tensors) takes JSON lines, each line the row the
server takes. Options that can't work (an output that is the data or the other output, an --id named like an
output column, an in-memory database) are refused before anything is read or written.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import resource
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .bundle import read_bundle
from .decoding import NUMPY_DTYPES, _utf8, feeds_from_rows, feeds_from_table, table_columns
from .errors import EdgeportError, InputFileError, RowValidationError
from .progress import Progress, quiet
from .publish import _alive

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
DEFAULT_CHUNK_ROWS = 20_000
DEFAULT_TABLE = "predictions"
PROGRESS_EVERY_S = 2.0
TABLE_COLUMNS = ("model", "version", "predicted_at")  # a database table's own columns, beside the key and outputs
# pandas' missing-value words, kept for numeric columns only: in a string column "NA" is a category (North America)
NA_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
            "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
SECRET_PARAMETERS = ("password", "passwd", "pwd", "secret", "token", "sslpassword")


class BatchError(EdgeportError):
    """A batch run that can't go on (a bad row without --rejects, an unreadable file): one paragraph, exit 1."""


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


@dataclass
class Chunk:
    first_row: int
    frame: Any  # pandas.DataFrame: the rows as read
    text: bool  # read from CSV: every cell was text


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
    malformed = np.fromiter((type(v) is str and not v.isascii() and not _utf8(v) for v in cells), dtype=bool, count=n)
    faults = {}
    for i in np.flatnonzero(missing | malformed):
        r, where = first_row + int(i), f'row {first_row + int(i)}, column "{id_column}"'
        faults[int(i)] = (RowValidationError(f"{where}: the id is missing; with --id every row needs one",
                                             code="missing-id", row=r, field=id_column) if missing[i] else
                          RowValidationError(f"{where}: an id must be well-formed Unicode (it has a lone surrogate)",
                                             code="type", row=r, field=id_column))
    if seen is None:
        return faults
    present = np.flatnonzero(~(missing | malformed))
    hashes = pd.util.hash_pandas_object(ids.iloc[present], index=False).to_numpy(dtype=np.uint64)
    repeated = pd.Series(hashes).duplicated().to_numpy() | seen.found(hashes)
    for i in present[repeated]:
        r = first_row + int(i)
        faults[int(i)] = RowValidationError(f'row {r}, column "{id_column}": the id {_short(cells[i])} is an earlier '
                                            "row's too; each row's id must be its own (a table keeps one row an id)",
                                            code="duplicate-id", row=r, field=id_column)
    seen.add(hashes[~repeated])
    return dict(sorted(faults.items()))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


# ---------------------------------------------------------------- reading

class ChunkReader:
    """A data file as chunks of rows; CSV and JSON lines report how far through the file they are.

    CSV is read as the server would take its cells: a string input's cells, and the --id column's, are text as
    written ("NA" is a category, "00123" an id), only an empty cell missing; other columns keep pandas' missing
    words (NA, null, ...). A model whose inputs name no columns (an unnamed matrix, tensors) takes JSON lines only,
    each line the row the server takes (an array, or an object keyed by input)."""

    def __init__(self, path: Path, model, chunk_rows: int, id_column: Optional[str] = None):
        self.path = path
        self.format = format_of(path, "data")
        self.chunk_rows = chunk_rows
        self.size = path.stat().st_size
        self.handle = None
        self.id_column = id_column
        bundle = model.bundle
        columns = table_columns(bundle.inputs, bundle.manifest.layout)
        self.rows = columns is None  # rows of tensors, one JSON value each
        if self.rows and self.format != "jsonl":
            shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in bundle.inputs)
            raise BatchError(f"{path}: this model's input{'s' if len(bundle.inputs) > 1 else ''} ({shapes}) name no "
                             f"columns, so a {self.format} table can't hold its rows: give JSON lines (.jsonl), one row "
                             "a line as the server takes it ("
                             + ("an array of the input's values, e.g. [1, 2, 3]" if bundle.manifest.layout == "matrix"
                                else "an object keyed by input name") + ")")
        self.text_columns = [c.name for c in columns or () if c.spec.dtype == "string"]
        if id_column is not None:
            self.text_columns.append(id_column)

    def fraction(self) -> Optional[float]:
        if self.handle is None or not self.size:
            return None
        try:
            return min(1.0, self.handle.tell() / self.size)
        except (OSError, ValueError):
            return None

    def __iter__(self) -> Iterator[Chunk]:
        if self.format == "parquet":
            yield from self._parquet()
            return
        with open(self.path, "rb") as self.handle:
            if self.format == "csv":
                yield from self._csv()
                return
            first = 0
            rows: list = []
            for line in self.handle:
                if line.strip():
                    rows.append(line)
                if len(rows) == self.chunk_rows:
                    yield self._json_chunk(first, rows)
                    first += len(rows)
                    rows = []
            if rows:
                yield self._json_chunk(first, rows)

    def _parquet(self) -> Iterator[Chunk]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = 0
        try:
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=self.chunk_rows)
            for batch in batches:
                frame = batch.to_pandas()
                yield Chunk(first, frame, text=False)
                first += len(frame)
        except (pa.ArrowException, OSError) as exc:
            raise BatchError(f"{self.path} is not a Parquet file this can read (near row {first}: "
                             f"{str(exc).splitlines()[0]}); is it whole, and Parquet?") from exc

    def _csv(self) -> Iterator[Chunk]:
        import pandas as pd

        sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
        header = self._header(sep)
        # every column told its missing words: with keep_default_na=False, a column left out would have none
        na = {c: ([""] if c in self.text_columns else NA_WORDS) for c in header}
        first = 0
        try:
            # index_col=False: a row with a field too many is not shifted onto an index (pandas' default for it)
            chunks = pd.read_csv(self.handle, sep=sep, chunksize=self.chunk_rows, keep_default_na=False, na_values=na,
                                 dtype={c: str for c in self.text_columns if c in header}, index_col=False)
            while True:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    frame = next(chunks, None)
                if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                    raise BatchError(f"{self.path}: a row from row {first} on has more fields than the header's "
                                     f"{len(header)}, so which value is which column can't be told; if every line "
                                     f"ends with a separator, remove it")
                if frame is None:
                    return
                yield Chunk(first, frame, text=True)
                first += len(frame)
        except (ValueError, pd.errors.ParserError) as exc:
            raise BatchError(f"{self.path} is not CSV this can read, near row {first}: {exc}") from exc

    def _header(self, sep: str) -> list[str]:
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle, delimiter=sep), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise BatchError(f"{self.path} is not CSV this can read: its header: {exc}") from exc
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise BatchError(f"{self.path}: the header names {', '.join(map(repr, repeated))} more than once; which "
                             "column is meant can't be told, so rename or drop the copies")
        return header

    def _json_chunk(self, first: int, lines: list[bytes]) -> Chunk:
        import pandas as pd

        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise BatchError(f"{self.path}: row {first + i} is not valid JSON ({exc})") from exc
            if not self.rows and not isinstance(record, dict):
                raise BatchError(f"{self.path}: row {first + i} is not a JSON object; each line must be one row")
            records.append(record)
        if self.rows:  # each line as parsed, for feeds_from_rows; an id is taken out of an object row
            ids = [r.pop(self.id_column, None) if isinstance(r, dict) else None for r in records] \
                if self.id_column is not None else None
            column = np.empty(len(records), dtype=object)
            column[:] = records
            frame = pd.DataFrame({"__row__": column}) if ids is None else \
                pd.DataFrame({self.id_column: pd.Series(ids, dtype=object), "__row__": column})
            return Chunk(first, frame, text=False)
        try:
            return Chunk(first, pd.DataFrame.from_records(records), text=False)
        except UnicodeEncodeError:  # a lone surrogate: pandas' Arrow strings refuse it; the decoder says `type`
            return Chunk(first, pd.DataFrame(records, dtype=object), text=False)


def format_of(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BatchError(f"{what} file {path}: can't tell its format from {suffix or 'no suffix'!r}; use "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


# ---------------------------------------------------------------- writing

def _sink(out: str, table: Optional[str], model):
    if "://" in out:
        if table is not None and not table.strip():
            raise BatchError("--table needs a name; leave it out for the default, predictions")
        return TableSink(out, table or DEFAULT_TABLE, model)
    if table is not None:
        raise BatchError(f"--table {table} is for a database --out (a SQLAlchemy URL such as sqlite:///preds.db), "
                         f"not the file {out}")
    return FileSink(Path(out))


class FileSink:
    """Written to .NAME.partial-PID beside the destination, renamed over it by commit()."""

    committed = 0  # rows in place before the run ends: none, for a file

    def __init__(self, path: Path, what: str = "--out"):
        self.path = path
        self.what = what
        self.format = format_of(path, what)
        if not path.parent.is_dir():
            raise BatchError(f"{what} {path}: its directory {path.parent} does not exist")
        if path.is_dir():
            raise BatchError(f"{what} {path} is a directory; give a file in it, such as {path / ('predictions' + path.suffix)}")
        self.partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            longest = os.pathconf(path.parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            longest = 255
        if len(os.fsencode(self.partial.name)) > longest:
            raise BatchError(f"{what} {path}: the name is too long for its file system ({longest} bytes at most, and "
                             f"the file is written first as {self.partial.name[:20]}..., {len(self.partial.name) - len(path.name)} "
                             "bytes longer); choose a shorter name")
        for stale in path.parent.glob(f".{path.name}.partial-*"):  # left by a run that was killed
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
        self.handle = None
        self.writer = None
        self.empty = None  # Parquet: a first chunk without rows, its schema kept until a real row types the file

    def describe(self) -> str:
        return str(self.path)

    def written(self) -> str:
        return "nothing was written"

    def write(self, frame) -> None:
        try:
            self._write(frame)
        except OSError as exc:
            raise BatchError(_os_error(self.what, self.path, exc)) from exc

    def _write(self, frame) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            batch = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                if not len(frame):
                    self.empty = self.empty or batch
                    return
                self.writer = pq.ParquetWriter(self.partial, _text_typed(batch.schema))
            self.writer.write_table(batch.cast(self.writer.schema))
            return
        if self.handle is None:
            self.handle = open(self.partial, "w", newline="")
            if self.format == "csv":
                frame.to_csv(self.handle, index=False, sep="\t" if self.path.suffix == ".tsv" else ",")
                return
        if self.format == "csv":
            frame.to_csv(self.handle, index=False, header=False, sep="\t" if self.path.suffix == ".tsv" else ",")
        else:
            frame.to_json(self.handle, orient="records", lines=True, force_ascii=False)

    def commit(self) -> None:
        try:
            if self.writer is None and self.empty is not None:  # no rows at all: the columns, typed
                import pyarrow.parquet as pq

                pq.write_table(self.empty.cast(_text_typed(self.empty.schema)), self.partial)
            elif self.writer is not None:
                self.writer.close()
            elif self.handle is not None:
                self.handle.close()
            else:  # no rows at all: still a file, with nothing in it
                self.partial.write_text("")
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise BatchError(_os_error(self.what, self.path, exc)) from exc

    def abandon(self) -> None:
        for closer in (self.writer, self.handle):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self.partial.unlink(missing_ok=True)


def _text_typed(schema):
    """A schema whose text is `string` (pandas' own string dtype makes large_string, numpy's objects string) and
    whose all-missing columns (Arrow's null type, which no later row could be cast to) are text too."""
    import pyarrow as pa

    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) or pa.types.is_large_string(f.type) else f
                      for f in schema], metadata=schema.metadata)


def _os_error(what: str, path: Path, exc: OSError) -> str:
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
              errno.ENAMETOOLONG: "the name is too long for the file system",
              errno.EISDIR: "it is a directory"}.get(exc.errno, exc.strerror or str(exc))
    return (f"{what} {path}: writing it failed: {reason}. Nothing was put in its place (the partial file is "
            "removed); make room or choose another place, and run again")


class RejectFile(FileSink):
    """Bad rows as they were read, with their row number, the field at fault, the code and the message. A row of
    a JSON lines file whose model takes rows of tensors is kept as its JSON text (`json`); in Parquet every data
    cell is text, so a column that held a number in one bad row and a word in another still writes."""

    def write(self, chunk: Chunk, faults: list[RowValidationError]) -> None:  # type: ignore[override]
        import pandas as pd

        rows = chunk.frame.iloc[[f.row - chunk.first_row for f in faults]].copy()
        if "__row__" in rows.columns:
            rows["__row__"] = [json.dumps(v, ensure_ascii=False, default=str) for v in rows["__row__"]]
            rows = rows.rename(columns={"__row__": "json"})
        taken = {"row", "field", "code", "error"}
        rows = rows.rename(columns={c: f"data_{c}" for c in rows.columns if c in taken})  # the data's own, kept apart
        as_text = self.format == "parquet"
        rows = pd.DataFrame({c: [_cell(v, as_text) for v in rows[c]] for c in rows.columns}, dtype=object)
        rows.insert(0, "error", [_cell(str(f), True) for f in faults])
        rows.insert(0, "code", [f.code for f in faults])
        rows.insert(0, "field", [f.field for f in faults])
        rows.insert(0, "row", [f.row for f in faults])
        super().write(rows)


def _cell(value: Any, as_text: bool) -> Any:
    """A rejected cell as it can be written: missing stays missing, a string that isn't UTF-8 (a lone surrogate)
    is escaped, and `as_text` makes anything else text."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType":
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, np.generic):
        value = value.item()
    return str(value) if as_text else value


class TableSink:
    """A database table (any SQLAlchemy URL), upserted by (key, model, version) one chunk per transaction."""

    def __init__(self, url: str, table: str, model):
        from .extras import require

        require("sqlalchemy", "db", "predict --out DATABASE_URL")
        import sqlalchemy as sa

        self.url = url
        self.name = table
        self.model = model
        self.committed = 0  # rows upserted by this run's committed transactions
        self.integer_key = False
        try:
            parsed = sa.engine.make_url(url)
        except Exception as exc:
            raise BatchError(f"--out {_redacted(url)}: SQLAlchemy can't read it as a URL "
                             f"({_scrub(str(exc).splitlines()[0], url)})") from exc
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            raise BatchError(f"--out {_redacted(url)} is a database in memory, gone when the run ends: name a file, "
                             "such as sqlite:///predictions.db")
        try:
            self.engine = sa.create_engine(url)
        except Exception as exc:  # SQLAlchemy's own: a malformed URL, a missing driver
            raise BatchError(f"--out {_redacted(url)}: SQLAlchemy can't open it "
                             f"({_scrub(str(exc).splitlines()[0], url)})") from exc
        self.table = None

    def describe(self) -> str:
        return f"{_redacted(self.url)} table {self.name}"

    def written(self) -> str:
        if not self.committed:
            return "nothing was written"
        return (f"the {self.committed:,} rows before it were committed to {self.describe()}; a re-run upserts them, "
                "so they are not added twice")

    def write(self, frame) -> None:
        import sqlalchemy as sa

        manifest = self.model.bundle.manifest
        key = frame.columns[0]
        if self.table is None:
            self.table = self._table(frame, key)
        if frame.empty:
            return
        stamp = datetime.now(timezone.utc)
        if self.integer_key:
            frame = frame.assign(**{key: [self._integer(v) for v in frame[key]]})
        records = [{**{c: _sql_value(v) for c, v in row.items()}, "model": manifest.name, "version": manifest.version,
                    "predicted_at": stamp} for row in frame.to_dict("records")]
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise BatchError(f"--out {_redacted(self.url)}: {dialect} has no upsert here; use SQLite or PostgreSQL")
        statement = insert(self.table)
        updated = {c.name: statement.excluded[c.name] for c in self.table.columns if c.name not in (key, "model", "version")}
        try:
            with self.engine.begin() as connection:  # one transaction a chunk: a killed run keeps what it committed
                connection.execute(statement.on_conflict_do_update(index_elements=[key, "model", "version"], set_=updated),
                                   records)
        except sa.exc.SQLAlchemyError as exc:
            raise BatchError(f"writing to {self.describe()} failed: {_scrub(str(exc).splitlines()[0], self.url)} "
                             f"({self.written()})") from exc
        self.committed += len(records)

    def _integer(self, value: Any) -> Any:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BatchError(f"{self.describe()} keeps its ids as integers (an earlier run made it so), and the id "
                             f"{_short(value)} is not one: choose another --table ({self.written()})") from None

    def _table(self, frame, key: str):
        import sqlalchemy as sa

        types = {"i": sa.BigInteger, "u": sa.BigInteger, "f": sa.Float, "b": sa.Boolean}

        def table(key_type):
            columns = [sa.Column(key, key_type, primary_key=True), sa.Column("model", sa.String, primary_key=True),
                       sa.Column("version", sa.String, primary_key=True),
                       sa.Column("predicted_at", sa.DateTime(timezone=True))]
            columns += [sa.Column(c, types.get(frame[c].dtype.kind, sa.String)) for c in frame.columns if c != key]
            return sa.Table(self.name, sa.MetaData(), *columns)

        made = table(types.get(frame[key].dtype.kind, sa.String))
        try:
            made.metadata.create_all(self.engine, checkfirst=True)
            existing = {c["name"]: c["type"] for c in sa.inspect(self.engine).get_columns(self.name)}
        except sa.exc.SQLAlchemyError as exc:
            raise BatchError(f"can't create or read {self.describe()}: {_scrub(str(exc).splitlines()[0], self.url)}") from exc
        missing = sorted({c.name for c in made.columns} - set(existing))
        if missing:
            raise BatchError(f"{self.describe()} exists without the columns {', '.join(missing)}: "
                             "choose another --table, or drop it")
        if isinstance(existing[key], sa.Integer) and not isinstance(made.columns[key].type, sa.Integer):
            # made by a run that read CSV ids as numbers: its key stays an integer, and text ids are put as integers
            self.integer_key = True
            return table(sa.BigInteger)
        return made

    def commit(self) -> None:
        self.engine.dispose()

    def abandon(self) -> None:
        self.engine.dispose()


def peak_memory_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry a large parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sql_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _redacted(url: str) -> str:
    """A URL without its password, whether in its user part or its query string (?password=...), for messages."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secret = {k: "***" for k in parsed.query if k.lower() in SECRET_PARAMETERS}
        if secret:
            parsed = parsed.update_query_dict(secret)
        return parsed.render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1].split("?")[0]


def _scrub(message: str, url: str) -> str:
    """A third party's message with the URL's secrets taken out, should it quote them."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        secrets = [parsed.password] + [v for k, v in parsed.query.items() if k.lower() in SECRET_PARAMETERS]
    except Exception:
        return message
    for secret in secrets:
        for value in ([secret] if isinstance(secret, str) else list(secret or ())):
            if value:
                message = message.replace(str(value), "***")
    return message
