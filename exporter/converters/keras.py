"""Keras 3 / TensorFlow → ONNX and → TensorFlow.js graph models.

The paths that work for Keras 3, so users never have to learn them. Both start
from model.export(dir, format="tf_saved_model"):
  onnx:  python -m tf2onnx.convert --saved-model dir
         (tf2onnx.convert.from_keras fails on Keras 3; from_function and Keras' own
         ONNX export leave a Normalization layer's statistics as dangling graph inputs)
  tfjs:  tensorflowjs_converter --input_format=tf_saved_model --output_format=tfjs_graph_model
         (the Keras-3 layers format writes a model.json that @tensorflow/tfjs 4.22 refuses)
Both converters run as subprocesses; their errors are translated into one paragraph.

A tfjs bundle also carries model.onnx for the fallback server (which runs
onnxruntime), and both artifacts are parity-checked against the Keras model:
the ONNX one in onnxruntime (`server` runtime), the tfjs one under Node.

What is exported is the serving model (keras_contract.py): the model, or a thin
wrapper where the bundle's contract differs from the model's own signature
(int32 for integer inputs, [1 - p, p] for one sigmoid unit). RNN layers (LSTM,
GRU) become a While loop, which TF.js runs only from a graph converted with
--control_flow_v2 and with executeAsync (the client switches by itself).

TensorFlow is imported inside the functions, never at module import.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConversionError, UnsupportedModelError
from ..keras_loading import import_tensorflow, quiet_native_stderr
from ..loading import LoadedModel
from ..parity import Tolerance
from ..progress import Progress
from ..registry import Converted, register
from .keras_contract import (head_activation, keras_reference, keras_signature, keras_task, outputs_for,
                             require_probabilities, serving_model)

# float32 in Keras, onnxruntime and TF.js alike; kernels differ in summation order (~1e-7 relative),
# a few conv/dense layers compound it to ~1e-6. Real skew (other weights, other preprocessing) is >1e-3.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)
ONNX_OPSET = 17
# "=*" quantizes every weight; a bare flag would swallow the next argument as its layer list
TFJS_QUANTIZE = {"float16": "--quantize_float16=*", "uint8": "--quantize_uint8=*"}


class _KerasConverter:
    """What both Keras converters share: checking the options and sample, describing, reference outputs."""

    target = ""
    quantize_modes: tuple[str, ...] = ()
    options = ("quantize", "classes", "task")

    def _prepare(self, loaded: LoadedModel, sample: Any, quantize: str | None, classes: Sequence[Any] | None,
                 task: str | None) -> tuple[list[dict], Any, str, list | None]:
        if quantize and quantize not in self.quantize_modes:
            raise UnsupportedModelError(f"--quantize {quantize} is not available for {self.target}; "
                                        f"use: {', '.join(self.quantize_modes)}")
        inputs, table = keras_signature(loaded.model, sample)
        chosen, classes = keras_task(loaded.model, classes, task)
        if task == "classification" and head_activation(loaded.model) not in ("softmax", "sigmoid"):
            require_probabilities(loaded.model, table)  # the user's word, checked on the sample
        return inputs, table, chosen, classes

    def _converted(self, loaded: LoadedModel, inputs: list[dict], table: Any, task: str, classes: list | None,
                   files: dict[str, bytes], model_file: str, fmt: str, converter: str, extra: dict) -> Converted:
        return Converted(files=files, model_file=model_file, format=fmt, task=task, inputs=inputs,
                         layout="matrix" if len(inputs) == 1 else "tensors",
                         outputs=outputs_for(task, len(classes or []), loaded.model),
                         source=source_info(loaded.model, converter, precision="float32"),
                         tolerance=DEFAULT_TOLERANCE, table=table, classes=classes, extra=extra)

    def reference(self, loaded: LoadedModel, table: Any, classes: Sequence[Any] | None = None) -> dict[str, Any]:
        return keras_reference(loaded.model, table, classes)


@register("keras", "onnx")
class KerasToOnnx(_KerasConverter):
    """Keras model → ONNX with tf2onnx (optionally int8 dynamic quantization)."""

    quantize_modes = ("int8",)

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress, quantize: str | None = None,
                classes: Sequence[Any] | None = None, task: str | None = None) -> Converted:
        inputs, table, task, classes = self._prepare(loaded, sample, quantize, classes, task)
        with tempfile.TemporaryDirectory(prefix="edgeport-onnx-") as tmp:
            saved = export_saved_model(serving_model(loaded.model, inputs, classes), Path(tmp) / "saved_model", progress)
            progress("converting with tf2onnx (--saved-model)")
            onnx_bytes = to_onnx_bytes(saved, task)
        files, extra = {"model.onnx": onnx_bytes}, {}
        if quantize:
            progress("quantizing weights to int8 (onnxruntime.quantization.quantize_dynamic)")
            files["model.onnx"] = quantize_onnx(onnx_bytes)
            extra["quantization"] = quantization_cost("int8", len(onnx_bytes), len(files["model.onnx"]))
            if len(files["model.onnx"]) >= len(onnx_bytes):  # sizes are whole files: what ships
                extra["quantization"]["note"] = ("the int8 model.onnx is larger than the float one: its weights are "
                                                 "too small to pay for the quantize/dequantize nodes int8 adds")
        return self._converted(loaded, inputs, table, task, classes, files, "model.onnx", "onnx", "tf2onnx", extra)


@register("keras", "tfjs")
class KerasToTfjs(_KerasConverter):
    """Keras model → SavedModel → TF.js graph model, plus model.onnx for the fallback server."""

    quantize_modes = tuple(TFJS_QUANTIZE)
    verify_runtimes = ("server", "node")

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress, quantize: str | None = None,
                classes: Sequence[Any] | None = None, task: str | None = None) -> Converted:
        inputs, table, task, classes = self._prepare(loaded, sample, quantize, classes, task)
        extra: dict = {"server_model_file": "model.onnx"}
        with tempfile.TemporaryDirectory(prefix="edgeport-tfjs-") as tmp:
            saved = export_saved_model(serving_model(loaded.model, inputs, classes), Path(tmp) / "saved_model", progress)
            progress("converting with tensorflowjs_converter to a graph model" + (f" ({quantize})" if quantize else ""))
            files = _tfjs_files(saved, Path(tmp) / "tfjs", quantize)
            if quantize:
                plain = _tfjs_files(saved, Path(tmp) / "tfjs-float", None)
                extra["quantization"] = quantization_cost(quantize, _weight_bytes(plain), _weight_bytes(files))
            progress("converting with tf2onnx for the fallback server")
            files["model.onnx"] = to_onnx_bytes(saved, task)
        return self._converted(loaded, inputs, table, task, classes, files, "tfjs/model.json", "tfjs-graph",
                               "tensorflowjs", extra)


# ------------------------------------------------------------------ shared pieces

def export_saved_model(model: Any, target: Path, progress: Progress) -> Path:
    """The SavedModel both converters start from: variables frozen properly, names from the Keras inputs."""
    progress("exporting a TensorFlow SavedModel (model.export)")
    try:
        with quiet_native_stderr():
            model.export(str(target), format="tf_saved_model", verbose=False)
    except Exception as exc:
        raise ConversionError(f"Keras could not export a SavedModel: {_first_line(exc)}") from exc
    return target


def to_onnx_bytes(saved: Path, task: str) -> bytes:
    """tf2onnx on the SavedModel. (from_function and Keras' own ONNX export leave a Normalization
    layer's statistics as extra graph inputs; the --saved-model path freezes them.)"""
    import onnx

    output = saved.parent / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(output),
                           "--opset", str(ONNX_OPSET)], capture_output=True, text=True, timeout=600, env=_quiet_env())
    if proc.returncode != 0 or not output.is_file():
        raise ConversionError(f"tf2onnx could not convert the model to ONNX: {_translate_tf2onnx_error(proc.stderr)}")
    proto = onnx.load(str(output))
    role = "probabilities" if task == "classification" else "value"
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [role if name == old else name for name in node.output]
    proto.graph.output[0].name = role
    return proto.SerializeToString()


