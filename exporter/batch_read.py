"""Reading a batch's data file in chunks (batch.py): CSV/TSV, Parquet or JSON lines, cells as the server would take them.

CSV is read as text where the model takes text: a string input's cells, and the --id column's, are what the file
says ("NA" is a category, "00123" an id), only an empty cell missing; numeric columns keep pandas' missing words.
A model whose inputs name no columns takes JSON lines, each line a row as the server takes it.
"""
from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .decoding import table_columns
from .errors import BatchError

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
# pandas' missing-value words, kept for numeric columns only: in a string column "NA" is a category (North America)
NA_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
            "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass
class Chunk:
    first_row: int
    frame: Any  # pandas.DataFrame: the rows as read
    text: bool  # read from CSV: every cell was text


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
            frame = pd.DataFrame.from_records(records)
        except UnicodeEncodeError:  # a lone surrogate: pandas' Arrow strings refuse it; the decoder says `type`
            frame = pd.DataFrame(records, dtype=object)
        if self.id_column is not None and self.id_column in frame.columns:
            # ids as the file has them: pandas would make floats of 9007199254740993 beside a 2.5
            frame[self.id_column] = pd.Series([r.get(self.id_column) for r in records], dtype=object)
        return Chunk(first, frame, text=False)


def format_of(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BatchError(f"{what} file {path}: can't tell its format from {suffix or 'no suffix'!r}; use "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]
