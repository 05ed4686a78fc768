"""An ONNX file made elsewhere → a bundle, unchanged ("bring your own ONNX").

The bundle's model.onnx is the user's file, byte for byte. The original is
that same file run in Python onnxruntime: the golden outputs come from it, and
parity proves that onnxruntime-web (node, browser) and the fallback server agree.

Inputs come from the graph: float32, float64, int64, int32 or string, with a dynamic
batch dimension first (a fixed batch dimension is refused: the client and the
server run any number of rows at once). Layout: one input → `matrix` (a CSV
with as many numeric columns as the input is wide, or a .npy); several
`[N, 1]` inputs named like the CSV's columns → `columns`; several inputs
otherwise → `tensors` (an .npz sample, one array per input). No input accepts
a missing value unless `nullable` names it (`--nullable NAME`): an ONNX graph
has no input validation to ask, and NaN through a graph that never saw one
gives a number, not an error.

Output roles are detected where the graph says enough: a string or int64
`[N]`/`[N, 1]` output is the label; a float `[N, C]` output beside it is the
probabilities; a lone float output is probabilities when its rows sum to 1 on
the sample, a regression value otherwise. Where that is ambiguous, the flags
`--label-output`, `--probabilities-output`, `--value-output` and `--task` say
it. Sequence and map outputs (skl2onnx's ZipMap) are refused: onnxruntime-web
returns tensors only.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..decoding import NUMPY_DTYPES
from ..errors import ConversionError, SampleError, UnsupportedModelError, UnusedOptionError
from ..model_file import LoadedModel
from ..parity import Tolerance
from ..progress import Progress
from ..registry import Converted, register
from ..samples import is_string_dtype
from .onnx_roles import FLOATS, assign_roles, classes_for

# The same graph in onnxruntime (C++) and onnxruntime-web (WASM): kernels differ only in summation order and
# SIMD width, ~1e-7 relative per float32 op, ~1e-6 after a few dozen ops. 1e-5 / 1e-4 leaves headroom while a
# different model or preprocessing shows up at 1e-2 and more.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)
DTYPES = {1: "float32", 11: "float64", 7: "int64", 6: "int32", 8: "string"}  # onnx.TensorProto elem types


@register("onnx", "onnx")
class OnnxFile:
    """A user's own ONNX file, bundled as is; the original is the same file in Python onnxruntime."""

    options = ("label_output", "probabilities_output", "value_output", "task", "classes", "nullable")

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress, label_output: str | None = None,
                probabilities_output: str | None = None, value_output: str | None = None, task: str | None = None,
                classes: Sequence[Any] | None = None, nullable: Sequence[str] | None = None) -> Converted:
        import onnx

        if task not in (None, "classification", "regression"):
            raise SampleError(f"--task {task}: choose classification or regression")
        onnx_model = loaded.model
        graph = onnx_model.proto.graph
        inputs = graph_inputs(onnx_model.proto)
        layout, table = _layout_and_table(inputs, sample)
        _mark_nullable(inputs, table, layout, nullable or ())
        session = _session(onnx_model.content, loaded.path.name)
        outputs = graph_outputs(onnx_model.proto)
        progress("running the ONNX file in onnxruntime on the sample to tell its outputs apart")
        values = _run(session, feeds_from_table(inputs, table, layout))
        roles = assign_roles(outputs, values, {"label": label_output, "probabilities": probabilities_output,
                                                "value": value_output}, task)
        task = "regression" if "value" in roles.values() else "classification"
        named = bool(classes)
        classes = classes_for(onnx_model.proto, roles, values, classes, task)
        if named and "label" in roles.values():
            if "probabilities" not in roles.values():
                raise UnusedOptionError("--classes names a classifier's probability columns, and this model has no "
                                        "probabilities output: its labels are what its label output gives. Leave "
                                        "--classes out.")
            # the graph's label output holds its own labels (often 0..k-1), not the names given: the label is then
            # the most probable class, named by --classes, in every runtime (as for a model without a label output)
            roles = {name: role for name, role in roles.items() if role != "label"}
        onnx_model.roles.clear()
        onnx_model.roles.update(roles)
        described = [{**outputs[name], "role": role} for name, role in roles.items()]
        float_inputs = [i["dtype"] for i in inputs if i["dtype"] in FLOATS]
        opset = next((o.version for o in onnx_model.proto.opset_import if o.domain in ("", "ai.onnx")), None)
        source = {"framework": "onnx", "framework_version": onnx.__version__,
                  "converter": onnx_model.proto.producer_name or "unknown",
                  "converter_version": onnx_model.proto.producer_version or "unknown",
                  "estimator": f"{graph.name or 'graph'} (ONNX IR {onnx_model.proto.ir_version}, opset {opset})"}
        if float_inputs:
            source["precision"] = "float64" if "float64" in float_inputs else "float32"
        return Converted(files={"model.onnx": onnx_model.content}, model_file="model.onnx", format="onnx", task=task,
                         inputs=inputs, outputs=described, layout=layout, source=source,
                         tolerance=DEFAULT_TOLERANCE, table=table, classes=classes)

    def reference(self, loaded: LoadedModel, table: Any, classes: Any = None) -> dict[str, Any]:
        onnx_model = loaded.model
        inputs = graph_inputs(onnx_model.proto)
        layout = "tensors" if isinstance(table, dict) else "columns" if hasattr(table, "columns") else "matrix"
        session = _session(onnx_model.content, loaded.path.name)
        values = _run(session, feeds_from_table(inputs, table, layout))
        roles = onnx_model.roles or _detected_roles(onnx_model.proto, values)
        return reference_outputs(roles, values, classes)


