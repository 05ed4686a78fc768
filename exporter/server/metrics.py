"""Prometheus metrics for the fallback server, in a registry of the app's own."""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from .http import error

FALLBACK_REASONS = {"no-wasm", "load-error", "integrity", "inference-error", "timeout", "low-confidence"}


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
        # why browsers asked the server: the JS client sends parameters.fallback_reason
        self.fallbacks = Counter("edgeport_fallback_requests", "Requests that browsers sent as a fallback, by reason",
                                 ["model", "reason"], registry=self.registry)

    def refused(self, model: Any, message: str):
        self.requests.labels(model.name, model.version, "bad_request").inc()
        return error(400, message)

    def observe(self, model: Any, outcome: str, started: float, rows: int, payload: Any) -> None:
        self.requests.labels(model.name, model.version, outcome).inc()
        self.latency.labels(model.name, model.version).observe(time.perf_counter() - started)
        if rows:
            self.rows.labels(model.name, model.version).inc(rows)
        reason = (payload.parameters or {}).get("fallback_reason")
        if reason is not None:
            self.fallbacks.labels(model.name, reason if reason in FALLBACK_REASONS else "other").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
