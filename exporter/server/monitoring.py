"""Live drift per served model version: the server's own traffic and browsers' telemetry against training.

A Monitor per (model, version) holds the training Profile (drift.py) and two live ones, one per source:

- `server`: each answered infer request hands its decoded feeds and its probabilities to Monitors.record, on
  the event loop. That is an append to a bounded queue and nothing else (a full queue drops the request and
  counts the drop); a background thread decodes them into columns and folds them into the live Profile with
  pandas, off the hot path. A read (the drift endpoint) first waits for the queue to be folded.
- `browser`: POST .../telemetry reports (TelemetryReport, below), validated in full before anything counts.

Window: live drift is over the last `window_s` seconds (`serve --drift-window`, an hour by default), kept as up
to WINDOW_BUCKETS buckets of window_s / WINDOW_BUCKETS each: a report merges the buckets inside the window, and
an old bucket is dropped whole, so the window slides a bucket at a time. DELETE /v2/models/NAME[/versions/V]/drift
empties it (a new period starts, say after a fix). window_s None keeps everything since the start or the reset.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..drift import CONFIDENCE, CONFIDENCE_EDGES, DEFAULT_MIN_ROWS, DEFAULT_THRESHOLD, DriftReport, Profile, compare
from ..decoding import table_columns
from ..errors import SampleError

DEFAULT_WINDOW_S = 3600.0
WINDOW_BUCKETS = 60  # a window slides a bucket (a sixtieth of it) at a time
QUEUE_SIZE = 10_000  # requests waiting to be folded; past it they are dropped (and counted)
MAX_REPORT_BYTES = 64 * 1024
# any one count a report gives: more is no browser's batch, and sums of such stay far inside int64
MAX_COUNT = 10**9
SOURCES = ("server", "browser")

logger = logging.getLogger("uvicorn.error")


class ReportError(ValueError):
    """A telemetry report that doesn't fit: the message names the field; nothing of the report was counted."""


@dataclass(frozen=True)
class TelemetryReport:
    """A browser's report, checked: every count a whole number >= 0, reasons and labels known."""
    predictions: int
    served_by: dict[str, int]
    fallback_reasons: dict[str, int]
    latency_count: int
    latency_sum_ms: float
    labels: dict[str, int]
    sketch: Optional[dict]


REPORT_FIELDS = ("predictions", "served_by", "fallback_reasons", "latency_ms", "labels", "sketch")