def _detected_roles(proto: Any, values: dict[str, np.ndarray]) -> dict[str, str]:
    """Roles for a file loaded afresh (`check --model`), where export's flags aren't at hand."""
    try:
        return assign_roles(graph_outputs(proto), values, {}, None)
    except SampleError as exc:
        raise SampleError(f"{exc} `check --model` takes no such flags: check the bundle against the golden outputs "
                          "its export computed from this file (edgeport check DIR, without --model).") from exc


def reference_outputs(roles: dict[str, str], values: dict[str, np.ndarray], classes: Any) -> dict[str, Any]:
    """Outputs keyed by role; a classifier without a label output gets the most probable class."""
    out: dict[str, Any] = {}
    for name, role in roles.items():
        value = values[name]
        if role == "label":
            out["label"] = np.asarray(value).reshape(len(value))
        elif role == "probabilities":
            out["probabilities"] = np.asarray(value, dtype=np.float64)
        else:
            out["value"] = np.asarray(value, dtype=np.float64).reshape(len(value), -1)
    if "label" not in out and "probabilities" in out:
        names = list(classes) if classes else list(range(out["probabilities"].shape[1]))
        out["label"] = np.asarray(names, dtype=object)[out["probabilities"].argmax(axis=1)]
    return out


# ---------------------------------------------------------------- inputs

