"""Runtimes that run a bundle on rows and hand back outputs keyed by role.

    python   onnxruntime in this process, on the bundle's ONNX model (not applicable to tfjs bundles)
    server   the fallback server's app itself, in this process: real OIP v2 requests through its decoder,
             onnxruntime on the artifact it serves (model.onnx, also in tfjs bundles)
    node     the JS client (web_demo/client/edgeport.js) under Node.js
    browser  the same JS client in headless Chromium, driven by playwright

Each runtime is a function `run(bundle, rows) -> RuntimeOutput`. It raises
RuntimeUnavailableError when it can't start at all (exit 1 with an install
hint) and RuntimeFailedError when it started but gave no outputs (recorded in
the parity report). The comparison never knows which runtime produced what.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bundle import Bundle
from ..errors import EdgeportError


@dataclass(frozen=True)
class RuntimeOutput:
    outputs: dict[str, Any]  # role -> array-like
    diagnostics: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    not_applicable: str | None = None  # why this runtime does not apply to the bundle


RUNTIMES = {
    "python": "edgeport.runtimes.python_ort",
    "server": "edgeport.runtimes.server",
    "node": "edgeport.runtimes.node",
    "browser": "edgeport.runtimes.browser",
}


def get_runtime(name: str) -> Callable[[Bundle, list], RuntimeOutput]:
    if name not in RUNTIMES:
        raise EdgeportError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    return importlib.import_module(RUNTIMES[name]).run


def with_labels(outputs: dict[str, Any], classes: list | None) -> dict[str, Any]:
    """Add the label a model without a label output means: the most probable class (as the JS client does)."""
    import numpy as np

    if "label" in outputs or "probabilities" not in outputs or not classes:
        return outputs
    index = np.asarray(outputs["probabilities"]).argmax(axis=1)
    return {**outputs, "label": np.asarray(classes, dtype=object)[index]}
