"""The `python` runtime: onnxruntime in this process."""
from __future__ import annotations

from ..bundle import Bundle
from ..errors import RuntimeFailedError
from ..samples import feeds_from_table, table_from_rows
from . import RuntimeOutput


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    if bundle.manifest["format"] != "onnx":
        return RuntimeOutput({}, not_applicable="the python runtime runs ONNX bundles; this is a tfjs bundle "
                             "(its node and browser runtimes run it)")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
        feeds = feeds_from_table(table_from_rows(rows, bundle.inputs), bundle.inputs)
        names = [o["name"] for o in bundle.outputs]
        values = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise RuntimeFailedError(f"onnxruntime failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}") from exc
    return RuntimeOutput({o["role"]: v for o, v in zip(bundle.outputs, values)})
