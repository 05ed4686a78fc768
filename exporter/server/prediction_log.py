"""The prediction log (off by default): one JSON line per row the server predicted, PII columns dropped or hashed.

The request's path only appends references (the model, its feeds, its outputs, a timestamp and the latency) to a
bounded queue, as drift does (monitoring.py): a full queue drops and counts them, so the log never slows or blocks
a prediction. A writer thread turns them into lines: {timestamp, model, version, latency_ms, confidence (a
classifier's top probability), outputs {role: value}, inputs {column: value}}. A column named as PII (the manifest's
`pii`, or the server's) is left out (`drop`) or replaced by hmac-sha256(salt, value)[:16] (`hash`). The file rotates
by size (FILE -> FILE.1 ... FILE.{backups}), before a line that would pass max_bytes, so every file holds whole
lines. A write that fails (a full disk, an unwritable directory) stops the log with one error in the server log;
predictions go on.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from ..errors import OptionError

DEFAULT_MAX_BYTES = 100 * 2**20
DEFAULT_BACKUPS = 3
QUEUE_SIZE = 10_000  # requests, not rows: a burst past it is dropped and counted, never waited for
PII_MODES = ("hash", "drop")
SALT_ENV = "EDGEPORT_PII_SALT"

logger = logging.getLogger("uvicorn.error")


class PredictionLog:
    """Writes predictions to `path` as JSON lines, from a thread of its own. `record` is the only hot-path call."""

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS,
                 pii: Iterable[str] = (), pii_mode: str = "drop", salt: Optional[str] = None,
                 queue_size: int = QUEUE_SIZE):
        if pii_mode not in PII_MODES:
            raise OptionError(f"--pii-mode must be one of {', '.join(PII_MODES)}; got {pii_mode!r}")
        if max_bytes < 1 or backups < 0:
            raise OptionError(f"--prediction-log-max-mb must be above 0; got {max_bytes} bytes")
        salt = salt if salt is not None else os.environ.get(SALT_ENV) or None
        if pii_mode == "hash" and not salt:
            raise OptionError(f"hashing PII columns needs a secret salt: pass --pii-salt SALT (or set {SALT_ENV}), "
                              "or --pii-mode drop; an unsalted hash of a few values is easily reversed")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.pii = frozenset(pii)
        self.pii_mode = pii_mode
        self._salt = salt.encode() if salt else None
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue(queue_size)
        self._thread: Optional[threading.Thread] = None
        self._file = None
        self._size = 0
        self.dropped = 0  # requests
        self.written = 0  # lines
        self.stopped: Optional[str] = None  # why the log stopped, once it has

    # ------------------------------------------------ the hot path: on the event loop

    def record(self, model: Any, feeds: dict, outputs: dict, latency_ms: float) -> None:
        """Queue one answered request (references only: nothing is copied or formatted here)."""
        if self.stopped is not None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name="edgeport-prediction-log", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((time.time(), model, feeds, outputs, latency_ms))
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------ off the event loop

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what is queued is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> None:
        """At shutdown: write what the last requests queued (for at most `timeout` seconds), then close the file.
        Lines still queued past the timeout are counted in the one log line this writes."""
        self.flush(timeout)
        left = self._queue.unfinished_tasks
        if self.stopped is None:
            self.stopped = "closed"
        if left:
            logger.error("prediction log %s: %d requests' lines were not written within %gs of shutdown",
                         self.path, left, timeout)
        self._close_file()

    def _write_forever(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if self.stopped is None:
                    self._write(self.lines(*item))
            except OSError as exc:
                self._stop(exc)
            except Exception as exc:  # a fault here must never stop the thread, nor a request
                logger.error("prediction log: a request's lines could not be written: %s: %s", type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    def _stop(self, exc: OSError) -> None:
        self.stopped = f"{type(exc).__name__}: {exc}"
        logger.error("prediction log %s stopped: %s; predictions go on without it (%d lines written)",
                     self.path, self.stopped, self.written)
        self._close_file()

    def _close_file(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except OSError:
            pass
        self._file = None

    def _write(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)
                self._size = self._file.tell() if self.path.is_file() else 0
            if self._size and self._size + len(line) > self.max_bytes and self.path.is_file():
                self._rotate()
            written = self._file.write(line)  # unbuffered: one write() per line, so a line is whole or absent
            if written != len(line):
                raise OSError(28, "short write (is the disk full?)")
            self._size += len(line)
            self.written += 1

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        for n in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n}"))
        if not self.backups:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0

    def lines(self, timestamp: float, model: Any, feeds: dict, outputs: dict, latency_ms: float) -> list[bytes]:
        """The JSON lines of one answered request, one per row, PII redacted."""
        from .monitoring import feed_columns

        rows = next(iter(feeds.values())).shape[0]
        columns = feed_columns(model.bundle, feeds) or {
            name: np.asarray(v).reshape(rows, -1) for name, v in feeds.items()}
        pii = self.pii | frozenset(getattr(model.bundle.manifest, "pii", None) or ())
        outputs = {role: np.asarray(v) for role, v in outputs.items() if v is not None}
        probabilities = outputs.get("probabilities")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp * 1000) % 1000:03d}Z"
        lines = []
        for i in range(rows):
            inputs = {}
            for column, values in columns.items():
                if column in pii:
                    if self.pii_mode == "drop":
                        continue
                    inputs[column] = self._hash(_plain(values[i]))
                else:
                    inputs[column] = _plain(values[i])
            record = {"timestamp": stamp, "model": model.name, "version": model.version,
                      "latency_ms": round(latency_ms, 3)}
            if probabilities is not None and probabilities.ndim >= 1 and len(probabilities) == rows:
                record["confidence"] = _plain(np.max(probabilities[i]))
            record["outputs"] = {role: _plain(v[i]) for role, v in outputs.items() if v.ndim and len(v) == rows}
            record["inputs"] = inputs
            lines.append((json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode())
        return lines

    def _hash(self, value: Any) -> Optional[str]:
        if value is None:
            return None
        return hmac.new(self._salt, str(value).encode(), hashlib.sha256).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A JSON value for a numpy scalar or array: bytes decoded, NaN as null."""
    if isinstance(value, np.ndarray):
        if value.size == 1:
            return _plain(value.reshape(-1)[0])
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["PredictionLog", "PII_MODES", "SALT_ENV", "DEFAULT_MAX_BYTES"]
