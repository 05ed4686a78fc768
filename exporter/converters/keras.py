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

What is exported is the *serving model*: the Keras model itself, or a thin
wrapper around it where the bundle's contract differs from the model's own
signature. Integer inputs (token ids into an Embedding) are int32 in the bundle
whatever Keras declared, because TF.js has no int64: the wrapper takes int32 and
casts. A binary classifier that ends in one sigmoid unit gets the probabilities
[1 - p, p], so labels, confidence and the low-confidence fallback work as for
softmax heads. RNN layers (LSTM, GRU) become a While loop, which TF.js runs only
from a graph converted with --control_flow_v2 and with executeAsync (the client
switches by itself).

TensorFlow is imported inside the functions, never at module import.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConversionError, SampleError, UnsupportedModelError, UnusedOptionError
from ..keras_loading import import_tensorflow, quiet_native_stderr
from ..loading import LoadedModel
from ..parity import Tolerance
from ..progress import Progress
from ..registry import Converted, register

# float32 in Keras, onnxruntime and TF.js alike; kernels differ in summation order (~1e-7 relative),
# a few conv/dense layers compound it to ~1e-6. Real skew (other weights, other preprocessing) is >1e-3.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)
ONNX_OPSET = 17
# "=*" quantizes every weight; a bare flag would swallow the next argument as its layer list
TFJS_QUANTIZE = {"float16": "--quantize_float16=*", "uint8": "--quantize_uint8=*"}
# Keras input dtypes and what the bundle declares for them. Integers are int32 on every path: TF.js has no int64.
INTEGER_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"})
FLOAT32_DTYPES = frozenset({"float16", "bfloat16", "float32"})
# rank (batch included) -> the input's manifest `kind`: [batch, steps, features] and [batch, height, width, channels]
SHAPE_KINDS = {3: "sequence", 4: "image"}


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
        if task == "classification" and _head(loaded.model) not in ("softmax", "sigmoid"):
            _require_probabilities(loaded.model, table)  # the user's word, checked on the sample
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

def keras_signature(model: Any, sample: Any) -> tuple[list[dict], Any]:
    """Manifest inputs from the model's Keras inputs, and the sample as the model takes it."""
    specs = []
    for tensor in model.inputs:
        shape = [None, *[None if d is None else int(d) for d in tensor.shape[1:]]]
        spec = {"name": _input_name(tensor), "dtype": _bundle_dtype(tensor), "shape": shape}
        if len(shape) in SHAPE_KINDS:  # how the demo asks for it: a grid of steps x features, or a canvas
            spec["kind"] = SHAPE_KINDS[len(shape)]
        specs.append(spec)
    if len(specs) > 1:
        if not isinstance(sample, dict):
            raise SampleError(f"the model has {len(specs)} inputs ({', '.join(s['name'] for s in specs)}); pass an .npz "
                              "sample with one array per input, named like the inputs")
        missing = [s["name"] for s in specs if s["name"] not in sample]
        if missing:
            raise SampleError(f"the .npz sample has no array named {missing[0]!r}; it has {', '.join(sample)}")
        table = {s["name"]: _check_shape(np.asarray(sample[s["name"]]), s) for s in specs}
        return specs, table
    spec = specs[0]
    if isinstance(sample, dict):
        raise SampleError("the model has one input: pass a .npy (or CSV) sample, not .npz")
    if hasattr(sample, "iloc"):
        if len(spec["shape"]) != 2:
            raise SampleError(f"a CSV sample is a 2-D table, but input {spec['name']!r} takes shape {_shape_text(spec)}; use .npy")
        if any(not np.issubdtype(t, np.number) for t in sample.dtypes):
            raise SampleError("the CSV sample has non-numeric columns; Keras models here take numbers")
        spec["columns"] = [str(c) for c in sample.columns]
        sample = sample.to_numpy()
    return specs, _check_shape(np.asarray(sample), spec)


