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
"""
from __future__ import annotations

import json
import os
import resource
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .bundle import read_bundle
from .decoding import feeds_from_rows, feeds_from_table, table_columns
from .errors import EdgeportError, InputFileError, RowValidationError
from .progress import Progress, quiet
from .publish import _alive

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
DEFAULT_CHUNK_ROWS = 20_000
DEFAULT_TABLE = "predictions"
PROGRESS_EVERY_S = 2.0


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
    model = load_served(read_bundle(bundle_dir, verify=False), allow_unverified=allow_unverified)
    manifest = model.bundle.manifest
    sink = _sink(out, table, model)
    reject_sink = RejectFile(Path(rejects)) if rejects else None
    progress(f"predicting {data} with {manifest.name} version {manifest.version} into {sink.describe()}"
             f" ({workers} worker{'s' if workers > 1 else ''}, {chunk_rows:,} rows a chunk)")
    started = time.monotonic()
    counts = {"rows": 0, "predicted": 0, "rejected": 0}
    last_report = started
    reader = ChunkReader(data, model, chunk_rows)
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
                        raise BatchError(f"{first} (row {first.row} of {data}; nothing was written. Give --rejects FILE "
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
                pending.append((chunk, pool.submit(predict_chunk, model, chunk, id_column)))
                drain(workers * 2)  # at most this many chunks in memory
            drain(0)
        sink.commit()
        if reject_sink is not None:
            reject_sink.commit()
    except BaseException:
        sink.abandon()
        if reject_sink is not None:
            reject_sink.abandon()
        raise
    seconds = time.monotonic() - started
    peak = peak_memory_mb()
    return BatchResult(counts["rows"], counts["predicted"], counts["rejected"], seconds, sink.describe(), peak)


# ---------------------------------------------------------------- one chunk

def predict_chunk(model, chunk: Chunk, id_column: Optional[str] = None) -> tuple[Any, list[RowValidationError]]:
    """The outputs of a chunk's good rows as a DataFrame (its key column first), and the bad rows' faults."""
    import pandas as pd

    frame = chunk.frame
    bundle = model.bundle
    layout = bundle.manifest.layout
    if id_column is not None and id_column not in frame.columns:
        raise BatchError(f"--id {id_column}: the data has no such column; it has {', '.join(map(str, frame.columns))}")
    if table_columns(bundle.inputs, layout) is not None:
        feeds, good, faults = feeds_from_table(bundle.inputs, layout, frame, chunk.first_row, text=chunk.text)
    else:
        feeds, good, faults = _feeds_row_by_row(bundle.inputs, layout, frame, chunk.first_row)
    keys = frame[id_column].to_numpy()[good] if id_column else np.arange(chunk.first_row, chunk.first_row + len(frame))[good]
    columns = {id_column or "row": keys}
    if good.any():
        names = [o.name for o in bundle.outputs]
        values = model.session.run(names, feeds)
        columns.update(output_columns(bundle.manifest, {o.role: v for o, v in zip(bundle.outputs, values)}))
    else:
        columns.update({name: [] for name in output_column_names(bundle.manifest)})
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


def output_columns(manifest, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by role as table columns: label, probability_<class> per class and confidence, value (value_<i> for
    several), score, distance_<i>; the label as the class name where the model gives an index."""
    columns: dict[str, np.ndarray] = {}
    classes = list(manifest.classes) if manifest.classes is not None else None
    for role, array in outputs.items():
        array = np.asarray(array)
        flat = array.reshape(len(array), -1)
        if role == "label" and flat.shape[1] == 1 and classes and array.dtype.kind in "iu" and not all(
                isinstance(c, (int, np.integer)) for c in classes):
            flat = np.asarray(classes, dtype=object)[flat]  # a Keras-style index into the classes
        for name, column in zip(_names(manifest, role, flat.shape[1]), flat.T):
            columns[name] = column
    if "probabilities" in outputs:
        columns["confidence"] = np.asarray(outputs["probabilities"]).reshape(len(outputs["probabilities"]), -1).max(axis=1)
    return columns


def _names(manifest, role: str, width: int) -> list[str]:
    if role == "probabilities":
        classes = list(manifest.classes) if manifest.classes is not None and len(manifest.classes) == width else range(width)
        return [f"probability_{c}" for c in classes]
    base = {"distances": "distance"}.get(role, role)
    return [base] if width == 1 else [f"{base}_{i}" for i in range(width)]


# ---------------------------------------------------------------- reading

class ChunkReader:
    """A data file as chunks of rows; CSV and JSON lines report how far through the file they are."""

    def __init__(self, path: Path, model, chunk_rows: int):
        self.path = path
        self.format = format_of(path, "data")
        self.chunk_rows = chunk_rows
        self.size = path.stat().st_size
        self.handle = None
        bundle = model.bundle
        self.string_columns = [c.name for c in table_columns(bundle.inputs, bundle.manifest.layout) or ()
                               if c.spec.dtype == "string"]

    def fraction(self) -> Optional[float]:
        if self.handle is None or not self.size:
            return None
        try:
            return min(1.0, self.handle.tell() / self.size)
        except (OSError, ValueError):
            return None

    def __iter__(self) -> Iterator[Chunk]:
        import pandas as pd

        first = 0
        if self.format == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.chunk_rows):
                frame = batch.to_pandas()
                yield Chunk(first, frame, text=False)
                first += len(frame)
            return
        with open(self.path, "rb") as self.handle:
            if self.format == "csv":
                sep = "\t" if self.path.suffix == ".tsv" else ","
                try:
                    for frame in pd.read_csv(self.handle, sep=sep, chunksize=self.chunk_rows,
                                             dtype={c: str for c in self.string_columns}):
                        yield Chunk(first, frame, text=True)
                        first += len(frame)
                except (ValueError, pd.errors.ParserError) as exc:
                    raise BatchError(f"{self.path} is not CSV this can read, near row {first}: {exc}") from exc
                return
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

    def _json_chunk(self, first: int, lines: list[bytes]) -> Chunk:
        import pandas as pd

        records = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise BatchError(f"{self.path}: row {first + i} is not valid JSON ({exc})") from exc
            if not isinstance(record, dict):
                raise BatchError(f"{self.path}: row {first + i} is not a JSON object; each line must be one row")
            records.append(record)
        return Chunk(first, pd.DataFrame.from_records(records), text=False)


