"""Explanations of the artifact that ran: per-feature attributions for one row, from the bundle's own ONNX session.

shap's model-agnostic KernelExplainer is run over a predict function that calls the onnxruntime session the server
answers with (ServedModel.session), with the bundle's golden rows as the background, so what is explained is exactly
what ran, preprocessing included. Kernel SHAP is additive by construction: base_value plus the attributions is the
model's output for the row, which the tests hold it to.

What is explained:
  classifier  the probability of the class the model predicts for the row (its label output, else the argmax)
  regressor   its one value output (several values: refused)
Features are the original columns: the columns layout's inputs, or the columns of a matrix input that names them.
A string column (a category, or text) is one feature, not one per one-hot slot: shap sees the index of its value in
that column's categories (the manifest's, the training frequencies in feature_stats, the background's and the row's
own value), and the predict function turns indices back into the strings before the session runs. A matrix without
column names, or a tensors layout, has no features to name: ExplanationUnsupportedError.

Limits: shap's nsamples is capped (max_samples; with up to 10 features every coalition is enumerated, so the
answer is exact), the background is at most MAX_BACKGROUND golden rows, and the whole explanation has a time budget
(timeout_s): the session runs shap's synthetic rows in chunks, checking the budget between them, and past it the
work stops with ExplanationBudgetError. shap is the `explain` extra, imported when an explanation starts.

Errors (all EdgeportError): RowValidationError for a bad row (the decoder's, naming the field),
ExplanationUnsupportedError for a model this can't explain, ExplanationBudgetError past the time budget, and
RuntimeUnavailableError when shap isn't installed. The server answers them 400, 422, 422 and 501.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .bundle import read_bundle
from .decoding import NUMPY_DTYPES, TableColumn, feeds_from_rows, feeds_from_table, table_columns
from .errors import EdgeportError, RowValidationError, first_line

DEFAULT_TIMEOUT_S = 5.0
# shap's nsamples at most: 2**10 - 2 coalitions, so with up to 10 features every one is evaluated (an exact answer);
# each costs one session row per background row
DEFAULT_MAX_SAMPLES = 1024
# golden rows taken as the background, evenly spaced: shap itself warns past 100 (each is a row per coalition)
MAX_BACKGROUND = 100
# shap's synthetic rows go through the session this many at a time; the time budget is checked between chunks
CHUNK_ROWS = 4096


class ExplanationUnsupportedError(EdgeportError):
    """Raised when a model can't be explained per feature: no named columns (an unnamed matrix, tensors), no output
    to explain (not a classifier with probabilities or a one-value regressor), or no golden rows for a background."""


class ExplanationBudgetError(EdgeportError):
    """Raised when an explanation takes longer than its time budget; the work stops there."""


@dataclass(frozen=True)
class Attribution:
    feature: str
    value: Any  # the row's value, as decoded: a number, a string, or None for a missing one
    attribution: float


@dataclass(frozen=True)
class Explanation:
    """One row's attributions, largest |attribution| first: base_value + their sum == prediction (Kernel SHAP)."""

    model_name: str
    model_version: str
    target: Any  # the class explained (classifier) or the value output's name (regressor)
    base_value: float  # the model's mean output over the background
    prediction: float  # the model's output for the row: the target class's probability, or the value
    attributions: tuple[Attribution, ...]

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "model_version": self.model_version, "target": self.target,
                "base_value": self.base_value, "prediction": self.prediction,
                "attributions": [{"feature": a.feature, "value": a.value, "attribution": a.attribution}
                                 for a in self.attributions]}


@dataclass(frozen=True)
class RowExplanation:
    row: int  # its place in the data file, from 0
    explanation: Explanation


def explain_row(model: Any, row: Any, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                max_samples: int = DEFAULT_MAX_SAMPLES) -> Explanation:
    """Attributions for one JSON row (as the JS client sends rows) on `model` (a ServedModel: its bundle and
    session), decoded by the one decoder: a bad row is a RowValidationError naming the field."""
    if isinstance(row, list) and row and all(isinstance(r, (dict, list)) for r in row):
        raise RowValidationError(f"explain takes one row, got a list of {len(row)}; send one row per request",
                                 code="rows", field="row")
    bundle = model.bundle
    features = feature_columns(bundle)  # an unexplainable model is refused before its row is looked at
    feeds = feeds_from_rows(bundle.inputs, bundle.manifest.layout, [row])
    return explain_feeds(model, feeds, features=features, timeout_s=timeout_s, max_samples=max_samples)