def _translate_tf2onnx_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    unsupported = sorted({m.split("]")[0] for line in lines for m in line.split("Tensorflow op [")[1:]})
    if unsupported:
        return (f"ONNX has no conversion for TensorFlow op(s) {', '.join(unsupported)}. "
                "Replace the layer that uses them with standard Keras layers.")
    errors = [line for line in lines if "Error" in line or "ERROR" in line]
    return (errors or lines or ["no output"])[-1][:400]


def quantize_onnx(onnx_bytes: bytes) -> bytes:
    """int8 weights, uint8 activations quantized at run time (DynamicQuantizeLinear → MatMulInteger).

    reduce_range=True keeps the int8 weights within [-64, 64] (7 bits). On x86 CPUs without VNNI (AVX2, or
    AVX-512 without VNNI) onnxruntime runs uint8×int8 MatMulInteger with VPMADDUBSW, which adds each pair of
    products in int16 and saturates at 32767; full-range weights reach 2·255·127 = 64770 and the result is
    silently wrong (iris MLP: max abs diff 0.21 instead of 0.02, on an AVX2 EPYC). With 7-bit weights a pair
    stays within 2·255·64 = 32640, so the same bundle gives the same outputs on every CPU (VNNI or not, as
    under any runtime's int32 arithmetic). This is onnxruntime's documented remedy for the saturation; the
    lost bit costs nothing measurable here (0.024 max abs diff, as with exact 8-bit arithmetic)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for static quantization
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, reduce_range=True)
        return target.read_bytes()


def quantization_cost(mode: str, float_bytes: int, quantized_bytes: int) -> dict:
    return {"mode": mode, "float_weight_bytes": float_bytes, "quantized_weight_bytes": quantized_bytes,
            "bytes_saved": float_bytes - quantized_bytes,
            "saved_fraction": round(1 - quantized_bytes / float_bytes, 4) if float_bytes else 0.0}


def _tfjs_files(saved: Path, out: Path, quantize: str | None) -> dict[str, bytes]:
    command = [sys.executable, "-m", "tensorflowjs.converters.converter", "--input_format=tf_saved_model",
               "--output_format=tfjs_graph_model", "--signature_name=serving_default",
               # RNN layers are While loops: lowered to v1 control flow (Enter/Exit/Merge), TF.js 4.22 can't run
               # them ("Cannot compute the outputs"); kept as While ops, executeAsync runs them (no effect otherwise)
               "--control_flow_v2=True"]
    if quantize:
        command.append(TFJS_QUANTIZE[quantize])
    proc = subprocess.run([*command, str(saved), str(out)], capture_output=True, text=True, timeout=600,
                          env=_quiet_env())
    if proc.returncode != 0:
        raise ConversionError(f"tensorflowjs_converter failed: {_translate_tfjs_error(proc.stderr)}")
    return {f"tfjs/{p.relative_to(out).as_posix()}": p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _weight_bytes(files: dict[str, bytes]) -> int:
    return sum(len(content) for name, content in files.items() if name.endswith(".bin"))


def _translate_tfjs_error(stderr: str) -> str:
    import re

    found = re.findall(r"ValueError: Unsupported Ops in the model(?: before optimization)?\s*\n\s*([^\n]+)", stderr)
    if found:
        return (f"TF.js has no kernel for op(s) {found[-1].strip()}. Replace the layer that uses them, or export "
                "with --to onnx (onnxruntime-web covers more ops).")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:400]


def _quiet_env() -> dict:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def source_info(model: Any, converter: str, precision: str) -> dict:
    tf = import_tensorflow()
    import keras

    from importlib.metadata import version  # importing tensorflowjs would load TF Decision Forests and its banner

    return {"framework": "keras", "framework_version": f"{keras.__version__} (tensorflow {tf.__version__})",
            "converter": converter, "converter_version": version(converter),
            "estimator": f"{type(model).__name__}({model.name})", "precision": precision}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"

