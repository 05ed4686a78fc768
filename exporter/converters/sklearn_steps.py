"""What a scikit-learn model is made of, and what edgeport refuses in it before converting.

Walking a model (Pipelines, ColumnTransformers), naming it, reading the categories its encoders know, and
the up-front refusals that say what isn't supported and what to do instead:

- an estimator skl2onnx has no converter for (named, with its package and the way out);
- HistGradientBoosting with native categorical features (skl2onnx converts its trees as numeric splits);
- a sample column that holds text where the model reads numbers (named, with the first offending value).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..errors import SampleError, UnsupportedModelError


def walk(est: Any) -> Iterator[Any]:
    """The estimator and every estimator nested in it (pipelines, column transformers, meta-estimators)."""
    yield est
    for _, child in getattr(est, "steps", None) or []:
        if hasattr(child, "fit"):
            yield from walk(child)
    for _, child, _ in getattr(est, "transformers_", None) or []:
        if hasattr(child, "fit"):
            yield from walk(child)


def final_estimator(model: Any) -> Any:
    return model.steps[-1][1] if hasattr(model, "steps") else model


def estimator_name(model: Any) -> str:
    if hasattr(model, "steps"):
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in model.steps) + ")"
    return type(model).__name__


def plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def selects_columns_by_name(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    for est in walk(model):
        if isinstance(est, ColumnTransformer):
            return any(isinstance(c, str) or (isinstance(c, list) and c and isinstance(c[0], str))
                       for _, _, c in est.transformers_)
    return False


def categories_by_column(model: Any) -> dict[str, list]:
    """Categories the fitted encoders know, keyed by the input column they came from: encoders inside a
    ColumnTransformer, or an encoder that is the first step of a model fit on a DataFrame."""
    from sklearn.compose import ColumnTransformer

    found: dict[str, list] = {}
    for est in walk(model):
        if isinstance(est, ColumnTransformer):
            for _, transformer, columns in est.transformers_:
                if isinstance(columns, list) and columns and isinstance(columns[0], str):
                    _encoder_categories(transformer, columns, found)
    first = model
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    if hasattr(first, "categories_") and hasattr(first, "feature_names_in_"):
        _encoder_categories(first, [str(c) for c in first.feature_names_in_], found)
    return found


def _encoder_categories(transformer: Any, columns: list, found: dict) -> None:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, TargetEncoder

    for part in walk(transformer):
        if isinstance(part, (OneHotEncoder, OrdinalEncoder, TargetEncoder)):
            for column, cats in zip(columns, part.categories_):
                found[column] = [plain(c) for c in cats if not is_nan(c)]
            return


def supported_estimators() -> list[str]:
    """Class names skl2onnx has a converter for (its alias table is keyed by the classes)."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return sorted({cls.__name__ for cls in sklearn_operator_name_map})


def check_supported(model: Any) -> None:
    """Refuse an estimator skl2onnx has no converter for, naming it, where it sits, and what to do."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    registered = set(sklearn_operator_name_map)
    for est in walk(model):
        if type(est) in registered:
            continue
        module = type(est).__module__.split(".")[0]
        where = "" if est is model else f" (a step of {estimator_name(model)})"
        if module == "sklearn":
            advice = ("Replace it with an estimator skl2onnx converts (for the list: python -c \"from "
                      "skl2onnx import supported_converters; print(supported_converters())\"), or register a "
                      "converter for it with skl2onnx's update_registered_converter.")
        else:
            advice = (f"It comes from {module!r}, not scikit-learn: register an ONNX converter for it (skl2onnx's "
                      "update_registered_converter), or replace it with a scikit-learn step that does the same.")
        raise UnsupportedModelError(
            f"{type(est).__name__}{where} can't be exported: skl2onnx has no ONNX converter for it. {advice}")


def check_hist_gradient_boosting(model: Any) -> None:
    """Refuse HistGradientBoosting with native categorical features: skl2onnx writes its trees as numeric
    threshold splits, so a categorical split (a set of categories going left) would answer wrongly."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    for est in walk(model):
        if not isinstance(est, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
            continue
        flags = getattr(est, "is_categorical_", None)
        if flags is None or not np.any(flags):
            continue
        names = list(getattr(est, "feature_names_in_", [f"feature {i}" for i in range(len(flags))]))
        columns = ", ".join(repr(str(names[i])) for i in np.flatnonzero(flags))
        raise UnsupportedModelError(
            f"{type(est).__name__} uses native categorical features ({columns}), which can't be exported: skl2onnx "
            "converts its trees as numeric threshold splits, and a categorical split sends a set of categories one "
            "way, so the ONNX model would answer differently. Encode the categories in the pipeline instead: put an "
            "OrdinalEncoder (or OneHotEncoder) for those columns in a ColumnTransformer before the model, leave "
            "categorical_features at its default, and re-fit (the column must not be a pandas 'category' dtype "
            "when it reaches the model).")


def check_text_columns(model: Any, table: Any, string_columns: list[str], text: set[str]) -> None:
    """Refuse a sample column that holds text where the model reads numbers, naming the first such value."""
    import pandas as pd

    encoded = categories_by_column(model)
    for column in string_columns:
        if column in text or column in encoded:
            continue
        values = table[column]
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values[values.notna() & numeric.isna()]
        if bad.empty:
            continue
        row, value = bad.index[0], bad.iloc[0]
        raise SampleError(
            f"column {column!r} of the sample holds text ({value!r} in row {row}), but {estimator_name(model)} reads "
            "it as a number: no encoder or text step takes that column. Fix the sample so the column holds numbers "
            "only (leave a cell empty for a missing value), or, if the column really is a category, add an encoder "
            "for it to the pipeline (a OneHotEncoder in a ColumnTransformer) and re-fit.")
