"""Writing a batch's predictions (batch.py): a file (CSV, Parquet, JSON lines) renamed into place when whole, the
rejects beside it, or a database table upserted by (key, model, version), a chunk per transaction.
"""
from __future__ import annotations

import errno
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .batch_read import Chunk, format_of
from .errors import BatchError, RowValidationError
from .publish import _alive

DEFAULT_TABLE = "predictions"
TABLE_COLUMNS = ("model", "version", "predicted_at")  # a database table's own columns, beside the key and outputs
SECRET_PARAMETERS = ("password", "passwd", "pwd", "secret", "token", "sslpassword")


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
        first = self.handle is None
        if first:
            self.handle = open(self.partial, "wb")
        if self.format == "csv":
            _write_csv(self.handle, frame, header=first, sep="\t" if self.path.suffix == ".tsv" else ",")
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


def _write_csv(handle, frame, *, header: bool, sep: str) -> None:
    """CSV by Arrow's writer, seven times pandas' speed on float columns (most of a run's time went to formatting
    them); pandas where Arrow can't type a column (a JSON lines id column of numbers and words)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:  # into memory first, so a column Arrow can't write leaves nothing half-written
        buffer = pa.BufferOutputStream()
        pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buffer,
                         pa_csv.WriteOptions(include_header=header, delimiter=sep))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        frame.to_csv(handle, index=False, header=header, sep=sep, encoding="utf-8")
        return
    handle.write(buffer.getvalue().to_pybytes())


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