def explain_file(bundle_dir: str | Path, data: str | Path, *, rows: int = 5, allow_unverified: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_samples: int = DEFAULT_MAX_SAMPLES,
                 progress: Callable[[str], None] = lambda _m: None) -> list[RowExplanation]:
    """Attributions for the first `rows` rows of a data file (CSV, Parquet or JSON lines, read as `edgeport predict`
    reads them), each with its own time budget; the first bad row stops the run with its message."""
    from .batch import ChunkReader
    from .errors import InputFileError
    from .server.repository import load_served

    if rows < 1:
        raise EdgeportError(f"--rows must be at least 1, not {rows}")
    data = Path(data)
    if not data.is_file():
        raise InputFileError(f"no data file at {data}")
    model = load_served(read_bundle(bundle_dir, verify=False), allow_unverified=allow_unverified)
    bundle = model.bundle
    features = feature_columns(bundle)
    chunks = iter(ChunkReader(data, model, rows))
    chunk = next(chunks, None)
    chunks.close()
    if chunk is None or chunk.frame.empty:
        raise InputFileError(f"{data} has no rows to explain")
    feeds, good, faults = feeds_from_table(bundle.inputs, bundle.manifest.layout, chunk.frame, text=chunk.text)
    if faults:
        raise faults[0]
    explained = []
    for i, row in enumerate(np.flatnonzero(good)):
        progress(f"explaining row {row} of {data}")
        one = {name: values[i:i + 1] for name, values in feeds.items()}
        explained.append(RowExplanation(int(row), explain_feeds(model, one, features=features, timeout_s=timeout_s,
                                                                max_samples=max_samples)))
    return explained


def format_explanations(explained: Sequence[RowExplanation]) -> str:
    """A table per row: feature, value, attribution; headed by what was explained."""
    blocks = []
    for item in explained:
        e = item.explanation
        lines = [f"row {item.row}: {e.target!s} = {e.prediction:.6g} (base value {e.base_value:.6g} over the "
                 f"background, attributions sum to {e.prediction - e.base_value:+.6g})"]
        table = [("feature", "value", "attribution")] + [
            (a.feature, "(missing)" if a.value is None else str(a.value), f"{a.attribution:+.6g}") for a in e.attributions]
        widths = [max(len(r[k]) for r in table) for k in range(2)]
        lines += [f"  {f.ljust(widths[0])}  {v.ljust(widths[1])}  {a}" for f, v, a in table]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------- features: original columns, as numbers for shap

Feature = TableColumn  # a feature is an original column


def feature_columns(bundle: Any) -> list[Feature]:
    """The original columns, or ExplanationUnsupportedError where the inputs don't name them."""
    inputs, layout = bundle.inputs, bundle.manifest.layout
    columns = table_columns(inputs, layout)
    if columns is not None and (layout == "columns" or len(inputs[0].shape) == 2):
        return columns
    what = "a matrix input without column names" if layout == "matrix" else f"{len(inputs)} tensor inputs"
    raise ExplanationUnsupportedError(
        f"explanations need named columns, and {bundle.manifest.name} takes {what}: export the model with a sample "
        "that names its columns (a CSV with a header, or a DataFrame) to explain it")


