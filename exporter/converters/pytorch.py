"""PyTorch → ONNX with the current exporter, `torch.onnx.export(..., dynamo=True)` (onnxscript).

The model is first captured as a `torch.export` ExportedProgram whose first (batch) dimension is dynamic:
- a `.pt2` program is used as saved when its batch is already dynamic, else re-exported with one;
- TorchScript goes through torch's TorchScript → ExportedProgram converter, then the same;
- a pickled `nn.Module` is exported with `torch.export.export(..., dynamic_shapes=batch)`.
A model whose code fixes the batch size (`torch.flatten(x)`, `x.view(32, -1)`) is refused with the fix: the
browser client and the fallback server run any number of rows at once.

Classification or regression, read from the program's last operator and its output:
- softmax over the classes → classification, the output is the probabilities;
- log_softmax → classification, the bundle adds an Exp so it outputs probabilities;
- sigmoid on one output unit → binary classification, the bundle outputs [1 - p, p];
- otherwise, rows that sum to 1 on the sample → probabilities; one unit → regression;
- several units without a softmax are ambiguous (a classifier's logits or several regression targets):
  `--task` says which, and `--classes` implies classification. With logits, the bundle ends in a Softmax (or,
  for one logit, a Sigmoid then [1 - p, p]), so what the browser shows is probabilities and the label is their
  argmax, the same class as the logits' argmax.
The original model's outputs go through the same head, computed in torch, for the golden outputs: parity
compares the bundle with the torch model itself, not with another ONNX run. The bundle has one output,
`probabilities` or `value`; the label is the most probable of `--classes` (default 0..C-1), as the client
and the server derive it.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import ConversionError, SampleError, UnsupportedModelError, first_line as _first_line
from ..extras import require
from ..model_file import LoadedModel
from ..parity import Tolerance
from ..progress import Progress
from ..registry import Converted, refuse, register
from .onnx_file import _layout_and_table, _mark_nullable, graph_inputs, graph_outputs
from .torch_heads import add_head, apply_head, last_operator, settle_task

# float32 in torch and in onnxruntime (C++ and WASM): kernels differ in summation order and fusion (~1e-7
# relative per op, ~1e-6 after a few layers); different weights or a missing layer show up at 1e-2 and more.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)
EXAMPLE_ROWS = 16  # rows of the sample traced by torch.export (at least 2: a batch of 1 would be specialized)


refuse("torch", "tfjs",
       "--to tfjs does not take PyTorch models: ONNX is the target for PyTorch. Export with --to onnx (the default); "
       "the browser runs the model with onnxruntime-web, and the fallback server runs the same model.onnx.")


@register("torch", "onnx")
class TorchToOnnx:
    """A torch.nn.Module (.pt2, TorchScript, pickled module) → ONNX with torch.onnx.export(dynamo=True)."""

    options = ("task", "classes")

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress, task: str | None = None,
                classes: Sequence[Any] | None = None) -> Converted:
        torch = require("torch", "torch", "exporting a PyTorch model")
        require("onnxscript", "torch", "exporting a PyTorch model (torch.onnx.export needs onnxscript)")
        if task not in (None, "classification", "regression"):
            raise SampleError(f"--task {task}: choose classification or regression")
        tm = loaded.model
        names = input_names(tm)
        dtypes = input_dtypes(tm, names, sample)
        args = example_args(sample, names, dtypes)
        progress(f"capturing the model with torch.export (dynamic batch), inputs {', '.join(names)}")
        program = dynamic_batch_program(tm, args)
        last, out_shape = last_operator(program)
        with torch.no_grad():
            raw = run_original(tm, args)
        task, head = settle_task(last, out_shape, raw.detach().double().numpy(), task, classes)
        tm.settled.update(head=head, dtypes=dtypes)
        progress("converting with torch.onnx.export (dynamo=True)")
        role = "probabilities" if task == "classification" else "value"
        onnx_bytes = to_onnx(program, args, names, head, role)
        import onnx

        proto = onnx.load_model_from_string(onnx_bytes)
        inputs = graph_inputs(proto)  # refuses a fixed batch or an input type the client can't feed
        layout, table = _layout_and_table(inputs, sample)
        _mark_nullable(inputs, table, layout, ())
        described = [{**o, "role": role} for o in graph_outputs(proto).values()]
        if task == "classification":
            width = described[0]["shape"][1]
            classes = list(classes) if classes else list(range(width))
            if len(classes) != width:
                raise SampleError(f"--classes names {len(classes)} classes, but the model outputs {width} "
                                  f"{'probabilities' if head in ('none', 'exp') else 'class scores'}")
        source = {"framework": "torch", "framework_version": torch.__version__,
                  "converter": "torch.onnx.export (dynamo)",
                  "converter_version": f"torch {torch.__version__}, onnxscript {_version('onnxscript')}",
                  "estimator": model_name(tm),
                  "precision": next((d for d in dtypes.values() if d.startswith("float")), "float32")}
        return Converted(files={"model.onnx": onnx_bytes}, model_file="model.onnx", format="onnx", task=task,
                         inputs=inputs, outputs=described, layout=layout, source=source,
                         tolerance=DEFAULT_TOLERANCE, table=table, classes=classes)

    def reference(self, loaded: LoadedModel, table: Any, classes: Any = None) -> dict[str, Any]:
        torch = require("torch", "torch", "running a PyTorch model")
        tm = loaded.model
        names = input_names(tm)
        if "head" not in tm.settled:  # loaded afresh (check --model): settle it as export did, from the bundle's classes
            dtypes = input_dtypes(tm, names, table)
            args = example_args(table, names, dtypes)
            last, out_shape = last_operator(dynamic_batch_program(tm, args))
            with torch.no_grad():
                raw = run_original(tm, args).detach().double().numpy()
            task = "classification" if classes is not None else "regression"
            tm.settled.update(head=settle_task(last, out_shape, raw, task, classes)[1], dtypes=dtypes)
        args = example_args(table, names, tm.settled["dtypes"], rows=None)
        with torch.no_grad():
            out = apply_head(run_original(tm, args), tm.settled["head"])
        values = out.detach().double().numpy()
        if classes is None:
            return {"value": values.reshape(len(values), -1)}
        return {"label": np.asarray(list(classes), dtype=object)[values.argmax(axis=1)], "probabilities": values}


# ---------------------------------------------------------------- inputs

def input_names(tm: Any) -> list[str]:
    """The model's positional inputs, by name: the program's user inputs, or forward's parameters."""
    if tm.kind == "exported_program":
        return [str(n) for n in tm.model.graph_signature.user_inputs]
    if tm.kind == "torchscript":
        return [a.name for a in tm.model.forward.schema.arguments[1:]]
    parameters = inspect.signature(tm.model.forward).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in parameters):
        raise UnsupportedModelError(f"{type(tm.model).__name__}.forward takes *args, **kwargs or keyword-only "
                                    "arguments; edgeport feeds named positional tensors (forward(self, x) or "
                                    "forward(self, a, b)). Wrap the model in a module with such a forward.")
    return [p.name for p in parameters]