def parse_report(data: Any, reasons: tuple[str, ...], classes: tuple[str, ...]) -> TelemetryReport:
    """Check a decoded JSON report (all of it, before anything counts); ReportError names the field at fault."""
    if not isinstance(data, dict):
        raise ReportError(f"a telemetry report must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(REPORT_FIELDS))
    if unknown:
        raise ReportError(f"field {unknown[0]}: unknown; a report has {', '.join(REPORT_FIELDS)}")
    predictions = _count(data.get("predictions", 0), "predictions")
    served_by = _counts(data.get("served_by", {}), "served_by", ("browser", "server"))
    fallbacks = _counts(data.get("fallback_reasons", {}), "fallback_reasons", reasons)
    labels = _counts(data.get("labels", {}), "labels", classes)
    latency = data.get("latency_ms", {})
    if not isinstance(latency, dict) or not set(latency) <= {"count", "sum"}:
        raise ReportError("field latency_ms: must be an object {\"count\": int, \"sum\": number}")
    latency_count = _count(latency.get("count", 0), "latency_ms.count")
    latency_sum = latency.get("sum", 0)
    if isinstance(latency_sum, bool) or not isinstance(latency_sum, (int, float)) or not math.isfinite(latency_sum) \
            or latency_sum < 0:
        raise ReportError(f"field latency_ms.sum: must be a finite number 0 or more, not {latency_sum!r}")
    sketch = data.get("sketch")
    if sketch is not None and not isinstance(sketch, dict):
        raise ReportError("field sketch: must be an object with `features` and optionally `confidence`")
    _no_huge_numbers(sketch, "sketch")  # the rest of the sketch is drift.py's to check
    return TelemetryReport(predictions, served_by, fallbacks, latency_count, float(latency_sum), labels, sketch)


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or value != int(value):
        raise ReportError(f"field {field}: must be a whole number 0 or more, not {value!r}")
    if value > MAX_COUNT:
        raise ReportError(f"field {field}: {value!r} is more than a report counts ({MAX_COUNT}); send reports more often")
    return int(value)


def _no_huge_numbers(value: Any, field: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _no_huge_numbers(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_huge_numbers(item, f"{field}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
        raise ReportError(f"field {field}: {value!r} is more than a report counts ({MAX_COUNT}); send reports more often")


def _counts(value: Any, field: str, allowed: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ReportError(f"field {field}: must be an object of counts")
    for key in value:
        if key not in allowed:
            raise ReportError(f"field {field}: {key!r} is not one of {', '.join(allowed) or '(none)'}")
    return {key: _count(count, f"{field}.{key}") for key, count in value.items()}


class Monitor:
    """One model version's training profile and its live profiles, per source, as buckets over the window (the
    module docstring). Not locked: Monitors is."""

    def __init__(self, model: Any, window_s: Optional[float] = DEFAULT_WINDOW_S):
        self.name, self.version = model.name, model.version
        self.training = Profile.training(model.bundle)
        self.classes = tuple(str(c) for c in (model.bundle.classes or ()))
        self.window_s = window_s
        self.bucket_s = window_s / WINDOW_BUCKETS if window_s else math.inf
        self.reset()

    def reset(self) -> None:
        # per source: [bucket start, Profile, rows], oldest first
        self.buckets: dict[str, deque] = {source: deque() for source in SOURCES}

    def bucket(self, source: str, now: float) -> list:
        """The bucket that counts what arrives now, [start, Profile, rows]."""
        start = 0.0 if self.window_s is None else math.floor(now / self.bucket_s) * self.bucket_s
        buckets = self.buckets[source]
        if not buckets or buckets[-1][0] != start:
            buckets.append([start, self.training.empty(), 0])
        return buckets[-1]

    def live(self, now: float) -> dict[str, tuple[Profile, int]]:
        """Each source's live profile and rows over the window ending now (buckets past it are dropped)."""
        lives = {}
        for source, buckets in self.buckets.items():
            if self.window_s is not None:
                while buckets and buckets[0][0] + self.bucket_s <= now - self.window_s:
                    buckets.popleft()
            profile, rows = self.training.empty(), 0
            for _, part, count in buckets:
                profile, rows = profile.merge(part), rows + count
            lives[source] = (profile, rows)
        return lives

    def report(self, lives: dict[str, tuple[Profile, int]], threshold: float,
               thresholds: Mapping[str, float], min_rows: int = DEFAULT_MIN_ROWS) -> DriftReport:
        merged = lives["server"][0].merge(lives["browser"][0])
        # a per-feature threshold holds for the models that have the feature
        names = {*self.training.features, *([CONFIDENCE] if self.training.confidence else [])}
        return compare(self.training, merged, threshold=threshold, model=self.name, version=self.version,
                       thresholds={k: v for k, v in thresholds.items() if k in names},
                       rows=sum(rows for _, rows in lives.values()), min_rows=min_rows)


class Monitors:
    """Every served version's Monitor (made on first use, off the event loop), the queue of server traffic and
    the thread that folds it; `psi` holds the latest PSI per (model, version, feature) for /metrics."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, queue_size: int = QUEUE_SIZE, *,
                 thresholds: Mapping[str, float] | None = None, window_s: Optional[float] = DEFAULT_WINDOW_S,
                 min_rows: int = DEFAULT_MIN_ROWS, clock: Callable[[], float] = time.monotonic):
        if window_s is not None and not 0 < window_s < math.inf:
            raise ValueError(f"window_s must be a number of seconds above 0, or None; got {window_s}")
        self.threshold, self.thresholds, self.window_s, self.clock = threshold, dict(thresholds or {}), window_s, clock
        self.min_rows = min_rows
        self._queue: "queue.Queue[tuple[Any, dict, Any]]" = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._monitors: dict[tuple[str, str], Monitor] = {}
        self.dropped = 0
        self.psi: dict[tuple[str, str, str], float] = {}  # replaced whole, so a scrape reads one consistent dict
        self.rows: dict[tuple[str, str, str], int] = {}  # (model, version, source)
        # the live confidence's counts over CONFIDENCE_EDGES' buckets, per (model, version, source)
        self.confidence: dict[tuple[str, str, str], list[int]] = {}
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------ the hot path: on the event loop

    def record(self, model: Any, feeds: dict, probabilities: Any) -> None:
        """Queue one answered request's feeds and probabilities (both left as they are: nothing is copied)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._fold_forever, name="edgeport-drift", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((model, feeds, probabilities))
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------ off the event loop

    def monitor(self, model: Any) -> Monitor:
        with self._lock:
            return self._monitor(model)

    def _monitor(self, model: Any) -> Monitor:
        key = (model.name, model.version)
        monitor = self._monitors.get(key)
        if monitor is None:
            monitor = self._monitors[key] = Monitor(model, self.window_s)
        return monitor

    def window(self) -> str:
        if self.window_s is None:
            return "since the server started or the last DELETE of this endpoint"
        return (f"the last {self.window_s:g} s (in {WINDOW_BUCKETS} buckets of {self.window_s / WINDOW_BUCKETS:g} s), "
                "or since the last DELETE of this endpoint if that is later")

    def drift(self, model: Any) -> dict:
        """The drift report of a model version (after folding what is queued), with each source's rows."""
        self._queue.join()
        with self._lock:
            monitor = self._monitor(model)
            lives = monitor.live(self.clock())
            report = self._publish(monitor, lives)
            return {**report.to_dict(), "sources": {source: rows for source, (_, rows) in lives.items()},
                    "dropped": self.dropped, "window": self.window(), "window_seconds": self.window_s}

    def reset(self, model: Any) -> None:
        self._queue.join()
        with self._lock:
            monitor = self._monitor(model)
            monitor.reset()
            self._publish(monitor, monitor.live(self.clock()))

    def refresh(self) -> None:
        """Publish every version's drift over the window ending now (for a scrape: a window slides with no
        traffic too)."""
        if self.window_s is None:
            return
        with self._lock:
            for monitor in self._monitors.values():
                self._publish(monitor, monitor.live(self.clock()))

    def add_sketch(self, model: Any, sketch: Optional[dict]) -> None:
        """Count a browser's sketch, all or nothing: a SampleError names the field and counts nothing."""
        with self._lock:
            monitor = self._monitor(model)
            if sketch is None:
                return
            now = self.clock()
            bucket = monitor.bucket("browser", now)
            bucket[1].add_sketch(sketch)  # all of it fits, or a SampleError and nothing counted
            bucket[2] += sketch_rows(sketch)
            self._publish(monitor, monitor.live(now))

    def _fold_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._fold(batch)
            except Exception as exc:  # a fault here must never stop the thread, nor a request
                logger.error("drift: folding %d requests failed: %s: %s", len(batch), type(exc).__name__, exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _fold(self, batch: list) -> None:
        import pandas as pd

        by_model: dict[tuple[str, str], list] = {}
        for item in batch:
            by_model.setdefault((item[0].name, item[0].version), []).append(item)
        for items in by_model.values():
            model = items[0][0]
            columns: dict[str, list] = {}
            confidences = []
            rows = 0
            for _, feeds, probabilities in items:
                for column, values in feed_columns(model.bundle, feeds).items():
                    columns.setdefault(column, []).append(values)
                rows += next(iter(feeds.values())).shape[0]
                if probabilities is not None:
                    probabilities = np.asarray(probabilities, dtype=np.float64)
                    confidences.append(probabilities.reshape(len(probabilities), -1).max(axis=1))
            frame = pd.DataFrame({c: np.concatenate(v) for c, v in columns.items()})
            with self._lock:
                monitor = self._monitor(model)
                now = self.clock()
                _, profile, _ = bucket = monitor.bucket("server", now)
                profile.add_table(frame)
                if confidences:
                    profile.add_confidence(np.concatenate(confidences))
                bucket[2] += rows
                self._publish(monitor, monitor.live(now))

    def _publish(self, monitor: Monitor, lives: dict[str, tuple[Profile, int]]) -> DriftReport:
        """Work out a version's report over `lives` and publish its numbers for /metrics."""
        report = monitor.report(lives, self.threshold, self.thresholds, self.min_rows)
        psi = {k: v for k, v in self.psi.items() if k[:2] != (monitor.name, monitor.version)}
        for feature in (*report.features, report.confidence):
            # only a verdict: a PSI over fewer than min_rows values (6 to 17 for one row) would fire any alert
            if feature is not None and feature.psi is not None and feature.verdict != "unknown":
                psi[monitor.name, monitor.version, feature.name] = feature.psi
        rows = dict(self.rows)
        confidence = dict(self.confidence)
        for source, (live, count) in lives.items():
            rows[monitor.name, monitor.version, source] = count
            if live.confidence is not None:
                confidence[monitor.name, monitor.version, source] = [int(c) for c in live.confidence.counts[:-1]]
        self.psi, self.rows, self.confidence = psi, rows, confidence
        return report


def sketch_rows(sketch: Mapping) -> int:
    """How many rows a (valid) sketch describes: its largest total over a feature or the confidence."""
    totals = [0]
    for entry in (sketch.get("features") or {}).values():
        counts = entry.get("counts", [])
        totals.append(sum(counts.values() if isinstance(counts, Mapping) else counts) + int(entry.get("other", 0))
                      + int(entry.get("missing", 0)))
    if CONFIDENCE in sketch:
        totals.append(sum(sketch[CONFIDENCE].get("counts", [])))
    return int(max(totals))


def feed_columns(bundle: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feature columns of a request's feeds (columns layout, or a matrix with column names); none for a
    tensors layout. FP32 values go through their shortest decimal form, so that 5.1 sent as FP32 lands in the
    bucket that training's 5.1 (a float64 edge) does, not just below it."""
    columns: dict[str, np.ndarray] = {}
    as_read: dict[str, np.ndarray] = {}
    for column in table_columns(bundle.inputs, bundle.manifest.layout) or ():
        values = feeds.get(column.spec.name)
        if values is None:
            continue
        if column.spec.name not in as_read:
            if values.dtype == np.float32:
                values = values.astype(str).astype(np.float64)
            elif column.spec.dtype == "string" and column.spec.nullable:
                # the decoder feeds a missing string as "" (decoding.py): missing, as an empty CSV cell is offline
                values = np.where(values == "", None, values)
            as_read[column.spec.name] = values.reshape(values.shape[0], -1)
        matrix = as_read[column.spec.name]
        index = column.index or 0
        if index < matrix.shape[1]:
            columns[column.name] = matrix[:, index]
    return columns


def confidence_bounds() -> tuple[float, ...]:
    """The upper bounds of the confidence buckets (CONFIDENCE_EDGES' buckets, for a Prometheus histogram)."""
    return CONFIDENCE_EDGES[1:]


__all__ = ["Monitor", "Monitors", "ReportError", "SampleError", "TelemetryReport", "parse_report", "MAX_REPORT_BYTES"]


def add_routes(app: Any, find: Any, metrics: Any, monitors: Monitors) -> None:
    """POST .../telemetry, GET and DELETE .../drift, for the default version and for /versions/{version}."""
    import anyio

    from .http import error
    from .metrics import FALLBACK_REASONS

    async def telemetry(request: Request, name: str, version: Optional[str] = None) -> Response:
        model = await anyio.to_thread.run_sync(find, name, version)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("", "application/json", "text/plain"):
            metrics.telemetry_refused(model.name, model.version)
            return error(415, f"content-type {kind!r}: a telemetry report is JSON, sent as application/json or "
                              "text/plain (navigator.sendBeacon)")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REPORT_BYTES:
            metrics.telemetry_refused(model.name, model.version)
            return error(413, f"a telemetry report is at most {MAX_REPORT_BYTES} bytes; send reports more often")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REPORT_BYTES:
                metrics.telemetry_refused(model.name, model.version)
                return error(413, f"a telemetry report is at most {MAX_REPORT_BYTES} bytes; send reports more often")
        try:
            import json

            report = parse_report(json.loads(body), FALLBACK_REASONS,
                                  tuple(str(c) for c in (model.bundle.classes or ())))
            # the sketch is checked and counted together, all or nothing, off the event loop (the first report of
            # a version builds its training profile)
            await anyio.to_thread.run_sync(monitors.add_sketch, model, report.sketch)
        except RecursionError:  # nesting deeper than json's recursion: no report is shaped like that
            metrics.telemetry_refused(model.name, model.version)
            return error(400, "field body: a telemetry report must be JSON nested a few levels deep")
        except (ValueError, ReportError, SampleError) as exc:
            metrics.telemetry_refused(model.name, model.version)
            if isinstance(exc, SampleError):
                message = str(exc) if str(exc).startswith("sketch") else f"sketch: {exc}"
                return error(400, f"field {message}")
            if isinstance(exc, ReportError):
                return error(400, str(exc))
            return error(400, f"field body: a telemetry report must be JSON: {exc}")
        metrics.telemetry(model.name, model.version, report)
        return Response(status_code=204)

    def drift(name: str, version: Optional[str] = None) -> Response:
        return JSONResponse(monitors.drift(find(name, version)))

    def reset_drift(name: str, version: Optional[str] = None) -> Response:
        monitors.reset(find(name, version))
        return Response(status_code=204)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.post(prefix + "/telemetry", status_code=204, response_class=Response)(telemetry)
        app.get(prefix + "/drift")(drift)
        app.delete(prefix + "/drift", status_code=204, response_class=Response)(reset_drift)
