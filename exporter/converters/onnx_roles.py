"""Which output of a user's ONNX graph is the label, the probabilities or a regression value, and the classes.

Detected where the graph and its outputs on the sample say enough (see onnx_file.py's docstring), named with
`--label-output`, `--probabilities-output`, `--value-output` and `--task` where they don't; an ambiguous
graph is refused with a message naming the flag that settles it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import SampleError

FLOATS = ("float32", "float64")
ROLE_FLAGS = {"label": "--label-output", "probabilities": "--probabilities-output", "value": "--value-output"}
# rows of a float output that sum to 1 within this are probabilities (float32 softmax sums are ~1e-7 off)
SUMS_TO_ONE = 1e-3


def assign_roles(outputs: dict[str, dict], values: dict[str, np.ndarray], named: dict[str, str | None],
                 task: str | None) -> dict[str, str]:
    """Output name -> role: the flags first, then what the graph and its outputs on the sample show."""
    roles: dict[str, str] = {}
    for role, name in named.items():
        if name is None:
            continue
        if name not in outputs:
            raise SampleError(f"{ROLE_FLAGS[role]} {name}: the model has no output named so; its outputs are "
                              f"{', '.join(map(repr, outputs))}")
        _check_role(outputs[name], role, ROLE_FLAGS[role])
        roles[name] = role
    if "value" in roles.values() and len(roles) > 1:
        raise SampleError("--value-output is a regressor's output; it doesn't go with --label-output or "
                          "--probabilities-output")
    if task == "regression" and set(roles.values()) - {"value"}:
        raise SampleError("--task regression takes a --value-output, not a label or probabilities")
    given = set(roles.values())
    free = {n: o for n, o in outputs.items() if n not in roles and o["dtype"] is not None}
    labels = [n for n, o in free.items() if _label_like(o)]
    floats = [n for n, o in free.items() if o["dtype"] in FLOATS]
    if "value" in given or task == "regression":
        if "value" not in given:
            roles[_one(floats, "value", outputs)] = "value"
    elif task == "classification" or labels or given:
        if "label" not in given:
            if len(labels) > 1:
                raise _ambiguous("label", labels, "several outputs could be the label")
            if labels:
                roles[labels[0]] = "label"
        if "probabilities" not in given:
            wide = [n for n in floats if len(outputs[n]["shape"] or ()) == 2 and (outputs[n]["shape"][1] or 2) > 1]
            if len(wide) > 1:
                raise _ambiguous("probabilities", wide, "several float outputs could be the class probabilities")
            if wide:
                roles[wide[0]] = "probabilities"
        if not roles:
            raise SampleError(f"can't tell which output of the ONNX model is the prediction among "
                              f"{', '.join(map(repr, outputs))}. Name it with --label-output NAME or "
                              "--probabilities-output NAME.")
    else:  # one float output: a classifier's probabilities if its rows sum to 1, a regressor's value otherwise
        name = _one(floats, "prediction", outputs)
        roles[name] = "probabilities" if _sums_to_one(values[name]) else "value"
    return roles


def _one(floats: list[str], what: str, outputs: dict) -> str:
    if len(floats) == 1:
        return floats[0]
    why = "it has no float output" if not floats else f"several float outputs could be the {what}"
    raise SampleError(f"can't tell which output of the ONNX model is the {what}: {why} "
                      f"({', '.join(map(repr, outputs))}). Name it with --value-output NAME (a regressor) or "
                      "--probabilities-output NAME (a classifier), or say --task regression|classification.")


def _label_like(output: dict) -> bool:
    shape = output["shape"] or []
    return output["dtype"] in ("string", "int64") and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))


def _check_role(output: dict, role: str, flag: str) -> None:
    dtype, name = output["dtype"], output["name"]
    if dtype is None:
        raise SampleError(f"{flag} {name}: its type isn't one edgeport reads (float32, float64, int64, string)")
    if role != "label" and dtype not in FLOATS:
        raise SampleError(f"{flag} {name}: the output is {dtype}, but {role} are floats")


def _sums_to_one(value: np.ndarray) -> bool:
    value = np.asarray(value, dtype=np.float64)
    return (value.ndim == 2 and value.shape[1] > 1 and bool(np.isfinite(value).all())
            and bool((value >= 0).all()) and bool(np.allclose(value.sum(axis=1), 1.0, atol=SUMS_TO_ONE)))


def _ambiguous(role: str, names: list[str], why: str) -> SampleError:
    return SampleError(f"can't tell which output of the ONNX model holds the {role}: {why} "
                       f"({', '.join(map(repr, names))}). Name it with {ROLE_FLAGS[role]} NAME.")


def classes_for(proto: Any, roles: dict[str, str], values: dict[str, np.ndarray], given: Sequence[Any] | None,
             task: str) -> list | None:
    """--classes, else the class labels a classifier node in the graph lists, else the labels seen on the sample
    when they are all of them, else 0..C-1 for a model without a label output."""
    if task == "regression":
        if given:
            raise SampleError("--classes applies to classifiers; this model's output is a regression value")
        return None
    by_role = {role: name for name, role in roles.items()}
    width = np.asarray(values[by_role["probabilities"]]).shape[1] if "probabilities" in by_role else None
    if given:
        given = list(given)
        if width is not None and len(given) != width:
            raise SampleError(f"--classes names {len(given)} classes, but the probabilities output has {width} columns")
        return given
    in_graph = _graph_class_labels(proto)
    if in_graph is not None and (width is None or len(in_graph) == width):
        return in_graph
    seen = None
    if "label" in by_role:
        seen = sorted({_plain(v) for v in np.asarray(values[by_role["label"]]).ravel()}, key=lambda v: (str(type(v)), v))
    if width is None:
        return seen
    if seen is None or seen == list(range(width)):
        return list(range(width))
    if len(seen) == width:
        return seen
    raise SampleError(f"can't tell which class each of the {width} probability columns is: the sample's labels show "
                      f"{len(seen)} ({', '.join(map(str, seen[:10]))}) and the graph doesn't list them. Pass them in "
                      "column order with --classes a,b,c.")


def _graph_class_labels(proto: Any) -> list | None:
    """The classes an ai.onnx.ml classifier node (LinearClassifier, TreeEnsembleClassifier, SVMClassifier...) lists."""
    import onnx.helper

    for node in proto.graph.node:
        if node.domain != "ai.onnx.ml":
            continue
        for attribute in node.attribute:
            if attribute.name in ("classlabels_strings", "classlabels_ints", "classlabels_int64s"):
                labels = onnx.helper.get_attribute_value(attribute)
                if len(labels):
                    return [v.decode() if isinstance(v, bytes) else int(v) for v in labels]
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value
