"""The `server` runtime: onnxruntime on the artifact `edgeport serve` runs for this bundle."""
from __future__ import annotations

from ..bundle import Bundle
from . import RuntimeOutput
from .python_ort import run_onnx


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    return run_onnx(bundle, bundle.manifest.get("server_model_file", bundle.manifest["model_file"]), rows)