def input_dtypes(tm: Any, names: list[str], sample: Any) -> dict[str, str]:
    """float32/float64/int64 per input: the program's own; else integer arrays (.npy/.npz) are int64 (token ids)
    and numbers otherwise take the dtype of the model's floating-point weights (float32 by default)."""
    import torch

    if tm.kind == "exported_program":
        placeholders = {n.name: n for n in tm.model.graph.nodes if n.op == "placeholder"}
        found = {}
        for name in names:
            value = placeholders[name].meta.get("val")
            found[name] = _dtype_name(getattr(value, "dtype", torch.float32), name)
        return found
    floating = next((p.dtype for p in tm.model.parameters() if p.is_floating_point()), torch.float32)
    default = "float64" if floating == torch.float64 else "float32"
    found = {}
    for i, name in enumerate(names):
        array = sample.get(name) if isinstance(sample, dict) else sample if i == 0 else None
        integer = isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.integer)
        found[name] = "int64" if integer else default
    return found


def _dtype_name(dtype: Any, name: str) -> str:
    import torch

    known = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64", torch.int32: "int32"}
    if dtype not in known:
        raise UnsupportedModelError(f"input {name!r} is {dtype}; edgeport feeds float32, float64, int64 and int32 tensors "
                                    "(what the JS client and the OIP server encode). Export the model with one of those.")
    return known[dtype]


