"""What a scikit-learn model's last step does, as a manifest `task`, and its outputs by role.

    task                          last step                                   outputs (role: what)
    classification                a classifier                                label, probabilities
    multi-output-classification   MultiOutputClassifier                       label: [n, targets], one label per target
    regression                    a regressor (one target or several)         value: [n, targets]
    anomaly-detection             IsolationForest, OneClassSVM, ...           label: 1 inlier / -1 outlier;
                                                                              score: decision_function (below 0: outlier)
    clustering                    KMeans, MiniBatchKMeans                     label: the cluster; distances: to each centre
    transformation                PCA, a scaler, any transformer              value: transform's output

skl2onnx gives a MultiOutputClassifier's probabilities as a sequence of tensors, one per target, which
onnxruntime-web and OIP v2 can't carry: that bundle has the labels only (and so no confidence).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SampleError, UnsupportedModelError
from .sklearn_steps import estimator_name, final_estimator

# skl2onnx's graph outputs, in order, named by role
GRAPH_ROLES = {
    "classification": ["label", "probabilities"],
    "multi-output-classification": ["label", None],  # None: the probabilities sequence, dropped
    "regression": ["value"],
    "anomaly-detection": ["label", "score"],
    "clustering": ["label", "distances"],
    "transformation": ["value"],
}


def task_of(model: Any) -> str:
    from sklearn.base import is_classifier, is_outlier_detector, is_regressor
    from sklearn.multioutput import MultiOutputClassifier

    last = final_estimator(model)
    if isinstance(last, MultiOutputClassifier):
        return "multi-output-classification"
    if is_classifier(model):
        return "classification"
    if is_regressor(model):
        return "regression"
    if is_outlier_detector(last) and hasattr(last, "decision_function"):
        return "anomaly-detection"
    if _estimator_type(last) == "clusterer" and hasattr(last, "predict") and hasattr(last, "transform"):
        return "clustering"
    if hasattr(last, "transform") and not hasattr(last, "predict"):
        return "transformation"
    raise UnsupportedModelError(
        f"{estimator_name(model)} ends in {type(last).__name__}, which edgeport can't give a task: it exports "
        "classifiers, regressors (one target or several), outlier detectors with decision_function "
        "(IsolationForest), clusterers with predict and transform (KMeans) and transformers (PCA, scalers). A "
        "clusterer that only labels the data it was fit on (DBSCAN, AgglomerativeClustering) has nothing to run "
        "on new rows.")


def _estimator_type(est: Any) -> str | None:
    try:
        from sklearn.utils import get_tags

        return get_tags(est).estimator_type
    except Exception:  # older scikit-learn, or an estimator without tags
        return getattr(est, "_estimator_type", None)


def reference_outputs(model: Any, table: Any, task: str) -> dict[str, Any]:
    """The original model's outputs keyed by role (`table` as the model takes it). The original failing on rows
    that fit its inputs is said as such (its outputs are the reference; there is nothing to compare without them)."""
    try:
        return _reference_outputs(model, table, task)
    except Exception as exc:
        hint = (" (scikit-learn fails this way on float64 rows for some models fit on float32 data, such as KMeans: "
                "refit it on float64)" if "Buffer dtype mismatch" in str(exc) else "")
        raise SampleError(f"{estimator_name(model)} itself fails on the sample's rows: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}{hint}. edgeport needs the original "
                          "model's outputs on them as the reference.") from exc


def _reference_outputs(model: Any, table: Any, task: str) -> dict[str, Any]:
    n = len(table)
    if task == "regression":
        return {"value": np.asarray(model.predict(table), dtype=np.float64).reshape(n, -1)}
    if task == "transformation":
        values = model.transform(table)
        values = values.toarray() if hasattr(values, "toarray") else values
        return {"value": np.asarray(values, dtype=np.float64).reshape(n, -1)}
    if task == "anomaly-detection":
        return {"label": np.asarray(model.predict(table)),
                "score": np.asarray(model.decision_function(table), dtype=np.float64).reshape(n, 1)}
    if task == "clustering":
        return {"label": np.asarray(model.predict(table)),
                "distances": np.asarray(model.transform(table), dtype=np.float64)}
    outputs = {"label": np.asarray(model.predict(table))}
    if task == "classification" and hasattr(model, "predict_proba"):
        outputs["probabilities"] = np.asarray(model.predict_proba(table), dtype=np.float64)
    return outputs


def name_outputs(onx: Any, task: str, has_proba: bool, widths: dict[str, int]) -> list[dict]:
    """Name the graph's outputs by role, drop those without a reference, and describe them; `widths` gives the
    second dimension of each role as the reference has it (skl2onnx declares [None, 1] for several targets)."""
    from onnx import TensorProto

    graph = onx.graph
    roles = GRAPH_ROLES[task]
    renames = {out.name: role for out, role in zip(graph.output, roles) if role}
    for node in graph.node:  # the label can be computed from the scores: rename where they are read too
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    keep = [out for out in graph.output if out.name in renames]
    if task == "classification" and not has_proba:
        keep = [out for out in keep if renames[out.name] != "probabilities"]  # decision scores: no reference
    for out in keep:
        out.name = renames[out.name]
    del graph.output[:]
    graph.output.extend(keep)
    described = []
    for out in graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name in widths and len(dims) == 2:
            dims[1].ClearField("dim_param")
            dims[1].dim_value = widths[out.name]
        dtype = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.INT64: "int64",
                 TensorProto.STRING: "string"}.get(out.type.tensor_type.elem_type, "float32")
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        described.append({"name": out.name, "dtype": dtype, "shape": shape, "role": out.name})
    return described