def format_of(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BatchError(f"{what} file {path}: can't tell its format from {suffix or 'no suffix'!r}; use "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


# ---------------------------------------------------------------- writing

def _sink(out: str, table: Optional[str], model):
    if "://" in out:
        return TableSink(out, table or DEFAULT_TABLE, model)
    if table:
        raise BatchError(f"--table {table} is for a database --out (a SQLAlchemy URL such as sqlite:///preds.db), "
                         f"not the file {out}")
    return FileSink(Path(out))


class FileSink:
    """Written to .NAME.partial-PID beside the destination, renamed over it by commit()."""

    def __init__(self, path: Path):
        self.path = path
        self.format = format_of(path, "--out")
        if not path.parent.is_dir():
            raise BatchError(f"--out {path}: its directory {path.parent} does not exist")
        self.partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        for stale in path.parent.glob(f".{path.name}.partial-*"):  # left by a run that was killed
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                stale.unlink(missing_ok=True)
        self.handle = None
        self.writer = None

    def describe(self) -> str:
        return str(self.path)

    def write(self, frame) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            batch = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.partial, batch.schema)
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
        if self.writer is not None:
            self.writer.close()
        elif self.handle is not None:
            self.handle.close()
        else:  # no rows at all: still a file, with nothing in it
            self.partial.write_text("")
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        for closer in (self.writer, self.handle):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self.partial.unlink(missing_ok=True)


class RejectFile(FileSink):
    """Bad rows as they were read, with their row number, the field at fault, the code and the message."""

    def write(self, chunk: Chunk, faults: list[RowValidationError]) -> None:  # type: ignore[override]
        import pandas as pd

        rows = chunk.frame.iloc[[f.row - chunk.first_row for f in faults]].copy()
        rows = rows.drop(columns=["__row__"], errors="ignore")
        rows.insert(0, "error", [str(f) for f in faults])
        rows.insert(0, "code", [f.code for f in faults])
        rows.insert(0, "field", [f.field for f in faults])
        rows.insert(0, "row", [f.row for f in faults])
        super().write(pd.DataFrame(rows).astype(object) if self.format == "parquet" else rows)


class TableSink:
    """A database table (any SQLAlchemy URL), upserted by (key, model, version) one chunk per transaction."""

    def __init__(self, url: str, table: str, model):
        from .extras import require

        require("sqlalchemy", "db", "predict --out DATABASE_URL")
        import sqlalchemy as sa

        self.url = url
        self.name = table
        self.model = model
        try:
            self.engine = sa.create_engine(url)
        except Exception as exc:  # SQLAlchemy's own: a malformed URL, a missing driver
            raise BatchError(f"--out {_redacted(url)}: SQLAlchemy can't open it ({str(exc).splitlines()[0]})") from exc
        self.table = None

    def describe(self) -> str:
        return f"{_redacted(self.url)} table {self.name}"

    def write(self, frame) -> None:
        import sqlalchemy as sa

        manifest = self.model.bundle.manifest
        key = frame.columns[0]
        if self.table is None:
            self.table = self._table(frame, key)
        if frame.empty:
            return
        stamp = datetime.now(timezone.utc)
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
            raise BatchError(f"writing to {self.describe()} failed: {str(exc).splitlines()[0]}") from exc

    def _table(self, frame, key: str):
        import sqlalchemy as sa

        types = {"i": sa.BigInteger, "u": sa.BigInteger, "f": sa.Float, "b": sa.Boolean}
        metadata = sa.MetaData()
        columns = [sa.Column(key, types.get(frame[key].dtype.kind, sa.String), primary_key=True),
                   sa.Column("model", sa.String, primary_key=True), sa.Column("version", sa.String, primary_key=True),
                   sa.Column("predicted_at", sa.DateTime(timezone=True))]
        columns += [sa.Column(c, types.get(frame[c].dtype.kind, sa.String)) for c in frame.columns if c != key]
        table = sa.Table(self.name, metadata, *columns)
        try:
            metadata.create_all(self.engine, checkfirst=True)
            existing = {c["name"] for c in sa.inspect(self.engine).get_columns(self.name)}
        except sa.exc.SQLAlchemyError as exc:
            raise BatchError(f"can't create or read {self.describe()}: {str(exc).splitlines()[0]}") from exc
        wanted = {c.name for c in columns}
        if not wanted <= existing:
            raise BatchError(f"{self.describe()} exists without the columns {', '.join(sorted(wanted - existing))}: "
                             "choose another --table, or drop it")
        return table

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
    """A URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
