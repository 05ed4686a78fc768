"""Trees in float32 behind a double graph, as the libraries run them: Cast in, the TreeEnsemble, Cast out.

scikit-learn's trees (and XGBoost's, CatBoost's) turn their input into float32 and compare it with thresholds
that sit between two float32 training values; what comes before the trees in a Pipeline (a scaler, an encoder)
runs in double. onnxruntime has TreeEnsemble kernels for float thresholds only. So a faithful graph runs the
preprocessing in double and rounds only its result to float32, just before the trees:

- a double input fed straight to a TreeEnsembleClassifier (skl2onnx's default for a forest) compares the double
  value with the float threshold: a value that float32 rounds onto the threshold takes the other branch (found by
  a newcomer: a StandardScaler → RandomForest pipeline passed parity on its sample and was 6.7e-3 off on row 470);
- a whole graph in float32 (the fallback when double failed to load) runs the scaler in float32, an ulp off.

`use_float32_trees()` wraps skl2onnx's converters of scikit-learn's tree models this way (once per process);
boosting.py wraps XGBoost's, LightGBM's and CatBoost's.
"""
from __future__ import annotations

from typing import Any

# scikit-learn's tree models, by skl2onnx's converter alias
SKLEARN_TREES = tuple(f"Sklearn{name}" for name in (
    "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor",
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
    "GradientBoostingClassifier", "GradientBoostingRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor"))
_wrapped = False


class _Rewired:
    """The operator as a converter sees it, with other input and output variables (skl2onnx's own lists re-parent
    whatever is put in them)."""

    def __init__(self, operator: Any, inputs: list, outputs: list) -> None:
        self._operator, self.inputs, self.outputs = operator, inputs, outputs

    @property
    def input_full_names(self) -> list[str]:
        return [v.full_name for v in self.inputs]

    @property
    def output_full_names(self) -> list[str]:
        return [v.full_name for v in self.outputs]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._operator, name)


def trees_in_float32(convert: Any) -> Any:
    """Wrap a converter so the trees run in float32 behind a double graph: Cast in, trees, Cast out.

    The libraries themselves turn features into float32 before the trees (XGBoost's DMatrix, CatBoost), and their
    thresholds are float32, often exactly a training value (XGBoost's histogram cuts). So preprocessing in a
    Pipeline must run in double, as scikit-learn runs it, and only its result be rounded to float32: a scaler run
    in float32 lands one ulp off such a threshold and sends the row down the other branch. onnxruntime has no
    double TreeEnsemble kernels, hence the casts.
    """

    def converter(scope: Any, operator: Any, container: Any) -> None:
        from onnx import TensorProto
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        source = operator.inputs[0]
        if not isinstance(source.type, DoubleTensorType):
            return convert(scope, operator, container)
        outputs = list(operator.outputs)
        single = scope.declare_local_variable("trees_input", FloatTensorType(source.type.shape))
        container.add_node("Cast", [source.full_name], [single.full_name], to=TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("Cast"))
        inner = [scope.declare_local_variable(f"{v.raw_name}_float", FloatTensorType(v.type.shape))
                 if isinstance(v.type, DoubleTensorType) else v for v in outputs]
        convert(scope, _Rewired(operator, [single], inner), container)
        for float_var, var in zip(inner, outputs):
            if float_var is not var:
                container.add_node("Cast", [float_var.full_name], [var.full_name], to=TensorProto.DOUBLE,
                                   name=scope.get_unique_operator_name("Cast"))

    return converter


def use_float32_trees() -> None:
    """Wrap skl2onnx's converters of scikit-learn's tree models with trees_in_float32 (once per process)."""
    global _wrapped
    if _wrapped:
        return
    from skl2onnx.common._registration import RegisteredConverter, _converter_pool

    for alias in SKLEARN_TREES:
        registered = _converter_pool.get(alias)
        if registered is not None:
            _converter_pool[alias] = RegisteredConverter(trees_in_float32(registered._fct),
                                                         registered.get_allowed_options())
    _wrapped = True