class _Space:
    """The features as a float matrix for shap (a string is its index into the column's categories) and back into
    feeds for the session."""

    def __init__(self, features: list[Feature], feature_stats: dict, *feeds: dict[str, np.ndarray]):
        self.features = features
        self.categories: list[Optional[np.ndarray]] = []
        for feature in features:
            if feature.spec.dtype != "string":
                self.categories.append(None)
                continue
            known = dict.fromkeys(feature.spec.categories or ())
            known.update(dict.fromkeys((feature_stats.get(feature.name) or {}).get("frequencies") or {}))
            for f in feeds:
                known.update(dict.fromkeys(self.column(f, feature).tolist()))
            self.categories.append(np.array(list(known), dtype=object))

    @staticmethod
    def column(feeds: dict[str, np.ndarray], feature: Feature) -> np.ndarray:
        values = feeds[feature.spec.name]
        return values[:, 0] if feature.index is None else values[:, feature.index]

    def encode(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        columns = []
        for feature, categories in zip(self.features, self.categories):
            values = self.column(feeds, feature)
            if categories is None:
                columns.append(values.astype(np.float64))
            else:
                where = {c: i for i, c in enumerate(categories.tolist())}
                columns.append(np.array([where[v] for v in values.tolist()], dtype=np.float64))
        return np.column_stack(columns)

    def decode(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        by_input: dict[str, list[np.ndarray]] = {}
        for k, (feature, categories) in enumerate(zip(self.features, self.categories)):
            values = matrix[:, k]
            if categories is not None:
                values = categories[np.rint(values).astype(np.intp)]
            by_input.setdefault(feature.spec.name, []).append(values.astype(NUMPY_DTYPES[feature.spec.dtype]))
        specs = {f.spec.name: f.spec for f in self.features}
        return {name: np.column_stack(columns).astype(NUMPY_DTYPES[specs[name].dtype])
                for name, columns in by_input.items()}

    def value(self, feeds: dict[str, np.ndarray], k: int) -> Any:
        """The row's value of feature k as JSON would hold it."""
        value = self.column(feeds, self.features[k])[0]
        if isinstance(value, np.float32):  # as it was sent: 54.22, not float64's reading of the float32 (54.22000122)
            value = float(str(value))
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and math.isnan(value) else value


# ---------------------------------------------------------------- the explanation

def explain_feeds(model: Any, feeds: dict[str, np.ndarray], *, features: Optional[list[Feature]] = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, max_samples: int = DEFAULT_MAX_SAMPLES) -> Explanation:
    """Attributions for one decoded row (feeds of one row) on `model`'s session, within timeout_s."""
    from .extras import require

    if not timeout_s > 0 or max_samples < 1:
        raise ValueError(f"timeout_s must be above 0 and max_samples at least 1; got {timeout_s}, {max_samples}")
    shap = require("shap", "explain", "explaining a prediction")  # imported before the clock starts: ~3 s the first time
    deadline = time.monotonic() + timeout_s
    bundle, session = model.bundle, model.session
    manifest = bundle.manifest
    features = features or feature_columns(bundle)
    golden = bundle.golden().get("rows") or []
    if not golden:
        raise ExplanationUnsupportedError(f"{manifest.name} has no golden rows (golden.json) to explain against; "
                                          "re-export it with a sample")
    picked = np.linspace(0, len(golden) - 1, min(len(golden), MAX_BACKGROUND)).round().astype(int)
    background = feeds_from_rows(bundle.inputs, manifest.layout, [golden[i] for i in sorted(set(picked.tolist()))])
    space = _Space(features, manifest.feature_stats, background, feeds)
    output, column, target = _target(model, feeds)

    def predict(matrix: np.ndarray) -> np.ndarray:
        out = np.empty(len(matrix), dtype=np.float64)
        for start in range(0, len(matrix), CHUNK_ROWS):
            if time.monotonic() > deadline:
                raise ExplanationBudgetError(
                    f"explaining a row of {manifest.name} took longer than its {timeout_s:g} s budget ({len(features)} "
                    f"features, {len(background[features[0].spec.name])} background rows); raise the budget or "
                    "lower the samples (edgeport serve --explain-timeout/--explain-samples, edgeport explain "
                    "--timeout/--samples)")
            values = session.run([output], space.decode(matrix[start:start + CHUNK_ROWS]))[0]
            out[start:start + CHUNK_ROWS] = values.reshape(len(values), -1)[:, column]
        return out

    explainer = shap.KernelExplainer(predict, space.encode(background))
    # every coalition when there are few enough of them (then the answer is exact), else max_samples of them
    coalitions = 2 ** len(features) - 2 if len(features) < 31 else max_samples
    x = space.encode(feeds)
    phi = np.asarray(explainer.shap_values(x, nsamples=max(1, min(max_samples, coalitions)), l1_reg=False,
                                           silent=True)).reshape(-1)
    prediction = float(predict(x)[0])
    base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
    if not (math.isfinite(prediction) and math.isfinite(base) and np.isfinite(phi).all()):
        raise ExplanationUnsupportedError(f"{manifest.name} gives a non-finite output for this row or its background; "
                                          "there is nothing to attribute")
    order = sorted(range(len(features)), key=lambda k: -abs(phi[k]))
    return Explanation(manifest.name, manifest.version, target, base, prediction,
                       tuple(Attribution(features[k].name, space.value(feeds, k), float(phi[k])) for k in order))


def _target(model: Any, feeds: dict[str, np.ndarray]) -> tuple[str, int, Any]:
    """What is explained: (the output, its column, the target's name): the predicted class's probability, or the
    one value of a regressor. The row runs once here, so values the graph refuses are a RowValidationError."""
    bundle = model.bundle
    manifest = bundle.manifest
    roles = {spec.role: spec for spec in bundle.outputs}
    if manifest.task == "regression" and "value" in roles:
        names = [roles["value"].name]
    elif manifest.task == "classification" and "probabilities" in roles:
        names = [roles["probabilities"].name] + ([roles["label"].name] if "label" in roles else [])
    else:
        raise ExplanationUnsupportedError(
            f"explanations cover classifiers with class probabilities and regressors; {manifest.name} is a "
            f"{manifest.task} model" + (" without probabilities" if manifest.task == "classification" else ""))
    try:
        outputs = model.session.run(names, feeds)
    except Exception as exc:  # onnxruntime's own: values the decoder passed but the graph refuses
        raise RowValidationError(f"the model can't compute an answer for this row: onnxruntime says {first_line(exc)}",
                                 code="range") from exc
    values = outputs[0].reshape(1, -1)[0]
    if manifest.task == "regression":
        if len(values) != 1:
            raise ExplanationUnsupportedError(f"{manifest.name} predicts {len(values)} values; explanations cover a "
                                              "regressor with one")
        return names[0], 0, names[0]
    classes = list(manifest.classes) if manifest.classes is not None else list(range(len(values)))
    if len(classes) != len(values):
        raise ExplanationUnsupportedError(f"{manifest.name} gives {len(values)} probabilities for {len(classes)} "
                                          "classes; explanations need one per class")
    index = int(np.argmax(values))
    if len(outputs) > 1:  # the model's own label, where it has one: what ran, thresholds included
        label = outputs[1].reshape(-1)[0]
        label = label.item() if isinstance(label, np.generic) else label
        index = next((i for i, c in enumerate(classes) if str(c) == str(label)), index)
    return names[0], index, classes[index]