def example_args(table: Any, names: list[str], dtypes: dict[str, str], rows: int | None = EXAMPLE_ROWS) -> tuple:
    """Torch tensors for the model's inputs, in order, from a sample or a table (all rows when `rows` is None)."""
    import torch

    if isinstance(table, dict):
        missing = [n for n in names if n not in table]
        if missing:
            raise SampleError(f"the .npz sample has no array named {missing[0]!r}; the model's inputs are "
                              f"{', '.join(map(repr, names))} and the sample has {', '.join(map(repr, table))}")
        arrays = [np.asarray(table[n]) for n in names]
    else:
        if len(names) != 1:
            raise SampleError(f"the model takes {len(names)} inputs ({', '.join(map(repr, names))}); pass an .npz sample "
                              "with one array per input, named like forward's arguments")
        if hasattr(table, "columns"):
            text = [str(c) for c in table.columns if not np.issubdtype(table[c].dtype, np.number)]
            if text:
                raise SampleError(f"column(s) {', '.join(map(repr, text))} hold text, but a PyTorch model takes "
                                  "tensors of numbers; encode them first, or pass a .npy sample")
            table = table.to_numpy()
        arrays = [np.asarray(table)]
    tensors = []
    for name, array in zip(names, arrays):
        if not np.issubdtype(array.dtype, np.number):
            raise SampleError(f"the sample for input {name!r} is {array.dtype}, not numbers")
        if rows is not None:
            array = array[:rows]
            if len(array) == 1:  # torch.export specializes a batch of 1; two copies of the row keep it free
                array = np.concatenate([array, array])
        tensors.append(torch.from_numpy(np.ascontiguousarray(array.astype(dtypes[name]))))
    return tuple(tensors)


# ---------------------------------------------------------------- capture

def dynamic_batch_program(tm: Any, args: tuple) -> Any:
    """An ExportedProgram of the model whose inputs' first dimension is dynamic, or an error saying why not."""
    import torch

    module = tm.model
    with _quiet():
        if tm.kind == "exported_program":
            if _batch_is_dynamic(tm.model):
                return tm.model
            module = tm.model.module(check_guards=False)  # its guards pin the batch it was exported with
            args = _rows(args, _fixed_batch(tm.model))  # traced at that batch, so only a fixed one can fail
        elif tm.kind == "torchscript":
            from torch._export.converter import TS2EPConverter

            try:
                program = TS2EPConverter(tm.model, args).convert()
            except Exception as exc:
                raise ConversionError(f"torch could not convert the TorchScript model to an ExportedProgram "
                                      f"({type(exc).__name__}: {_first_line(exc)}). Export it from the Python module "
                                      "instead: torch.export.export(model, ...) and torch.export.save.") from exc
            # its retrace leaves every dimension it can dynamic (features too): export again with the batch alone
            module = program.module(check_guards=False)
        batch = torch.export.Dim("batch")
        try:
            return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args), strict=False)
        except Exception as exc:
            text = str(exc)
            if "batch" in text and ("specialized" in text or "Constraints violated" in text):
                size = args[0].shape[0]
                saved = (f" The .pt2 was exported with a fixed batch of {size}; after the fix, export it with "
                         "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}." if tm.kind == "exported_program" else "")
                raise UnsupportedModelError(
                    f"the model can't take a batch of any size: torch.export found that its code fixes the first "
                    f"(batch) dimension to the {size} rows it was traced with. The browser client and the fallback "
                    "server run any number of rows at once, so edgeport needs that dimension free. The usual cause "
                    "is flattening the batch into the features, torch.flatten(x) or x.view(N, -1): flatten from "
                    f"dim 1 instead, torch.flatten(x, 1) or x.view(x.size(0), -1), and save the model again.{saved}"
                ) from exc
            raise ConversionError(f"torch.export could not capture the model ({type(exc).__name__}: "
                                  f"{_first_line(exc)}). See https://pytorch.org/docs/stable/export.html for what it "
                                  "supports.") from exc


