"""Prometheus metrics for the fallback server, in a registry of the app's own."""
from __future__ import annotations

import time
from typing import Any

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

    def refused(self, model: Any, message: str, status: int = 400):
        self.requests.labels(model.name, model.version, "bad_request").inc()
        return error(status, message)

    def observe(self, model: Any, outcome: str, started: float, rows: int, payload: Any) -> None:
        self.requests.labels(model.name, model.version, outcome).inc()
        self.latency.labels(model.name, model.version).observe(time.perf_counter() - started)
        if rows:
            self.rows.labels(model.name, model.version).inc(rows)
        # a validated request (oip.RequestParameters): the reason, if any, is one of FALLBACK_REASONS
        reason = payload.parameters.fallback_reason if payload.parameters is not None else None
        if reason is not None:
            self.fallbacks.labels(model.name, reason).inc()

    def predictions(self, model: Any, outputs: dict[str, Any]) -> None:
        """Record per-row confidence and predicted class from the outputs of a classifier."""
        import numpy as np

        probabilities = outputs.get("probabilities")
        if probabilities is None:
            return
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
        classes = model.bundle.classes or list(range(probabilities.shape[1]))
        for row in probabilities:
            self.confidence.labels(model.name, model.version).observe(float(row.max()))
            self.predicted.labels(model.name, model.version, str(classes[int(row.argmax())])).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
