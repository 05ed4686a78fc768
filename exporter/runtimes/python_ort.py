"""The `python` runtime: onnxruntime in this process, on the bundle's ONNX model."""
from __future__ import annotations

from ..bundle import Bundle
from ..errors import RuntimeFailedError
from ..samples import feeds_from_table, table_from_rows
from . import RuntimeOutput, with_labels


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    if bundle.manifest["format"] != "onnx":
        return RuntimeOutput({}, not_applicable="the python runtime runs ONNX bundles; this is a tfjs bundle "
                             "(the node and browser runtimes run it, and the server runtime its model.onnx)")
    return run_onnx(bundle, bundle.manifest["model_file"], rows)


def run_onnx(bundle: Bundle, onnx_file: str, rows: list) -> RuntimeOutput:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(bundle.path / onnx_file), providers=["CPUExecutionProvider"])
        feeds = feeds_from_table(table_from_rows(rows, bundle.inputs), bundle.inputs)
        names = [o["name"] for o in bundle.outputs]
        values = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise RuntimeFailedError(f"onnxruntime failed on {onnx_file}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:400]}") from exc
    return RuntimeOutput(with_labels({o["role"]: v for o, v in zip(bundle.outputs, values)}, bundle.classes))