def _batch_is_dynamic(program: Any) -> bool:
    import torch

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val")
        shape = getattr(value, "shape", ())
        if not shape or not isinstance(shape[0], torch.SymInt):
            return False
    return True


def run_original(tm: Any, args: tuple) -> Any:
    """The original model on `args`: the program's module, the TorchScript module or the nn.Module, in eval mode."""
    import torch

    model = tm.model.module() if tm.kind == "exported_program" else tm.model
    fixed = None if tm.kind != "exported_program" or _batch_is_dynamic(tm.model) else _fixed_batch(tm.model)
    with _quiet():
        if fixed is None:
            return _single(model(*args))
        # a program saved with a fixed batch takes exactly that many rows: run it so, the last chunk padded with
        # copies of its last row (the bundle runs the same graph re-exported with a dynamic batch)
        outputs = []
        for start in range(0, len(args[0]), fixed):
            chunk = tuple(a[start:start + fixed] for a in args)
            outputs.append(_single(model(*_rows(chunk, fixed)))[:len(chunk[0])])
        return torch.cat(outputs)


def _rows(args: tuple, n: int) -> tuple:
    """The first n rows of each tensor, the last row repeated where there are fewer."""
    import torch

    short = max(0, n - len(args[0]))
    return tuple(torch.cat([a[:n], a[-1:].expand(short, *a.shape[1:])]) if short else a[:n] for a in args)


def _fixed_batch(program: Any) -> int:
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return int(placeholders[program.graph_signature.user_inputs[0]].meta["val"].shape[0])


def _single(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


# ---------------------------------------------------------------- ONNX

def to_onnx(program: Any, args: tuple, names: list[str], head: str, role: str) -> bytes:
    """torch.onnx.export of the program, then the head, with the one output named for its role."""
    import onnx
    import torch

    try:
        with _quiet():
            exported = torch.onnx.export(program, args, dynamo=True, input_names=names, optimize=True,
                                         external_data=False, verbose=False)
    except Exception as exc:
        raise ConversionError(f"torch.onnx.export could not convert the model ({type(exc).__name__}: "
                              f"{_onnx_error(exc)}). An operator without an ONNX translation needs a "
                              "custom_translation_table, or a replacement by standard layers.") from exc
    proto = exported.model_proto
    add_head(proto, head, role)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(f"the exported ONNX graph is invalid ({_first_line(exc)})") from exc
    return proto.SerializeToString()


# ---------------------------------------------------------------- helpers

def model_name(tm: Any) -> str:
    """What the manifest calls the model: the module's class where the file keeps it, and how it was saved."""
    if tm.kind == "exported_program":
        return "torch.export program (.pt2)"
    name = getattr(tm.model, "original_name", None) or type(tm.model).__name__
    return f"{name} ({'TorchScript' if tm.kind == 'torchscript' else 'pickled nn.Module'})"


@contextlib.contextmanager
def _quiet():
    """torch.export and torch.onnx print progress to stdout and warn about what edgeport doesn't use
    (torchvision ops, deprecations); the CLI's own output stays readable."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export",
                                                     "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _onnx_error(exc: BaseException) -> str:
    """The exception summary torch.onnx puts in its long message, else its first line."""
    text = str(exc)
    if "## Exception summary" in text:
        summary = text.split("## Exception summary", 1)[1].strip().splitlines()
        return (summary[0] if summary else "").strip()[:400]
    return _first_line(exc)
