"""The `python` runtime: onnxruntime in this process, on the bundle's ONNX model, fed by the one decoder."""
from __future__ import annotations

from ..bundle import Bundle, graph_mismatch
from ..decoding import feeds_from_rows
from ..errors import BundleError, RowValidationError, RuntimeFailedError
from . import RuntimeOutput, with_labels


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    if "python" not in bundle.manifest.runtimes:
        return RuntimeOutput({}, not_applicable="the python runtime runs ONNX bundles; this is a tfjs bundle "
                             "(the node and browser runtimes run it, and the server runtime its model.onnx)")
    import onnxruntime as ort

    onnx_file = bundle.manifest.model_file
    try:
        feeds = feeds_from_rows(bundle.inputs, bundle.manifest.layout, rows)
    except RowValidationError as exc:
        raise RuntimeFailedError(f"the rows don't fit the bundle's inputs: {exc}") from exc
    try:
        session = ort.InferenceSession(str(bundle.path / onnx_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise RuntimeFailedError(f"onnxruntime cannot load {onnx_file}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:400]}") from exc
    mismatch = graph_mismatch(bundle.manifest, session, onnx_file)
    if mismatch:  # the bundle is at fault, not the runtime: no parity verdict of any kind
        raise BundleError(f"{bundle.path / 'manifest.json'} contradicts its model: {mismatch}. Re-export the bundle.")
    try:
        names = [o.name for o in bundle.outputs]
        values = session.run(names, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise RuntimeFailedError(f"onnxruntime failed on {onnx_file}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:400]}") from exc
    return RuntimeOutput(with_labels({o.role: v for o, v in zip(bundle.outputs, values)}, bundle.classes))
