"""scikit-learn → ONNX with skl2onnx, preprocessing included.

Signature: a plain numeric matrix becomes one input named `input`; a DataFrame
pipeline that selects columns by name (a ColumnTransformer) or has string
columns becomes one input per column, typed from the column.

Precision: the graph is built in float64 where skl2onnx and onnxruntime have
double kernels for every node (linear models, SVC, kNN, MLP, scalers,
encoders), which matches scikit-learn to ~1e-15. Trees run in float32 behind a
Cast, as scikit-learn runs them (float32_trees.py), so a pipeline's
preprocessing stays in double. A graph that still fails in double (an imputer
before the trees...) falls back to float32. The choice is recorded as
`source.precision`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConversionError, SampleError, UnsupportedModelError, first_line as _first_line
from ..loading import LoadedModel
from ..parity import Tolerance
from ..progress import Progress
from ..registry import Converted, register
from ..samples import csv_text_columns, is_string_dtype
from . import sklearn_tasks as tasks
from . import sklearn_text as text
from .sklearn_steps import (categories_by_column, check_hist_gradient_boosting, check_supported, check_text_columns,
                            estimator_name, final_estimator, is_nan, plain, selects_columns_by_name,
                            supported_estimators, walk)

# the names other converters (boosting.py) import
_walk, _final_estimator, _estimator_name, _plain, _is_nan = walk, final_estimator, estimator_name, plain, is_nan

# float32 graphs carry ~1e-7 relative error per op, and a 100-tree sum or a
# regression on values in the hundreds compounds it to ~1e-5 abs / ~1e-6 rel.
# 1e-5 / 1e-4 keeps headroom over that while real skew (another scaler, another
# training run) shows differences of 1e-2 and more.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)
# ai.onnx opset 17 and ai.onnx.ml 3 run in onnxruntime(-web) and in Triton/MLServer alike
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@register("sklearn", "onnx")
class SklearnToOnnx:
    """scikit-learn estimator or Pipeline → one ONNX graph."""

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress) -> Converted:
        import sklearn

        model = loaded.model
        from .boosting import ensure_registered, libraries_in, repair_loaded  # XGBoost / LightGBM / CatBoost steps
        from .float32_trees import use_float32_trees

        ensure_registered(libraries_in(model))
        use_float32_trees()
        repair_loaded(model)
        task = task_of(model)
        # refusals that need no conversion: say what isn't supported and what to do, before skl2onnx says less
        text.check_text_steps(model, walk)
        check_supported(model)
        check_hist_gradient_boosting(model)
        table, per_column = _prepare_table(model, sample)
        widths = {role: np.shape(values)[1] for role, values in reference_outputs(model, table.iloc[:2] if hasattr(
            table, "iloc") else table[:2]).items() if np.ndim(values) == 2}
        classes = [_plain(c) for c in model.classes_] if task == "classification" else None
        has_proba = task == "classification" and hasattr(model, "predict_proba")
        failures: list[str] = []
        for precision in ("float64", "float32"):
            inputs = _input_specs(model, table, per_column, precision)
            _mark_nullable(model, table, inputs)
            try:
                onx = _to_onnx(model, inputs, task)
                outputs = tasks.name_outputs(onx, task, has_proba, widths)
                _smoke_test(onx)
            except UnsupportedModelError:
                raise
            except Exception as exc:  # retry in float32; report both failures if both fail
                failures.append(f"{precision}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if precision == "float64":
                    progress(f"no float64 graph for this model ({_short_reason(exc)}); using float32")
                continue
            source = {
                "framework": "scikit-learn",
                "framework_version": sklearn.__version__,
                "converter": "skl2onnx",
                "converter_version": _skl2onnx_version(),
                "estimator": _estimator_name(model),
                "precision": precision,
            }
            return Converted(
                files={"model.onnx": onx.SerializeToString()},
                model_file="model.onnx",
                format="onnx",
                task=task,
                inputs=inputs,
                outputs=outputs,
                layout="columns" if per_column else "matrix",
                source=source,
                tolerance=DEFAULT_TOLERANCE,
                table=table,
                classes=classes,
            )
        raise ConversionError(_conversion_failure(model, failures))

    def reference(self, loaded: LoadedModel, table: Any, classes: Any = None) -> dict[str, Any]:
        return reference_outputs(loaded.model, table)


def reference_outputs(model: Any, table: Any) -> dict[str, Any]:
    """The original model's outputs keyed by role (see sklearn_tasks.py)."""
    table = model_input(model, table)
    return tasks.reference_outputs(model, table, task_of(model))


