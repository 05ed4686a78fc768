"""XGBoost, LightGBM and CatBoost → ONNX, alone, inside scikit-learn Pipelines, or from their native files.

Their scikit-learn estimators (XGBClassifier, LGBMRegressor, CatBoostClassifier, ...) are taught to
skl2onnx the documented way, `update_registered_converter`, so a Pipeline or ColumnTransformer around
one converts through the ordinary sklearn path (`sklearn_onnx.py`): XGBoost and LightGBM with
onnxmltools' shape calculators and converters; CatBoost with CatBoost's own ONNX export
(`catboost.utils.convert_to_onnx_object`, what `save_model(format="onnx")` writes), whose one
TreeEnsemble node is copied into skl2onnx's graph with its outputs bound to the label / probabilities /
value roles. Registration happens on demand (`ensure_registered`), so neither the libraries nor
onnxmltools load until a model needs them.

Native model files (XGBoost `.json`/`.ubj`, LightGBM `.txt`, CatBoost `.cbm`) are loaded by
`boosting_loading.py` as the library's scikit-learn estimator and exported by the converters below,
which take `--classes`: a native file often knows only how many classes there are, not their names.

Precision and tolerance: the default (atol 1e-5, rtol 1e-4), never loosened. The trees run in float32
(onnxruntime has no double TreeEnsemble kernels), as in the libraries themselves: XGBoost and CatBoost turn
features into float32 and compare them with float32 thresholds. Preprocessing runs in double and is cast to
float32 just before the trees (`_trees_in_float32`), because XGBoost's thresholds are often exactly a
training value: a scaler run in float32 lands an ulp off and sends the row down the other branch (max abs diff
37 on diabetes in a scaled pipeline; 6e-5 with the cast). LightGBM keeps double thresholds, which onnxmltools
rounds to float32: a feature lying between a threshold and its rounding would take the other branch. The
test models don't hit that; a model that does fails parity on that row rather than being hidden.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from ..errors import SampleError, UnsupportedModelError
from ..extras import require
from ..loading import LoadedModel
from ..progress import Progress
from ..registry import Converted, register
from .float32_trees import trees_in_float32 as _trees_in_float32
from .sklearn_onnx import SklearnToOnnx, reference_outputs

LIBRARIES = ("xgboost", "lightgbm", "catboost")
_registered: set[str] = set()


def libraries_in(model: Any) -> list[str]:
    """The boosting libraries whose estimators appear in `model` (a Pipeline is walked)."""
    from .sklearn_onnx import _walk

    found = []
    for est in _walk(model):
        library = type(est).__module__.split(".")[0]
        if library in LIBRARIES and library not in found:
            found.append(library)
    return found


def ensure_registered(libraries: Sequence[str]) -> None:
    """Register the skl2onnx converters for these libraries' estimators (once per process)."""
    for library in libraries:
        if library in _registered:
            continue
        what = f"exporting a {library} model"
        require(library, "boosting", what)
        if library != "catboost":
            require("onnxmltools", "boosting", what)
        {"xgboost": _register_xgboost, "lightgbm": _register_lightgbm, "catboost": _register_catboost}[library]()
        _registered.add(library)


def repair_loaded(model: Any) -> None:
    """Put back what a saved CatBoost model forgets (its feature count: n_features_in_ reads 0 after joblib or .cbm),
    and refuse what has no faithful export."""
    from .sklearn_onnx import _walk

    for est in _walk(model):
        library = type(est).__module__.split(".")[0]
        if library == "catboost" and not est.n_features_in_ and est.feature_names_:
            est._n_features_in = len(est.feature_names_)
        if library == "xgboost" and _xgboost_objective(est) == "multi:softmax":
            # its predict_proba is not a probability distribution, while the ONNX graph's is: nothing to compare
            raise UnsupportedModelError(
                "this XGBoost classifier was trained with objective multi:softmax, which predicts labels only, so "
                "its probabilities can't be checked. The trees are the same under multi:softprob: load it, call "
                "model.set_params(objective='multi:softprob') and save it again.")


def _xgboost_objective(est: Any) -> str | None:
    try:
        return json.loads(est.get_booster().save_config())["learner"]["objective"]["name"]
    except Exception:  # not fitted, or not a booster-backed estimator: nothing to refuse
        return None


_CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}


def _register_xgboost() -> None:
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)
    from xgboost import XGBClassifier, XGBRegressor

    convert = _trees_in_float32(_indexed_features(convert_xgboost))
    update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                convert, options=_CLASSIFIER_OPTIONS)
    update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert)


def _indexed_features(convert: Any) -> Any:
    """onnxmltools reads each split's feature from the booster's dump as `f<index>`; a model fit on a DataFrame
    dumps column names instead ('Unable to interpret 'proline''). The graph's input is a matrix in the
    training columns' order either way, so the names are set aside while it converts."""

    def converter(scope: Any, operator: Any, container: Any) -> None:
        booster = operator.raw_operator.get_booster()
        names, types = booster.feature_names, booster.feature_types
        booster.feature_names, booster.feature_types = None, None
        try:
            convert(scope, operator, container)
        finally:
            booster.feature_names, booster.feature_types = names, types

    return converter