def graph_inputs(proto: Any) -> list[dict]:
    """Manifest input entries from the graph's inputs (initializers listed as inputs are weights, not inputs)."""
    weights = {t.name for t in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in weights:
            continue
        dtype, shape = _tensor_type(value, "input")
        if not shape:
            raise UnsupportedModelError(
                f"input {value.name!r} is a scalar: edgeport runs batches of rows, so every input needs a first "
                "(batch) dimension. Export the model with inputs shaped [batch, ...].")
        if shape[0] is not None:
            raise UnsupportedModelError(
                f"input {value.name!r} has a fixed batch dimension of {shape[0]} (shape {shape}), but the browser "
                "client and the fallback server run any number of rows at once. Export the model with a dynamic "
                "first dimension: skl2onnx initial_types with None, torch.onnx.export(..., dynamic_axes={"
                f"'{value.name}': {{0: 'batch'}}}}), tf2onnx with a None batch in the input signature.")
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    if not specs:
        raise UnsupportedModelError("the ONNX graph has no inputs; edgeport bundles models that predict from rows")
    return specs


def graph_outputs(proto: Any) -> dict[str, dict]:
    """Every graph output as a manifest entry without its role, by name; sequence and map outputs are refused."""
    described = {}
    for value in proto.graph.output:
        if not value.type.HasField("tensor_type"):
            kind = value.type.WhichOneof("value")
            raise UnsupportedModelError(
                f"output {value.name!r} is a {kind.replace('_type', '')}, not a tensor (a ZipMap turns class "
                "probabilities into a sequence of maps), and onnxruntime-web returns tensors only. Convert the model "
                "with zipmap disabled: skl2onnx.to_onnx(model, X, options={'zipmap': False}).")
        dtype, shape = _tensor_type(value, "output", refuse=False)
        described[value.name] = {"name": value.name, "dtype": dtype, "shape": shape}
    return described


def _tensor_type(value: Any, what: str, refuse: bool = True) -> tuple[str | None, list | None]:
    tensor = value.type.tensor_type
    dtype = DTYPES.get(tensor.elem_type)
    if dtype is None and refuse:
        from onnx import TensorProto

        raise UnsupportedModelError(
            f"{what} {value.name!r} is {TensorProto.DataType.Name(tensor.elem_type).lower()}; edgeport feeds float32, "
            "float64, int64, int32 and string tensors (what the JS client and the OIP server encode). Re-export the model "
            "with one of those, e.g. with a Cast inside the graph.")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim] \
        if tensor.HasField("shape") else None
    if shape is None and refuse:
        raise UnsupportedModelError(f"{what} {value.name!r} has no shape; export the model with shaped inputs "
                                    "([batch, features])")
    return dtype, shape


def _layout_and_table(inputs: list[dict], sample: Any) -> tuple[str, Any]:
    """The layout the graph's inputs call for, and the sample checked against them."""
    names = [i["name"] for i in inputs]
    if len(inputs) == 1:
        spec = inputs[0]
        if isinstance(sample, dict):
            raise SampleError(f"the ONNX model has one input ({spec['name']!r}): pass a CSV or .npy sample, not .npz")
        if hasattr(sample, "columns"):
            text = [str(c) for c in sample.columns if is_string_dtype(sample[c])]
            if len(spec["shape"]) != 2 or text:
                why = f"column(s) {', '.join(map(repr, text))} hold text" if text else \
                    f"input {spec['name']!r} takes shape {spec['shape']}"
                raise SampleError(f"a CSV sample fills one input with its numeric columns, but {why}; "
                                  "pass a .npy sample shaped like the input")
            spec["columns"] = [str(c) for c in sample.columns]
        array = np.asarray(sample.to_numpy() if hasattr(sample, "columns") else sample)
        want = spec["shape"]
        if array.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], array.shape[1:])):
            raise SampleError(f"the sample has shape {tuple(array.shape)} (columns × rows as read), but input "
                              f"{spec['name']!r} takes {_shape_text(want)}: a CSV needs {want[1] if len(want) > 1 else '?'} "
                              "numeric columns")
        if spec["dtype"] == "string" or not np.issubdtype(array.dtype, np.number):
            raise SampleError(f"input {spec['name']!r} is {spec['dtype']} and the sample is {array.dtype}; a matrix "
                              "input takes numbers")
        return "matrix", sample
    if hasattr(sample, "columns") and all(i["shape"] == [None, 1] for i in inputs):
        columns = [str(c) for c in sample.columns]
        missing = [n for n in names if n not in columns]
        extra = [c for c in columns if c not in names]
        if missing or extra:
            raise SampleError(
                f"the ONNX model's inputs are one column each ({', '.join(map(repr, names))}), and the sample's "
                f"columns must be exactly those: "
                + "; ".join(p for p in (f"missing {', '.join(map(repr, missing))}" if missing else "",
                                        f"unexpected {', '.join(map(repr, extra))}" if extra else "") if p))
        for spec in inputs:
            spec["column"] = spec["name"]
            if spec["dtype"] != "string" and is_string_dtype(sample[spec["name"]]):
                raise SampleError(f"column {spec['name']!r} holds text, but the model's input is {spec['dtype']}")
        return "columns", sample[names]
    if not isinstance(sample, dict):
        raise SampleError(f"the ONNX model has {len(inputs)} inputs ({', '.join(map(repr, names))}); pass an .npz "
                          "sample with one array per input, named like the inputs (or, when each input is [N, 1], a "
                          "CSV whose columns are named like them)")
    strings = [i["name"] for i in inputs if i["dtype"] == "string"]
    if strings:
        raise SampleError(f"input(s) {', '.join(map(repr, strings))} take strings, which an .npz sample can't carry "
                          "here; give string inputs the shape [N, 1] and pass a CSV named like the inputs")
    table = {}
    for spec in inputs:
        if spec["name"] not in sample:
            raise SampleError(f"the .npz sample has no array named {spec['name']!r}; it has {', '.join(sample)}")
        array = np.asarray(sample[spec["name"]])
        want = spec["shape"]
        if array.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], array.shape[1:])):
            raise SampleError(f"the sample for input {spec['name']!r} has shape {tuple(array.shape)}, but the model "
                              f"takes {_shape_text(want)}")
        table[spec["name"]] = array
    return "tensors", table