def model_input(model: Any, table: Any) -> Any:
    """`table` as the original model takes it: a model that starts with a text vectorizer takes the texts
    themselves (a DataFrame would hand it the column names), a model fit on a DataFrame takes named columns."""
    if text.text_at_root(model) and hasattr(table, "iloc"):
        return table.iloc[:, 0]
    if isinstance(table, np.ndarray) and hasattr(model, "feature_names_in_"):
        import pandas as pd

        return pd.DataFrame(table, columns=list(model.feature_names_in_))
    return table


def task_of(model: Any) -> str:
    return tasks.task_of(model)


def _prepare_table(model: Any, sample: Any) -> tuple[Any, bool]:
    """Check the sample against the model and decide matrix vs per-column inputs."""
    import pandas as pd

    if text.text_at_root(model):
        return _text_table(model, sample), True
    expected = getattr(model, "feature_names_in_", None)
    n_features = getattr(model, "n_features_in_", None)
    needs_names = selects_columns_by_name(model)
    if isinstance(sample, np.ndarray):
        if needs_names:
            raise SampleError(
                "this pipeline selects columns by name, but the sample is a .npy array without names; "
                "pass a CSV or Parquet sample with a header row"
            )
        if sample.ndim != 2:
            raise SampleError(f"sample has shape {sample.shape}; scikit-learn models take a 2-D table")
        if sample.dtype.kind not in "biuf":
            raise SampleError(f"the .npy sample holds {sample.dtype} values, not numbers, and a .npy sample has no "
                              "column names to say which columns are text: save the numbers as a float array, or "
                              "pass a CSV or Parquet sample with a header row")
        if n_features is not None and sample.shape[1] != n_features:
            raise SampleError(f"sample has {sample.shape[1]} columns, but the model was trained on {n_features}")
        if expected is not None:
            sample = pd.DataFrame(sample, columns=list(expected))
        return sample, False
    columns = [str(c) for c in sample.columns]
    if expected is not None:
        expected = [str(c) for c in expected]
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
            raise SampleError(
                f"the sample's columns don't match the model: {'; '.join(parts)}. The model was trained on "
                f"{', '.join(map(repr, expected))} (drop target or id columns from the sample)."
            )
        sample = sample[expected]
    elif n_features is not None and len(columns) != n_features:
        raise SampleError(f"sample has {len(columns)} columns, but the model was trained on {n_features}")
    texts = text.text_columns(model, walk)
    # a column the model reads as text (free text, an encoder whose categories are strings, or text in the sample),
    # read from CSV again as the file has it: pandas made numbers of "007", "1", "010", and missing values of NA,
    # null or None, which `edgeport predict` and the server take as the text they are (only an empty cell is missing)
    as_text = [c for c in (*texts, *(c for c, cats in categories_by_column(model).items()
                                     if cats and all(isinstance(x, str) for x in cats)),
                           *(c for c in sample.columns if is_string_dtype(sample[c])))
               if c in sample.columns]
    sample = sample.assign(**csv_text_columns(sample, list(dict.fromkeys(as_text))))
    if texts:  # free text is text even where every value in the sample happens to read as a number
        sample = sample.assign(**{c: _as_text(sample[c]) for c in texts if c in sample.columns})
    strings = [str(c) for c in sample.columns if is_string_dtype(sample[c])]
    check_text_columns(model, sample, strings, texts)
    # strings that reach an encoder: one input per column, as with a ColumnTransformer
    return sample, bool(strings) or needs_names


