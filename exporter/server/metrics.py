"""Prometheus metrics for the fallback server, in a registry of the app's own.

Requests update plain counters (every update happens on the event loop, so nothing is locked); prometheus_client
is imported, and its registry built, only when /metrics is first scraped. Its import (its exposition module
brings http.server, wsgiref and urllib.request) is a measurable part of the server's start-up, and its labels()
lookups cost more than the increments they lead to on a single-row request.
"""
from __future__ import annotations

import bisect
import time
from typing import Any

import numpy as np

from .http import error

# the reasons the JS client gives (FallbackReason in web_demo/client/edgeport.d.ts); any other is refused with a 400
FALLBACK_REASONS = ("no-wasm", "load-error", "integrity", "inference-error", "timeout", "low-confidence", "loading")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client.CONTENT_TYPE_LATEST


class Histogram:
    """Counts per bucket (not cumulative; the upper bounds are inclusive, as Prometheus's `le`) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Metrics:
    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (model, version, outcome)
        self.rows: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}
        # what the model says, for drift: a falling confidence or a shifting class mix is the early warning
        self.confidence: dict[tuple[str, str], Histogram] = {}
        self.predicted: dict[tuple[str, str, str], int] = {}  # (model, version, label)
        # why browsers asked the server: the JS client sends parameters.fallback_reason
        self.fallbacks: dict[tuple[str, str, str], int] = {}  # (model, version, reason)
        # what browsers report (telemetry): the server's own are read from the dicts above at a scrape
        self.browser_requests: dict[tuple[str, str], int] = {}  # predictions the browser made itself
        self.browser_latency: dict[tuple[str, str], list] = {}  # [count, sum in seconds]
        self.browser_predicted: dict[tuple[str, str, str], int] = {}
        self.browser_fallbacks: dict[tuple[str, str, str], int] = {}
        self.browser_refused: dict[tuple[str, str], int] = {}  # reports refused (a 4xx)
        self.monitors: Any = None  # monitoring.Monitors, for the live confidence and the drift gauges
        self._labels: dict[tuple[str, str], list[str]] = {}
        self._registry = None

    def refused(self, model: Any, message: str, status: int = 400):
        key = (model.name, model.version, "bad_request")
        self.requests[key] = self.requests.get(key, 0) + 1
        return error(status, message)

    def observe(self, model: Any, outcome: str, started: float, rows: int, payload: Any) -> None:
        elapsed = time.perf_counter() - started
        name, version = model.name, model.version
        key = (name, version, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get((name, version))
        if latency is None:
            latency = self.latency[name, version] = Histogram(LATENCY_BUCKETS)
        latency.observe(elapsed)
        if rows:
            self.rows[name, version] = self.rows.get((name, version), 0) + rows
        # a validated request (oip.RequestParameters): the reason, if any, is one of FALLBACK_REASONS
        reason = payload.parameters.fallback_reason if payload.parameters is not None else None
        if reason is not None:
            self.fallbacks[name, version, reason] = self.fallbacks.get((name, version, reason), 0) + 1

    def predictions(self, model: Any, outputs: dict[str, Any]) -> None:
        """Record per-row confidence and predicted class from the outputs of a classifier (the class from the label
        alone when a request asked for the label only)."""
        probabilities = outputs.get("probabilities")
        name, version = model.name, model.version
        if probabilities is None:
            if outputs.get("label") is not None and model.bundle.classes:
                classes = [str(c) for c in model.bundle.classes]
                for value in np.asarray(outputs["label"]).reshape(-1).tolist():
                    value = value.decode() if isinstance(value, bytes) else value
                    # a Keras-style label is an index into the classes
                    label = classes[value] if isinstance(value, int) and str(value) not in classes and \
                        0 <= value < len(classes) else str(value)
                    self.predicted[name, version, label] = self.predicted.get((name, version, label), 0) + 1
            return
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
        if len(probabilities) <= 8:  # a few rows: plain Python costs less than numpy's per-call overhead
            rows = [(top, row.index(top)) for row in probabilities.tolist() for top in (max(row),)]
        else:
            rows = zip(probabilities.max(axis=1).tolist(), probabilities.argmax(axis=1).tolist())
        confidence = self.confidence.get((name, version))
        if confidence is None:
            confidence = self.confidence[name, version] = Histogram(CONFIDENCE_BUCKETS)
        labels = self._labels.get((name, version))
        if labels is None:
            labels = self._labels[name, version] = [str(c) for c in (model.bundle.classes or ())]
        for top, index in rows:
            confidence.observe(top)
            key = (name, version, labels[index] if index < len(labels) else str(index))
            self.predicted[key] = self.predicted.get(key, 0) + 1

    def telemetry(self, name: str, version: str, report: Any) -> None:
        """Count a browser's validated report (monitoring.TelemetryReport)."""
        key = (name, version)
        self.browser_requests[key] = self.browser_requests.get(key, 0) + report.served_by.get("browser", 0)
        latency = self.browser_latency.setdefault(key, [0, 0.0])
        latency[0] += report.latency_count
        latency[1] += report.latency_sum_ms / 1000
        for label, count in report.labels.items():
            self.browser_predicted[name, version, label] = self.browser_predicted.get((name, version, label), 0) + count
        for reason, count in report.fallback_reasons.items():
            self.browser_fallbacks[name, version, reason] = self.browser_fallbacks.get((name, version, reason), 0) + count

    def telemetry_refused(self, name: str, version: str) -> None:
        self.browser_refused[name, version] = self.browser_refused.get((name, version), 0) + 1

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(_Collector(self))
        return generate_latest(self._registry)


