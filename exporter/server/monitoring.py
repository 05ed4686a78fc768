"""Live drift per served model version: the server's own traffic and browsers' telemetry against training.

A Monitor per (model, version) holds the training Profile (drift.py) and two live ones, one per source:

- `server`: each answered infer request hands its decoded feeds and its probabilities to Monitors.record, on
  the event loop. That is an append to a bounded queue and nothing else (a full queue drops the request and
  counts the drop); a background thread decodes them into columns and folds them into the live Profile with
  pandas, off the hot path. A read (the drift endpoint) first waits for the queue to be folded.
- `browser`: POST .../telemetry reports (TelemetryReport, below), validated in full before anything counts.

Window: the live profiles hold everything since the server started, or since the last
DELETE /v2/models/NAME[/versions/V]/drift (a reset): a scraper or a person decides when a new period starts,
and a restart starts one too.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..drift import CONFIDENCE, CONFIDENCE_EDGES, DEFAULT_THRESHOLD, DriftReport, Profile, compare
from ..errors import SampleError

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
    """One model version's training profile and its live profiles, one per source. Not locked: Monitors is."""

    def __init__(self, model: Any):
        self.name, self.version = model.name, model.version
        self.training = Profile.training(model.bundle)
        self.classes = tuple(str(c) for c in (model.bundle.classes or ()))
        self.reset()

    def reset(self) -> None:
        self.live = {source: self.training.empty() for source in SOURCES}
        self.rows = dict.fromkeys(SOURCES, 0)

    def report(self, threshold: float) -> DriftReport:
        merged = self.live["server"].merge(self.live["browser"])
        return compare(self.training, merged, threshold=threshold, model=self.name, version=self.version,
                       rows=sum(self.rows.values()))


class Monitors:
    """Every served version's Monitor (made on first use, off the event loop), the queue of server traffic and
    the thread that folds it; `psi` holds the latest PSI per (model, version, feature) for /metrics."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, queue_size: int = QUEUE_SIZE):
        self.threshold = threshold
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
            monitor = self._monitors[key] = Monitor(model)
        return monitor

    def drift(self, model: Any) -> dict:
        """The drift report of a model version (after folding what is queued), with each source's rows."""
        self._queue.join()
        with self._lock:
            monitor = self._monitor(model)
            report = monitor.report(self.threshold)
            self._publish(monitor, report)
            return {**report.to_dict(), "sources": dict(monitor.rows), "dropped": self.dropped,
                    "window": "since the server started or the last DELETE of this endpoint"}

    def reset(self, model: Any) -> None:
        self._queue.join()
        with self._lock:
            monitor = self._monitor(model)
            monitor.reset()
            self._publish(monitor, monitor.report(self.threshold))

    def add_sketch(self, model: Any, sketch: Optional[dict]) -> None:
        """Count a browser's sketch, all or nothing: a SampleError names the field and counts nothing."""
        with self._lock:
            monitor = self._monitor(model)
            if sketch is None:
                return
            monitor.live["browser"].add_sketch(sketch)
            monitor.rows["browser"] += sketch_rows(sketch)
            self._publish(monitor, monitor.report(self.threshold))

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
                monitor.live["server"].add_table(frame)
                if confidences:
                    monitor.live["server"].add_confidence(np.concatenate(confidences))
                monitor.rows["server"] += rows
                self._publish(monitor, monitor.report(self.threshold))

    def _publish(self, monitor: Monitor, report: DriftReport) -> None:
        psi = {k: v for k, v in self.psi.items() if k[:2] != (monitor.name, monitor.version)}
        for feature in (*report.features, report.confidence):
            if feature is not None and feature.psi is not None:
                psi[monitor.name, monitor.version, feature.name] = feature.psi
        rows = dict(self.rows)
        for source, count in monitor.rows.items():
            rows[monitor.name, monitor.version, source] = count
        confidence = dict(self.confidence)
        for source, live in monitor.live.items():
            if live.confidence is not None:
                confidence[monitor.name, monitor.version, source] = [int(c) for c in live.confidence.counts[:-1]]
        self.psi, self.rows, self.confidence = psi, rows, confidence


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
    layout = bundle.manifest.layout
    columns: dict[str, np.ndarray] = {}
    for spec in bundle.inputs:
        values = feeds.get(spec.name)
        if values is None:
            continue
        if values.dtype == np.float32:
            values = values.astype(str).astype(np.float64)
        if layout == "columns" and spec.column is not None:
            columns[spec.column] = values.reshape(values.shape[0], -1)[:, 0]
        elif layout == "matrix" and spec.columns:
            matrix = values.reshape(values.shape[0], -1)
            for i, column in enumerate(spec.columns[:matrix.shape[1]]):
                columns[column] = matrix[:, i]
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