def _text_table(model: Any, sample: Any) -> Any:
    """The sample of a model that takes texts: one column of strings."""
    if isinstance(sample, np.ndarray):
        raise SampleError(f"{estimator_name(model)} takes texts, and a .npy sample has no column name to give the "
                          "input: pass a CSV or Parquet sample with one text column and a header row")
    if len(sample.columns) != 1:
        raise SampleError(
            f"{estimator_name(model)} takes one text per row, but the sample has {len(sample.columns)} columns "
            f"({', '.join(map(repr, map(str, sample.columns)))}). Keep only the text column in the sample (drop the "
            "target and id columns).")
    column = str(sample.columns[0])
    return sample.set_axis([column], axis=1).assign(**{column: _as_text(sample.iloc[:, 0])})


def _as_text(values: Any) -> Any:
    """A column of text as strings (pandas reads a column of "42"s as numbers); an empty cell is the empty text,
    as CSV can't tell them apart (a text step can't take a missing value at all)."""
    return values.astype(object).where(values.notna(), "").map(str)


def _input_specs(model: Any, table: Any, per_column: bool, precision: str) -> list[dict]:
    if not per_column:
        columns = [str(c) for c in table.columns] if hasattr(table, "columns") else [f"x{i}" for i in range(table.shape[1])]
        return [{"name": "input", "dtype": precision, "shape": [None, len(columns)], "columns": columns}]
    categories = categories_by_column(model)
    texts = {str(table.columns[0])} if text.text_at_root(model) else text.text_columns(model, walk)
    specs = []
    for column in table.columns:
        dtype = "string" if is_string_dtype(table[column]) else precision
        spec = {"name": str(column), "dtype": dtype, "shape": [None, 1], "column": str(column)}
        if str(column) in categories:
            spec["categories"] = categories[str(column)]
        if str(column) in texts:
            spec["kind"] = "text"  # free text: a form shows a text box, not a list of the sample's values
        specs.append(spec)
    return specs


def _mark_nullable(model: Any, table: Any, inputs: list[dict]) -> None:
    """Record, per input, whether the ORIGINAL model accepts a missing value there.

    Asked of the model itself (one sample row with the value knocked out), so an imputer, a
    HistGradientBoosting model's native NaN handling, or their absence all speak for themselves.
    """
    import warnings

    row = table.iloc[:1].copy() if hasattr(table, "iloc") else np.array(table[:1], dtype=np.float64)
    for spec in inputs:
        probe = row.copy()
        if "column" in spec:
            # a missing string is None in the table, and "" in the graph's string tensor (decoding.py)
            probe[spec["column"]] = None if spec["dtype"] == "string" else np.nan
        elif hasattr(probe, "iloc"):
            probe.iloc[:, :] = np.nan
        else:
            probe[:] = np.nan
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = _primary(model, probe)
                spec["nullable"] = bool(result.dtype.kind not in "fc" or np.isfinite(result).all())
                if spec["nullable"] and spec["dtype"] == "string":
                    # the graph reads a missing string as "": nullable only if the model means the same by both
                    # (not so where "" is a category of its own, or where an imputer fills None but keeps "")
                    spec["nullable"] = _answers(model, probe) == _answers(model, probe.assign(**{spec["column"]: ""}))
        except (ValueError, TypeError, AttributeError):  # a text step calls None.lower()
            spec["nullable"] = False


def _primary(model: Any, table: Any) -> np.ndarray:
    """The model's main answer on `table`: predict, or transform for a transformer."""
    table = model_input(model, table)
    values = model.transform(table) if task_of(model) == "transformation" else model.predict(table)
    return np.asarray(values.toarray() if hasattr(values, "toarray") else values)