class _Collector:
    """The counters above as Prometheus metric families, read at each scrape."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        m = self.metrics
        for name, documentation, labels, values in (
                ("edgeport_infer_requests", "Infer requests by outcome", ["model", "version", "outcome"], m.requests),
                ("edgeport_infer_rows", "Rows inferred", ["model", "version"], m.rows),
                ("edgeport_predicted_class", "Rows by predicted class", ["model", "version", "label"], m.predicted),
                ("edgeport_fallback_requests", "Requests that browsers sent as a fallback, by reason",
                 ["model", "reason"], _summed(m.fallbacks))):
            family = CounterMetricFamily(name, documentation, labels=labels)
            for key, value in sorted(dict(values).items()):
                family.add_metric(list(key), float(value))
            yield family
        yield _histogram("edgeport_infer_seconds", "Infer request latency (validation + inference)", m.latency)
        yield _histogram("edgeport_prediction_confidence", "Top class probability per row", m.confidence)
        yield from _by_source(m)


def _summed(values: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], int]:
    """(model, version, x) counts summed over versions: the families that predate version labels."""
    summed: dict[tuple[str, str], int] = {}
    for (name, _version, x), count in dict(values).items():
        summed[name, x] = summed.get((name, x), 0) + count
    return summed


def _by_source(m: Metrics):
    """The families labelled by model, version and source (server: this server's answers; browser: telemetry)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    def counter(name, documentation, labels, server, browser):
        family = CounterMetricFamily(name, documentation, labels=["model", "version", "source", *labels])
        for source, values in (("server", server), ("browser", browser)):
            for key, value in sorted(dict(values).items()):
                family.add_metric([key[0], key[1], source, *key[2:]], float(value))
        return family

    ok = {k[:2]: v for k, v in dict(m.requests).items() if k[2] == "ok"}
    errors = {k: v for k, v in dict(m.requests).items() if k[2] != "ok"}
    yield counter("edgeport_requests", "Predictions by source: infer requests this server answered (server), "
                  "predictions browsers made themselves (browser, from telemetry)", [], ok, m.browser_requests)
    yield counter("edgeport_errors", "Errors by kind: refused or failed infer requests (server), refused telemetry "
                  "reports (browser)", ["kind"], errors,
                  {(*k, "bad_report"): v for k, v in dict(m.browser_refused).items()})
    yield counter("edgeport_predictions_by_class", "Rows by predicted class and source", ["label"], m.predicted,
                  m.browser_predicted)
    yield counter("edgeport_fallback_reasons", "Fallbacks by reason: requests sent to this server (server), "
                  "reported by browsers (browser)", ["reason"], m.fallbacks, m.browser_fallbacks)
    latency = SummaryMetricFamily("edgeport_latency_seconds", "Prediction latency by source (browser: as reported)",
                                  labels=["model", "version", "source"])
    for key, histogram in sorted(dict(m.latency).items()):
        latency.add_metric([*key, "server"], sum(histogram.counts), histogram.sum)
    for key, (count, total) in sorted(dict(m.browser_latency).items()):
        latency.add_metric([*key, "browser"], count, total)
    yield latency
    if m.monitors is None:
        return
    from prometheus_client.utils import floatToGoString

    from .monitoring import confidence_bounds

    m.monitors.refresh()  # the drift window slides without traffic too
    # cumulative rows per bucket, like a histogram's, but a gauge: the buckets are the drift window's, so they fall
    # as it slides (and no sum: browsers report bucket counts)
    confidence = GaugeMetricFamily("edgeport_live_confidence_rows", "Rows in the drift window whose top class "
                                   "probability is at most le, by source", labels=["model", "version", "source", "le"])
    for key, counts in sorted(m.monitors.confidence.items()):
        cumulative = 0
        for bound, count in zip((*confidence_bounds()[:-1], float("inf")), counts):
            cumulative += count
            confidence.add_metric([*key, floatToGoString(bound)], float(cumulative))
    yield confidence
    psi = GaugeMetricFamily("edgeport_drift_psi", "PSI of live inputs (and of the confidence, feature=confidence) "
                            "against training, both sources together", labels=["model", "version", "feature"])
    for key, value in sorted(m.monitors.psi.items()):
        psi.add_metric(list(key), value)
    yield psi
    rows = GaugeMetricFamily("edgeport_drift_rows", "Live rows counted for drift, by source",
                             labels=["model", "version", "source"])
    for key, value in sorted(m.monitors.rows.items()):
        rows.add_metric(list(key), float(value))
    yield rows
    dropped = CounterMetricFamily("edgeport_drift_dropped", "Answered requests left out of live drift: the queue "
                                  "to the drift thread was full")
    dropped.add_metric([], float(m.monitors.dropped))
    yield dropped


def _histogram(name: str, documentation: str, histograms: dict[tuple[str, str], Histogram]):
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(name, documentation, labels=["model", "version"])
    for key, histogram in sorted(dict(histograms).items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))
        family.add_metric(list(key), buckets, histogram.sum)
    return family
