"""What a PyTorch model's output is, and the head the bundle adds after it.

The model's last real operator (looked up in its torch.export program) and its output on the sample decide
classification or regression (see pytorch.py's docstring for the rules). The head is what makes the bundle's one
output what the browser shows: probabilities for a classifier, the values for a regressor. It is added twice,
from one description: as ONNX nodes at the end of the exported graph (`add_head`), and in torch on the original
model's outputs for the golden outputs (`apply_head`), so parity compares the bundle with the torch model itself.

    none            the output as it is (softmax probabilities, regression values)
    exp             log_softmax → probabilities
    softmax         logits → probabilities (--task classification or --classes)
    binary          one sigmoid unit p → [1 - p, p]
    sigmoid_binary  one logit → sigmoid → [1 - p, p]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import SampleError, UnsupportedModelError
from .onnx_roles import _sums_to_one

# operators that pass values through unchanged, looked past to find the model's last real operator
PASS_THROUGH = {"view", "reshape", "unsafe_view", "clone", "contiguous", "alias", "detach", "to_copy", "to",
                "squeeze", "flatten", "dropout", "identity"}
HEADS = ("none", "exp", "softmax", "binary", "sigmoid_binary")


def last_operator(program: Any) -> tuple[str, tuple]:
    """The name of the program's last real operator (softmax, log_softmax, sigmoid, linear...) and its output shape
    (None for the batch). Several outputs are refused."""
    import torch

    output = next(n for n in program.graph.nodes if n.op == "output")
    results = output.args[0]
    results = results if isinstance(results, (list, tuple)) else [results]
    if len(results) != 1:
        raise UnsupportedModelError(f"the model returns {len(results)} values; edgeport exports models with one "
                                    "output tensor (a classifier's scores or a regressor's values). Wrap it in a "
                                    "module whose forward returns only the prediction.")
    node = results[0]
    value = getattr(node, "meta", {}).get("val")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UnsupportedModelError(f"the model's output is {getattr(value, 'dtype', type(value).__name__)}; "
                                    "edgeport exports models whose output is a float tensor")
    shape = tuple(None if isinstance(d, torch.SymInt) else int(d) for d in value.shape)
    while getattr(node, "op", None) == "call_function" and _op_name(node) in PASS_THROUGH and node.args:
        node = node.args[0]
    name = _op_name(node) if getattr(node, "op", None) == "call_function" else ""
    if name in ("softmax", "log_softmax"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        rank = len(getattr(node.meta.get("val"), "shape", ()))
        if dim not in (-1, rank - 1):
            name = f"{name} over dim {dim}"  # not over the classes: not recognized as probabilities
    return name, shape


def _op_name(node: Any) -> str:
    """aten.softmax.int and aten._softmax.default are both "softmax"."""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0].lstrip("_")


def settle_task(last: str, shape: tuple, values: np.ndarray, task: str | None,
                classes: Sequence[Any] | None) -> tuple[str, str]:
    """(task, head): what the model is, and what the bundle adds after its output (see the module docstring)."""
    width = 1 if len(shape) == 1 else shape[1] if len(shape) == 2 else None
    if task == "regression":
        if classes:
            raise SampleError("--classes names a classifier's classes; it doesn't go with --task regression")
        return "regression", "none"
    if len(shape) > 2 or width is None:
        if task == "classification" or classes:
            raise UnsupportedModelError(f"the model's output has shape {_shape_text(shape)}; a classifier's is "
                                        "(N, classes). Export it as --task regression to bundle the values as they are.")
        return "regression", "none"
    wants_classes = task == "classification" or bool(classes)
    if last == "softmax" and width > 1:
        return "classification", "none"
    if last == "log_softmax" and width > 1:
        return "classification", "exp"
    if last == "sigmoid":
        if width == 1:
            return "classification", "binary"
        if wants_classes:
            raise UnsupportedModelError(
                f"the model ends in a sigmoid over {width} units: each is a yes/no score of its own (multi-label), not "
                "one distribution over classes, so there is no single label to show. Export it with --task regression "
                "to bundle the scores as values.")
        return "regression", "none"
    if width > 1 and _sums_to_one(values):
        return "classification", "none"
    if wants_classes:
        return "classification", "softmax" if width > 1 else "sigmoid_binary"
    if width == 1:
        return "regression", "none"
    raise SampleError(
        f"can't tell whether the model's {width} outputs are a classifier's logits or {width} regression targets: it "
        "doesn't end in a softmax and its rows don't sum to 1. Say which with --task classification (the bundle adds "
        "a softmax, so the browser shows probabilities; the label is the same class as the logits' argmax; name the "
        "classes with --classes) or --task regression.")


def apply_head(out: Any, head: str) -> Any:
    """The head the bundle's graph ends in, computed in torch on the original's output (see add_head)."""
    import torch

    if out.ndim == 1:
        out = out.unsqueeze(1)
    if head == "exp":
        return out.exp()
    if head == "softmax":
        return torch.softmax(out, dim=-1)
    if head in ("binary", "sigmoid_binary"):
        p = torch.sigmoid(out) if head == "sigmoid_binary" else out
        return torch.cat([1 - p, p], dim=1)
    return out


def add_head(proto: Any, head: str, role: str) -> None:
    """End the graph in `head` (HEADS) and name its one output `role`."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    output = graph.output[0]
    tensor = output.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    batch = dims[0] if dims else "batch"
    current = output.name
    nodes = []

    def add(op: str, inputs: list[str], **attributes: Any) -> str:
        name = f"edgeport_{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    if len(dims) == 1:
        graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "edgeport_axis_1"))
        current = add("Unsqueeze", [current, "edgeport_axis_1"])
        dims = [batch, 1]
    if head == "exp":
        current = add("Exp", [current])
    elif head == "softmax":
        current = add("Softmax", [current], axis=-1)
    elif head in ("binary", "sigmoid_binary"):
        if head == "sigmoid_binary":
            current = add("Sigmoid", [current])
        one = np.array(1, dtype=np.float64 if tensor.elem_type == TensorProto.DOUBLE else np.float32)
        graph.initializer.append(numpy_helper.from_array(one, "edgeport_one"))
        complement = add("Sub", ["edgeport_one", current])
        current = add("Concat", [complement, current], axis=1)
        dims = [batch, 2]
    if nodes:
        nodes[-1].output[0] = role
        graph.node.extend(nodes)
    else:  # rename the output where it is made
        for node in graph.node:
            node.output[:] = [role if name == current else name for name in node.output]
    graph.output.pop()
    graph.output.append(helper.make_tensor_value_info(role, tensor.elem_type, dims))


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