def _register_lightgbm() -> None:
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                _trees_in_float32(convert_lightgbm), options=_CLASSIFIER_OPTIONS)
    update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                _trees_in_float32(convert_lightgbm), options={"split": None})


def _register_catboost() -> None:
    from catboost import CatBoostClassifier, CatBoostRegressor
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    update_registered_converter(CatBoostClassifier, "CatBoostCatBoostClassifier",
                                calculate_linear_classifier_output_shapes, _trees_in_float32(_convert_catboost),
                                parser=_parse_catboost_classifier, options=_CLASSIFIER_OPTIONS)
    update_registered_converter(CatBoostRegressor, "CatBoostCatBoostRegressor",
                                calculate_linear_regressor_output_shapes, _trees_in_float32(_convert_catboost))


def _parse_catboost_classifier(scope: Any, model: Any, inputs: list, custom_parsers: Any = None) -> list:
    """Declare the operator's two outputs, label and probabilities (edgeport always turns zipmap off)."""
    from skl2onnx._parse import _get_sklearn_operator_name
    from skl2onnx.common.data_types import Int64TensorType, StringTensorType, guess_tensor_type

    operator = scope.declare_local_operator(_get_sklearn_operator_name(type(model)), model)
    operator.inputs = inputs
    strings = np.asarray(model.classes_).dtype.kind in "OUS"
    operator.outputs.append(scope.declare_local_variable("label", StringTensorType() if strings else Int64TensorType()))
    operator.outputs.append(scope.declare_local_variable("probabilities", guess_tensor_type(inputs[0].type)))
    return list(operator.outputs)


def _convert_catboost(scope: Any, operator: Any, container: Any) -> None:
    """Copy the TreeEnsemble node of CatBoost's own ONNX export into skl2onnx's graph."""
    from catboost.utils import convert_to_onnx_object
    from onnx.helper import get_attribute_value

    onx = convert_to_onnx_object(operator.raw_operator)
    nodes = [n for n in onx.graph.node if n.op_type != "ZipMap"]  # probabilities come from the tensor output
    if len(nodes) != 1 or not nodes[0].op_type.startswith("TreeEnsemble") or len(onx.graph.initializer):
        raise NotImplementedError(f"CatBoost's ONNX export has nodes {[n.op_type for n in onx.graph.node]}; edgeport "
                                  "handles one TreeEnsemble node (no categorical features or text features)")
    node = nodes[0]
    opsets = {d.domain: d.version for d in onx.opset_import}
    attributes = {a.name: get_attribute_value(a) for a in node.attribute}
    container.add_node(node.op_type, [operator.inputs[0].full_name], [o.full_name for o in operator.outputs],
                       op_domain=node.domain, op_version=opsets.get(node.domain), **attributes)


class _NativeBoosting(SklearnToOnnx):
    """A native XGBoost / LightGBM / CatBoost file, loaded as its scikit-learn estimator."""

    options = ("classes",)

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress,
                classes: Sequence[Any] | None = None) -> Converted:
        converted = super().convert(loaded, sample, progress)
        library = importlib.import_module(loaded.framework)
        converted = replace(converted, source={
            **converted.source, "framework": loaded.framework, "framework_version": library.__version__,
            "converter": "catboost" if loaded.framework == "catboost" else "onnxmltools (through skl2onnx)"})
        if converted.task != "classification":
            if classes:
                raise SampleError("--classes names the classes of a classifier, but this model is a regressor")
            return converted
        known = converted.classes or []
        if not classes:
            return converted
        if len(classes) != len(known):
            raise SampleError(f"--classes names {len(classes)} classes, but the model predicts {len(known)}")
        # the graph's label output holds the model's own class indices; with names given, the label is the named
        # class with the highest probability (runtimes.with_labels, the JS client), so that output is left out
        outputs = [o for o in converted.outputs if o["role"] != "label"]
        return replace(converted, outputs=outputs, classes=list(classes))

    def reference(self, loaded: LoadedModel, table: Any, classes: Any = None) -> dict[str, Any]:
        outputs = reference_outputs(loaded.model, table)
        own = getattr(loaded.model, "classes_", None)
        own = [] if own is None else list(own)
        if classes is not None and "label" in outputs and [str(c) for c in classes] != [str(c) for c in own]:
            index = {str(c): i for i, c in enumerate(own)}
            # CatBoost's multi-class predict gives [n, 1]: one label per row either way
            outputs["label"] = np.asarray(classes, dtype=object)[[index[str(v)] for v in np.ravel(outputs["label"])]]
        return outputs


@register("xgboost", "onnx")
class XGBoostToOnnx(_NativeBoosting):
    """An XGBoost .json / .ubj model file → ONNX (onnxmltools)."""


@register("lightgbm", "onnx")
class LightGBMToOnnx(_NativeBoosting):
    """A LightGBM .txt model file → ONNX (onnxmltools)."""


@register("catboost", "onnx")
class CatBoostToOnnx(_NativeBoosting):
    """A CatBoost .cbm model file → ONNX (CatBoost's own export)."""