def _mark_nullable(inputs: list[dict], table: Any, layout: str, nullable: Sequence[str]) -> None:
    names = {i["name"]: i for i in inputs}
    unknown = [n for n in nullable if n not in names]
    if unknown:
        raise SampleError(f"--nullable {unknown[0]} names no input of the model; its inputs are "
                          f"{', '.join(map(repr, names))}")
    for spec in inputs:
        spec["nullable"] = spec["name"] in nullable
        if spec["nullable"] and spec["dtype"] in ("int64", "int32"):
            raise SampleError(f"--nullable {spec['name']}: the input is {spec['dtype']}, which has no missing value (NaN); "
                              "only float and string inputs can be nullable")
        if not spec["nullable"] and _has_missing(spec, table, layout):
            raise SampleError(f"the sample has missing values for input {spec['name']!r}, which is not nullable. If "
                              f"the model handles them (an imputer inside the graph), pass --nullable {spec['name']}; "
                              "otherwise drop those rows from the sample.")


def _has_missing(spec: dict, table: Any, layout: str) -> bool:
    import pandas as pd

    if layout == "columns":
        return bool(table[spec["name"]].isna().any())
    data = table[spec["name"]] if layout == "tensors" else table
    return bool(pd.isna(np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data)).any())


def feeds_from_table(inputs: list[dict], table: Any, layout: str) -> dict[str, np.ndarray]:
    """onnxruntime feeds from a table, by the graph's own input types (not through edgeport's row decoder, so that
    the original and the bundle are fed independently)."""
    feeds = {}
    for spec in inputs:
        if layout == "columns":
            column = table[spec["name"]]
            if spec["dtype"] == "string":
                values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                   for v in column], dtype=object)
            else:
                values = column.to_numpy(dtype=np.float64).astype(NUMPY_DTYPES[spec["dtype"]])
            feeds[spec["name"]] = values.reshape(-1, 1)
        else:
            data = table[spec["name"]] if layout == "tensors" else table
            data = data.to_numpy() if hasattr(data, "to_numpy") else data
            feeds[spec["name"]] = np.asarray(data, dtype=np.float64).astype(NUMPY_DTYPES[spec["dtype"]])
    return feeds


# ---------------------------------------------------------------- running

def _session(content: bytes, file_name: str) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail / NotImplemented / InvalidGraph
        hint = ("onnxruntime has no kernel for an op at these types; ML ops (Imputer, TreeEnsemble...) often run in "
                "float32 only, so export with float (float32) inputs. " if "Could not find an implementation" in str(exc) else "")
        raise ConversionError(f"onnxruntime can't run {file_name} ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300]}). The browser runs the same onnxruntime, so "
                              f"this model can't be bundled as is. {hint}Export it again with standard ops (ai.onnx, "
                              "ai.onnx.ml) at an opset onnxruntime supports.") from exc


def _run(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds)))
    except Exception as exc:
        raise SampleError(f"onnxruntime could not run the model on the sample ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:300]}). Check that the sample's columns and types "
                          "match the model's inputs.") from exc


def _shape_text(shape: list) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
