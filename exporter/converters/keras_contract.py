"""A Keras model's side of the bundle contract: its inputs, its task, its reference outputs, what is exported.

- `keras_signature`: manifest inputs from the Keras inputs (dtype, shape, and `kind` for tensors) and the sample
  as the model takes it. Integer inputs (token ids) are int32 in the bundle whatever Keras declared: TF.js has
  no int64, and every path (manifest, both graphs, both decoders, OIP) must agree.
- `keras_task`: classification from the head (a softmax over k > 1 units, or one sigmoid unit: binary) unless
  --task says otherwise; `--classes` must fit, and is refused on a regressor rather than ignored.
- `keras_reference`: the Keras model's own outputs, as the bundle gives them ([1 - p, p] for a sigmoid unit).
- `serving_model`: what is exported, the model or a thin wrapper that takes the bundle's dtypes and gives
  the bundle's probabilities.

TensorFlow and Keras are imported inside the functions, never at module import.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import SampleError, UnsupportedModelError, UnusedOptionError
# Keras input dtypes and what the bundle declares for them. Integers are int32 on every path: TF.js has no int64.
INTEGER_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"})
FLOAT32_DTYPES = frozenset({"float16", "bfloat16", "float32"})
# rank (batch included) -> the input's manifest `kind`: [batch, steps, features] and [batch, height, width, channels]
SHAPE_KINDS = {3: "sequence", 4: "image"}


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
    head = head_activation(model)
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


def head_activation(model: Any) -> str:
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


def require_probabilities(model: Any, table: Any) -> None:
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
