"""Prometheus metrics for the fallback server, in a registry of the app's own.

A request touches six to eight series; each model's labelled children are looked up once and kept (in
ModelSeries), since prometheus_client's labels() costs more than the increment it leads to."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .http import error

# the reasons the JS client gives (FallbackReason in web_demo/client/edgeport.d.ts); any other is refused with a 400
FALLBACK_REASONS = ("no-wasm", "load-error", "integrity", "inference-error", "timeout", "low-confidence")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgeport_infer_requests", "Infer requests by outcome", ["model", "version", "outcome"],
                                registry=self.registry)
        self.rows = Counter("edgeport_infer_rows", "Rows inferred", ["model", "version"], registry=self.registry)
        self.latency = Histogram("edgeport_infer_seconds", "Infer request latency (validation + inference)",
                                 ["model", "version"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
        # what the model says, for drift: a falling confidence or a shifting class mix is the early warning
        self.confidence = Histogram("edgeport_prediction_confidence", "Top class probability per row", ["model", "version"],
                                    registry=self.registry, buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        self.predicted = Counter("edgeport_predicted_class", "Rows by predicted class", ["model", "version", "label"],
                                 registry=self.registry)
        # why browsers asked the server: the JS client sends parameters.fallback_reason
        self.fallbacks = Counter("edgeport_fallback_requests", "Requests that browsers sent as a fallback, by reason",
                                 ["model", "reason"], registry=self.registry)
        self._series: dict[tuple[str, str], ModelSeries] = {}

    def series(self, model: Any) -> "ModelSeries":
        key = (model.name, model.version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = ModelSeries(self, model)
        return found

    def refused(self, model: Any, message: str, status: int = 400):
        self.series(model).outcome("bad_request").inc()
        return error(status, message)

    def observe(self, model: Any, outcome: str, started: float, rows: int, payload: Any) -> None:
        series = self.series(model)
        series.outcome(outcome).inc()
        series.latency.observe(time.perf_counter() - started)
        if rows:
            series.rows.inc(rows)
        # a validated request (oip.RequestParameters): the reason, if any, is one of FALLBACK_REASONS
        reason = payload.parameters.fallback_reason if payload.parameters is not None else None
        if reason is not None:
            self.fallbacks.labels(model.name, reason).inc()

    def predictions(self, model: Any, outputs: dict[str, Any]) -> None:
        """Record per-row confidence and predicted class from the outputs of a classifier."""
        probabilities = outputs.get("probabilities")
        if probabilities is None:
            return
        series = self.series(model)
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
        if len(probabilities) <= 8:  # a few rows: plain Python beats numpy's per-call cost
            for row in probabilities.tolist():
                top = max(row)
                series.confidence.observe(top)
                series.predicted(row.index(top)).inc()
            return
        for top, index in zip(probabilities.max(axis=1).tolist(), probabilities.argmax(axis=1).tolist()):
            series.confidence.observe(top)
            series.predicted(index).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelSeries:
    """One model version's labelled series, looked up once."""

    def __init__(self, metrics: Metrics, model: Any):
        labels = (model.name, model.version)
        self._metrics, self._labels = metrics, labels
        self.latency = metrics.latency.labels(*labels)
        self.rows = metrics.rows.labels(*labels)
        self.confidence = metrics.confidence.labels(*labels)
        self._outcomes: dict[str, Any] = {}
        self._classes = list(model.bundle.classes or ())
        self._predicted: dict[int, Any] = {}

    def outcome(self, outcome: str):
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._metrics.requests.labels(*self._labels, outcome)
        return child

    def predicted(self, index: int):
        child = self._predicted.get(index)
        if child is None:
            label = str(self._classes[index]) if index < len(self._classes) else str(index)
            child = self._predicted[index] = self._metrics.predicted.labels(*self._labels, label)
        return child