def _bundle_dtype(tensor: Any) -> str:
    dtype = str(tensor.dtype)
    if dtype == "float64":
        return "float64"
    if dtype in FLOAT32_DTYPES:
        return "float32"
    if dtype in INTEGER_DTYPES:
        return "int32"
    hint = (" Keep string preprocessing (StringLookup, TextVectorization) outside the model and feed it the integer "
            "token ids." if dtype == "string" else "")
    raise UnsupportedModelError(f"input {_input_name(tensor)!r} takes {dtype} values; edgeport exports Keras inputs "
                                f"that take numbers: floats, or integers such as token ids (int32).{hint}")


def _check_shape(array: np.ndarray, spec: dict) -> np.ndarray:
    want = spec["shape"]
    if array.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], array.shape[1:])):
        raise SampleError(f"the sample for input {spec['name']!r} has shape {tuple(array.shape)}, but the model takes "
                          f"{_shape_text(spec)}")
    if not np.issubdtype(array.dtype, np.number):
        raise SampleError(f"the sample for input {spec['name']!r} is not numeric ({array.dtype})")
    if spec.get("columns") and len(spec["columns"]) != array.shape[1]:
        raise SampleError(f"the CSV sample has {array.shape[1]} columns, but input {spec['name']!r} takes {want[1]}")
    if spec["dtype"] == "int32":
        values = array.astype(np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < -(2**31)) | (values >= 2**31)
        if bad.any():
            raise SampleError(f"input {spec['name']!r} takes integers (int32: token ids, codes), but the sample holds "
                              f"{values[bad].flat[0]!r}; pass the integers the model is fed")
        return array.astype(np.int32)
    return array.astype(np.float32 if spec["dtype"] == "float32" else np.float64)


def _shape_text(spec: dict) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in spec["shape"]) + ")"


def _input_name(tensor: Any) -> str:
    return str(tensor.name).split(":")[0]


def keras_task(model: Any, classes: Sequence[Any] | None, task: str | None = None) -> tuple[str, list | None]:
    """Classification when the model ends in a softmax over k > 1 units, or in one sigmoid unit (binary: the
    classes are [negative, positive]); regression otherwise. `task` overrides what the head says."""
    if len(model.outputs) != 1:
        raise UnsupportedModelError(f"edgeport exports Keras models with one output; this one has {len(model.outputs)}")
    shape = tuple(model.outputs[0].shape)
    units = shape[-1] if len(shape) == 2 else None
    head = _head(model)
    if task is None:
        binary, multi = head == "sigmoid" and units == 1, head == "softmax" and units is not None and units > 1
        task = "classification" if binary or multi else "regression"
    if task == "regression":
        if classes:
            ends = f"ends in {head} over {shape[-1]} unit(s)" if head else f"has an output of shape {_dims_text(shape)}"
            raise UnusedOptionError(f"--classes names classes, but this Keras model is exported as a regressor: it "
                                    f"{ends}, neither a softmax over several classes nor one sigmoid unit. If its "
                                    "outputs are class probabilities, add --task classification; otherwise leave "
                                    "--classes out.")
        return "regression", None
    if units is None:
        raise UnsupportedModelError(f"--task classification needs an output of one probability per class, shape "
                                    f"(None, k), or one sigmoid unit, (None, 1); this model outputs {_dims_text(shape)}")
    count = 2 if units == 1 else int(units)
    classes = list(classes) if classes else list(range(count))
    if len(classes) != count:
        what = ("one sigmoid unit: a binary classifier, so name 2 classes, the negative one first"
                if units == 1 else f"{units} probabilities")
        raise SampleError(f"--classes names {len(classes)} classes, but the model outputs {what}")
    return "classification", classes


def _head(model: Any) -> str:
    """The activation the model ends in ('softmax', 'sigmoid', ...), or '' where it can't be seen. A SavedModel's
    comes from its graph (keras_loading.saved_model_head); a Keras model's from its last layer."""
    head = getattr(model, "_edgeport_head", None)
    if head is not None:
        return head
    layer = model.layers[-1] if model.layers else None
    while layer is not None and getattr(layer, "layers", None):  # a nested Sequential or Functional model
        layer = layer.layers[-1]
    if layer is None:
        return ""
    if type(layer).__name__ == "Softmax":
        return "softmax"
    return str(getattr(getattr(layer, "activation", None), "__name__", "") or "")