def _answers(model: Any, table: Any) -> list:
    """What the model says about `table`: its probabilities where it has them, else its main answer."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(model_input(model, table))).tolist()
    return _primary(model, table).tolist()


def _takes_option(estimator: Any, option: str) -> bool:
    """Whether skl2onnx's converter for `estimator` accepts `option` (an option it doesn't take is an error)."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    try:
        allowed = get_converter(sklearn_operator_name_map[type(estimator)]).get_allowed_options()
    except (KeyError, ValueError, AttributeError):
        return True  # unknown here: skl2onnx says what it lacks when it converts
    return allowed is None or option in allowed


def _to_onnx(model: Any, inputs: list[dict], task: str) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType, StringTensorType
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

    types = {"float64": DoubleTensorType, "float32": FloatTensorType, "int64": Int64TensorType, "string": StringTensorType}
    initial_types = [(spec["name"], types[spec["dtype"]](spec["shape"])) for spec in inputs]
    options = text.converter_options(model, walk)
    if task in ("classification", "multi-output-classification"):
        # LinearSVC's converter has no ZipMap and refuses the option; an entry, even empty, also stops skl2onnx's
        # Pipeline parser from adding zipmap=True to a classifier step on its own (which fails the same way)
        takes = _takes_option(final_estimator(model), "zipmap")
        options[id(final_estimator(model))] = {"zipmap": False} if takes else {}
    try:
        with text.tuple_vocabularies(model, walk):
            onx = to_onnx(model, initial_types=initial_types, options=options or None, target_opset=TARGET_OPSET)
    except (MissingConverter, MissingShapeCalculator, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "Unable to find" not in str(exc):
            raise
        check_supported(model)  # names the step and what to do
        raise UnsupportedModelError(
            f"skl2onnx has no converter for a step of {estimator_name(model)} ({_first_line(exc)}). Replace the step "
            "with one skl2onnx converts, or register a converter for it with skl2onnx's update_registered_converter."
        ) from exc
    _keep_input_names(onx, inputs)
    text.repair_graph(onx, model, walk)
    if any(getattr(est, "sublinear_tf", False) for est in walk(model)):
        text.repair_sublinear_tf(onx)
    return onx


def _keep_input_names(onx: Any, inputs: list[dict]) -> None:
    """Give the graph's inputs back the names edgeport chose (the columns'): skl2onnx renames 'a/b' to 'a_b', and
    a feed keyed by the manifest's names would miss it. ONNX names may hold any characters."""
    graph = onx.graph
    if len(graph.input) != len(inputs):
        return
    for spec, graph_input in zip(inputs, graph.input):
        old, new = graph_input.name, spec["name"]
        if old == new:
            continue
        graph_input.name = new
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]
        for out in graph.output:
            if out.name == old:
                out.name = new


def _conversion_failure(model: Any, failures: list[str]) -> str:
    """Why no graph came out, in words that point at the cause."""
    joined = "; ".join(failures)
    locale = text.locale_failure(joined)
    if locale:
        return f"could not export {estimator_name(model)}: {locale} ({failures[-1]})."
    custom = [type(est).__name__ for est in walk(model) if type(est).__module__.split(".")[0] != "sklearn"]
    hint = (f" {', '.join(custom)} {'is' if len(custom) == 1 else 'are'} not scikit-learn's own: if the failure is in "
            "that code, replace it with a scikit-learn transformer or register a converter for it." if custom else "")
    return (f"could not turn {estimator_name(model)} into an ONNX graph that onnxruntime runs, in float64 or "
            f"float32 ({joined}).{hint}")



def _short_reason(exc: Exception) -> str:
    text_ = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    kernel = text_.split("Could not find an implementation for ")
    if len(kernel) > 1:
        return f"onnxruntime has no double kernel for {kernel[1].split(' node')[0]}"
    return text_ if len(text_) <= 120 else text_[:119] + "…"


def _smoke_test(onx: Any) -> None:
    import onnxruntime as ort

    ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])


def _skl2onnx_version() -> str:
    import skl2onnx

    return skl2onnx.__version__


__all__ = ["SklearnToOnnx", "reference_outputs", "model_input", "task_of", "supported_estimators"]