def _require_probabilities(model: Any, table: Any) -> None:
    """--task classification on a model whose head can't be seen: its outputs on the sample must be probabilities."""
    from ..samples import head as first_rows

    p = np.asarray(model.predict(_model_inputs(model, first_rows(table, 256)), verbose=0), dtype=np.float64)
    if p.shape[1] == 1:
        bad = p[(p < 0) | (p > 1)]
        why = f"a value of {bad.flat[0]:.4g}, outside [0, 1]" if bad.size else ""
    else:
        sums = p.sum(axis=1)
        off = np.abs(sums - 1) > 1e-3
        why = (f"a row summing to {sums[off][0]:.4g}, not 1" if off.any()
               else f"a negative value {p.min():.4g}" if p.min() < -1e-6 else "")
    if why:
        raise UnsupportedModelError(f"--task classification, but the model's outputs on the sample are not "
                                    f"probabilities ({why}). End the model in a softmax (or one sigmoid unit, for a "
                                    "binary classifier) before saving it, or export it as a regressor.")


def _dims_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def outputs_for(task: str, n_classes: int, model: Any) -> list[dict]:
    if task == "classification":
        return [{"name": "probabilities", "dtype": "float32", "shape": [None, n_classes], "role": "probabilities"}]
    shape = [None, *[None if d is None else int(d) for d in model.outputs[0].shape[1:]]]
    return [{"name": "value", "dtype": "float32", "shape": shape, "role": "value"}]


def keras_reference(model: Any, table: Any, classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """The Keras model's outputs. With `classes` (the bundle is a classifier) the probabilities, [1 - p, p] for one
    sigmoid unit, and the label: the most probable class."""
    predictions = np.asarray(model.predict(_model_inputs(model, table), verbose=0), dtype=np.float64)
    if classes is None:
        return {"value": predictions.reshape(len(predictions), -1)}
    if predictions.shape[1] == 1:
        predictions = np.concatenate([1 - predictions, predictions], axis=1)
    return {"label": np.asarray(classes, dtype=object)[predictions.argmax(axis=1)], "probabilities": predictions}


def _model_inputs(model: Any, table: Any) -> Any:
    """The table as the Keras model takes it: each input in its own dtype (int64 token ids stay int64)."""
    def cast(values: Any, tensor: Any) -> np.ndarray:
        dtype = str(tensor.dtype)
        return np.asarray(values).astype(dtype if dtype in INTEGER_DTYPES or dtype == "float64" else np.float32)

    if isinstance(table, dict):
        return [cast(table[_input_name(t)], t) for t in model.inputs]
    return cast(table, model.inputs[0])


def serving_model(model: Any, inputs: Sequence[dict], classes: Sequence[Any] | None) -> Any:
    """What is exported: the model itself, or a wrapper whose inputs take the bundle's dtypes (int32 for integer
    inputs, cast to what the model declared) and whose binary sigmoid head gives [1 - p, p]."""
    import keras

    casts = [str(t.dtype) != spec["dtype"] for t, spec in zip(model.inputs, inputs)]
    binary = classes is not None and model.outputs[0].shape[-1] == 1
    if not any(casts) and not binary:
        return model
    wrapped = [keras.Input(shape=tuple(t.shape[1:]), dtype=spec["dtype"], name=spec["name"])
               for t, spec in zip(model.inputs, inputs)]
    args = [keras.ops.cast(x, str(t.dtype)) if cast else x for x, t, cast in zip(wrapped, model.inputs, casts)]
    out = model(args[0] if len(args) == 1 else args)
    if binary:
        out = keras.ops.concatenate([keras.ops.subtract(1.0, out), out], axis=-1)
    return keras.Model(wrapped[0] if len(wrapped) == 1 else wrapped, out, name=f"{model.name}_serving")


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

