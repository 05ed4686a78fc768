"""Drift: live inputs and confidences against the training data a bundle's manifest describes.

The one place drift is computed: offline by `edgeport drift` (drift_file), and by anything that accumulates
live data (the server's own traffic, browser telemetry) through the same Profile, compare and DriftReport.

Buckets. A column's distribution is its counts over buckets that training fixed:

- a numeric column: the manifest's `feature_stats[COL]["bins"]["edges"]`, e0 < e1 < … < ek (quantiles of the
  export sample). Bucket i holds e_i <= v < e_{i+1}, the last one e_{k-1} <= v <= e_k; a value below e0 falls in
  the first bucket and one above ek in the last (a single edge is a single bucket). Then a `missing` bucket: a
  null, NaN or non-numeric value. A jump in missing values is drift too (an upstream feed that broke).
- a string column: the training categories (`frequencies`, the export sample's 50 most frequent), `other` (any
  value training didn't list) and `missing`.
- the confidence (a classifier's largest probability): over CONFIDENCE_EDGES the same way, with the golden
  outputs (golden.json, the original model on the export sample) as training.

A manifest written before bins were recorded has none: that column's verdict is "unknown", not an error.
Free-text columns record lengths, not values, and are "unknown" too.

PSI (population stability index) = Σ (live_i − train_i) · ln(live_i / train_i) over the buckets' proportions,
each floored at EPSILON = 1e-4 so that an empty bucket (a new category, values past training's range) adds a
large but finite term instead of an infinite one. Rule of thumb: below 0.1 stable, 0.1 to 0.2 moderate, above
0.2 (DEFAULT_THRESHOLD) drifted.

Sketch: what a browser reports for drift, counts over the manifest's buckets and never raw rows:

    {"features": {
        "tenure_months": {"counts": [3, 0, 5, 1, 0, 2, 0, 0, 1, 4], "missing": 1},
        "plan": {"counts": {"basic": 4, "premium": 2}, "other": 1, "missing": 0}},
     "confidence": {"counts": [0, 1, 0, 0, 2, 0, 0, 3, 1, 0, 5]}}

A numeric column sends one count per bin of its manifest's edges, plus `missing`; a string column a count per
training category it saw (any other value is counted in `other`, never under a key of its own, so a sketch's
size is bounded by the manifest), plus `other` and `missing`; `confidence` (optional) one count per bucket of
CONFIDENCE_EDGES. Every count is a whole number >= 0. A feature left out saw nothing. Profile.add_sketch
refuses anything else with a SampleError naming the field, and adds nothing from a refused sketch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .errors import DriftDetectedError, InputFileError, OptionError, SampleError
from .progress import Progress, quiet

EPSILON = 1e-4
DEFAULT_THRESHOLD = 0.2
NUMERIC_BINS = 10
DEFAULT_MIN_ROWS = 100  # live values a feature needs before its PSI is a verdict (unknown below)
CONFIDENCE = "confidence"  # the key of the confidence's threshold (a feature of that name takes it instead)
CONFIDENCE_EDGES = (0.0,) + tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0, 0.5, 0.55 … 1.0


# ---------------------------------------------------------------- bins

def bin_index(values: np.ndarray, edges: tuple[float, ...] | list[float]) -> np.ndarray:
    """The bucket of each (non-missing) value: the number of inner edges at or below it."""
    return np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")


def numeric_bins(values: Any) -> dict | None:
    """`{"edges", "counts"}` of about NUMERIC_BINS quantile bins of `values` (missing ones left out), for
    feature_stats; None when no value is finite."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, NUMERIC_BINS + 1)))
    if len(edges) <= NUMERIC_BINS // 2:
        # tied values collapsed the quantiles (a constant column, or 90% zeros): one or two buckets would hold any
        # live value, so give values below training's least, exactly at its greatest, and above it buckets of their own
        low, high = np.nextafter(edges[0], -np.inf), np.nextafter(edges[-1], np.inf)
        edges = np.unique(np.concatenate([[low], edges, [high, np.nextafter(high, np.inf)]]))
    counts = np.bincount(bin_index(values, edges), minlength=max(len(edges) - 1, 1))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


# ---------------------------------------------------------------- one column

class Distribution:
    """One column's counts over training's buckets: bins or categories (then `other`), then `missing`.

    Build training's with `training(name, stats)`, a live one with `empty()`, then `add_values` (a table
    column) and `add_sketch` (a browser's counts) add to it in place; `merge` returns the sum of two."""

    def __init__(self, name: str, kind: str, *, edges: tuple[float, ...] = (), categories: tuple[str, ...] = (),
                 counts: Iterable[int] | None = None, value_sum: float = 0.0, value_n: int = 0):
        self.name, self.kind, self.edges, self.categories = name, kind, tuple(edges), tuple(categories)
        size = (max(len(self.edges) - 1, 1) if kind == "numeric" else len(self.categories) + 1) + 1
        self.counts = np.zeros(size, dtype=np.int64) if counts is None else np.asarray(list(counts), dtype=np.int64)
        if self.counts.shape != (size,):
            raise ValueError(f"{name}: {len(self.counts)} counts for {size} buckets")
        self.value_sum, self.value_n = value_sum, value_n  # finite values seen by add_values, for the mean

    @classmethod
    def training(cls, name: str, stats: Mapping) -> Optional[Distribution]:
        """Training's distribution from a manifest's feature_stats entry; None when it records none."""
        if isinstance(stats.get("bins"), Mapping):
            mean, count = stats.get("mean"), stats.get("count") or 0
            return cls(name, "numeric", edges=tuple(stats["bins"]["edges"]),
                       counts=[*stats["bins"]["counts"], stats.get("missing", 0)],
                       value_sum=(mean or 0.0) * count, value_n=count if mean is not None else 0)
        if isinstance(stats.get("frequencies"), Mapping):
            frequencies = stats["frequencies"]
            other = max(int(stats.get("count", 0)) - sum(frequencies.values()), 0)  # beyond the top 50
            return cls(name, "categorical", categories=tuple(frequencies),
                       counts=[*frequencies.values(), other, stats.get("missing", 0)])
        return None

    def empty(self) -> Distribution:
        """A distribution over the same buckets with nothing counted yet."""
        return Distribution(self.name, self.kind, edges=self.edges, categories=self.categories)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def labels(self) -> list[str]:
        if self.kind == "categorical":
            return [*self.categories, "other", "missing"]
        if len(self.edges) < 2:
            return [f"{self.edges[0]:.4g}", "missing"]
        # the first and last buckets are open-ended: a value below training's minimum counts in the first, one
        # above its maximum in the last (bin_index), so they say so
        last = len(self.edges) - 2
        labels = []
        for i, (a, b) in enumerate(zip(self.edges, self.edges[1:])):
            if i == 0:
                labels.append(f"< {b:.4g}")
            elif i == last:  # after a one-value bucket (numeric_bins' ties) it starts just above that value
                before = self.edges[i - 1]
                labels.append(f"> {before:.4g}" if a == np.nextafter(before, np.inf) else f">= {a:.4g}")
            else:
                labels.append(f"= {a:.4g}" if b == np.nextafter(a, np.inf) else f"[{a:.4g}, {b:.4g})")
        return labels + ["missing"]

    def add_values(self, values: Any) -> None:
        """Count a column's values (a pandas Series, array or list) into the buckets."""
        import pandas as pd

        series = pd.Series(values).reset_index(drop=True)
        if self.kind == "numeric":
            numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            present = numbers[~np.isnan(numbers)]
            self.counts[:-1] += np.bincount(bin_index(present, self.edges), minlength=len(self.counts) - 1)
            self.counts[-1] += numbers.size - present.size
            finite = present[np.isfinite(present)]
            self.value_sum += float(finite.sum())
            self.value_n += int(finite.size)
            return
        missing = series.isna().to_numpy()
        seen = series[~missing].astype(str).value_counts()
        slot = {category: i for i, category in enumerate(self.categories)}
        for value, count in seen.items():
            self.counts[slot.get(value, len(self.categories))] += int(count)
        self.counts[-1] += int(missing.sum())

    def add_sketch(self, entry: Any, where: str = "sketch") -> None:
        """Add one column's entry of a sketch (format in the module docstring); SampleError if it doesn't fit."""
        self.counts += self._sketch_counts(entry, f"{where}: {self.name}")

    def _sketch_counts(self, entry: Any, where: str) -> np.ndarray:
        if not isinstance(entry, Mapping):
            raise SampleError(f"{where} must be an object with counts, not {type(entry).__name__}")
        allowed = ("counts", "other", "missing") if self.kind == "categorical" else ("counts", "missing")
        unknown = sorted(set(map(str, entry)) - set(allowed))
        if unknown:
            raise SampleError(f"{where} has the field {unknown[0]!r}; it takes {', '.join(allowed)}")
        counts = np.zeros_like(self.counts)
        given = entry.get("counts", [] if self.kind == "numeric" else {})
        if self.kind == "numeric":
            if not isinstance(given, list) or len(given) != len(self.counts) - 1:
                raise SampleError(f"{where}: counts must be a list of {len(self.counts) - 1} counts, one per bin of "
                                  "the manifest's edges")
            counts[:-1] = [_count(c, f"{where}: counts[{i}]") for i, c in enumerate(given)]
        else:
            if not isinstance(given, Mapping):
                raise SampleError(f"{where}: counts must be an object of counts per training category")
            slot = {category: i for i, category in enumerate(self.categories)}
            for category, count in given.items():
                if category not in slot:
                    raise SampleError(f"{where}: {category!r} is not a training category; count it in `other`")
                counts[slot[category]] = _count(count, f"{where}: counts[{category!r}]")
            counts[-2] = _count(entry.get("other", 0), f"{where}: other")
        counts[-1] = _count(entry.get("missing", 0), f"{where}: missing")
        return counts

    def to_sketch(self) -> dict:
        """This distribution as a sketch entry (what a browser would send for it)."""
        if self.kind == "numeric":
            return {"counts": [int(c) for c in self.counts[:-1]], "missing": int(self.counts[-1])}
        return {"counts": {c: int(n) for c, n in zip(self.categories, self.counts) if n},
                "other": int(self.counts[-2]), "missing": int(self.counts[-1])}

    def merge(self, other: Distribution) -> Distribution:
        """A new distribution with both one's counts; both must share training's buckets."""
        if (self.kind, self.edges, self.categories) != (other.kind, other.edges, other.categories):
            raise ValueError(f"{self.name}: can't merge distributions over different buckets (another manifest?)")
        return Distribution(self.name, self.kind, edges=self.edges, categories=self.categories,
                            counts=self.counts + other.counts, value_sum=self.value_sum + other.value_sum,
                            value_n=self.value_n + other.value_n)

    def summary(self) -> str:
        """A few words for a table: the mean (or the median's bucket) or the top category, and missing values."""
        if not self.total:
            return "no values"
        shares = self.counts / self.total
        missing = f", {shares[-1]:.0%} missing" if self.counts[-1] else ""
        if self.kind == "categorical":
            top = int(np.argmax(self.counts[:-1]))
            return f"{self.labels()[top]} {shares[top]:.0%}{missing}"
        if self.value_n:
            return f"mean {self.value_sum / self.value_n:.4g}{missing}"
        present = np.cumsum(self.counts[:-1])
        return f"median in {self.labels()[int(np.searchsorted(present, present[-1] / 2))]}{missing}"


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value) or not math.isfinite(value):
        raise SampleError(f"{where} must be a whole number 0 or more, not {value!r}")
    return int(value)


def psi(training: Distribution, live: Distribution) -> Optional[float]:
    """The population stability index of `live` against `training` (proportions floored at EPSILON); None
    when either has nothing counted."""
    if not training.total or not live.total:
        return None
    expected = np.maximum(training.counts / training.total, EPSILON)
    actual = np.maximum(live.counts / live.total, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


# ---------------------------------------------------------------- a bundle's columns

UNKNOWN_REASONS = {
    "text": "free text: the manifest records its lengths, not its values",
    "pii": "personal data (export --pii): the manifest records no values of it",
    "old": "the manifest has no bins for it (exported before edgeport recorded them): re-export to compare",
}


class Profile:
    """A bundle's distributions: one per feature (None where the manifest records none) and the confidence's
    (None for a model without probabilities). `training(bundle)` reads training's; `empty()` gives a live twin
    to accumulate into with add_table, add_confidence and add_sketch."""

    def __init__(self, features: dict[str, Optional[Distribution]], confidence: Optional[Distribution],
                 reasons: Mapping[str, str] | None = None):
        self.features, self.confidence, self.reasons = features, confidence, dict(reasons or {})

    @classmethod
    def training(cls, bundle) -> Profile:
        """Training's profile: the manifest's feature_stats, and the golden outputs' confidence."""
        features, reasons = {}, {}
        for name, stats in bundle.manifest.feature_stats.items():
            features[name] = Distribution.training(name, stats)
            if features[name] is None:
                reasons[name] = UNKNOWN_REASONS["pii" if stats.get("pii") else "text" if "mean_length" in stats else "old"]
        confidence = None
        if any(o.role == "probabilities" for o in bundle.outputs):
            probabilities = np.asarray(bundle.golden()["outputs"]["probabilities"], dtype=np.float64)
            confidence = Distribution(CONFIDENCE, "numeric", edges=CONFIDENCE_EDGES)
            confidence.add_values(probabilities.reshape(len(probabilities), -1).max(axis=1))
        return cls(features, confidence, reasons)

    def empty(self) -> Profile:
        return Profile({name: d.empty() if d else None for name, d in self.features.items()},
                       self.confidence.empty() if self.confidence else None, self.reasons)

    def add_table(self, frame: Any) -> None:
        """Count a DataFrame's columns that are features (others are left alone)."""
        for name, distribution in self.features.items():
            if distribution is not None and name in frame.columns:
                distribution.add_values(frame[name])

    def add_confidence(self, values: Any) -> None:
        if self.confidence is not None:
            self.confidence.add_values(values)

    def add_sketch(self, sketch: Any) -> None:
        """Add a browser's sketch (module docstring), all of it or, when any part doesn't fit, none of it."""
        if not isinstance(sketch, Mapping) or not set(sketch) <= {"features", CONFIDENCE}:
            raise SampleError("a sketch must be an object with `features` and optionally `confidence`")
        features = sketch.get("features", {})
        if not isinstance(features, Mapping):
            raise SampleError("sketch: features must be an object keyed by feature")
        added = []
        for name, entry in features.items():
            if name not in self.features:
                raise SampleError(f"sketch: {name!r} is not a feature of this model; it has {', '.join(self.features)}")
            if self.features[name] is None:
                raise SampleError(f"sketch: {name!r} has no training buckets to count into ({self.reasons[name]})")
            added.append((self.features[name], self.features[name]._sketch_counts(entry, f"sketch: {name}")))
        if CONFIDENCE in sketch:
            if self.confidence is None:
                raise SampleError("sketch: confidence given for a model without probabilities")
            added.append((self.confidence, self.confidence._sketch_counts(sketch[CONFIDENCE], "sketch: confidence")))
        for distribution, counts in added:
            distribution.counts += counts

    def merge(self, other: Profile) -> Profile:
        merged = {name: d.merge(other.features[name]) if d else None for name, d in self.features.items()}
        confidence = self.confidence.merge(other.confidence) if self.confidence else None
        return Profile(merged, confidence, self.reasons)

    def to_sketch(self) -> dict:
        sketch: dict = {"features": {n: d.to_sketch() for n, d in self.features.items() if d is not None and d.total}}
        if self.confidence is not None and self.confidence.total:
            sketch[CONFIDENCE] = {"counts": [int(c) for c in self.confidence.counts[:-1]]}
        return sketch


# ---------------------------------------------------------------- the verdict

@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str  # numeric, categorical, confidence, or unknown
    psi: Optional[float]
    threshold: float
    verdict: str  # ok, drift or unknown
    reason: str  # why unknown ("" otherwise)
    buckets: tuple[str, ...]
    training: tuple[int, ...]
    live: tuple[int, ...]
    training_summary: str
    live_summary: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "psi": self.psi, "threshold": self.threshold,
                "verdict": self.verdict, "reason": self.reason or None, "buckets": list(self.buckets),
                "training": list(self.training), "live": list(self.live),
                "training_summary": self.training_summary, "live_summary": self.live_summary}


@dataclass(frozen=True)
class DriftReport:
    model: str
    version: str
    rows: int  # live rows counted
    rejected: int  # of those, rows the model refused (counted in the features, not in the confidence)
    features: tuple[FeatureDrift, ...]
    confidence: Optional[FeatureDrift]

    @property
    def drifted(self) -> tuple[str, ...]:
        """The features (and `confidence`) whose PSI is above their threshold."""
        return tuple(f.name for f in (*self.features, self.confidence) if f is not None and f.verdict == "drift")

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "rows": self.rows, "rejected": self.rejected,
                "epsilon": EPSILON, "drifted": list(self.drifted), "features": [f.to_dict() for f in self.features],
                "confidence": self.confidence.to_dict() if self.confidence else None}


def thresholds_for(training: Profile, threshold: float = DEFAULT_THRESHOLD,
                   per_feature: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each feature's threshold (and the confidence's), checked: OptionError names an unknown feature or a
    threshold that isn't a number above 0."""
    for key, value in [("--threshold", threshold), *((f"--threshold-for {k}", v) for k, v in (per_feature or {}).items())]:
        if not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise OptionError(f"{key}: {value!r} is not a PSI threshold; give a number above 0, such as 0.2")
    names = [*training.features, *([CONFIDENCE] if training.confidence else [])]
    unknown = [k for k in per_feature or {} if k not in names]
    if unknown:
        raise OptionError(f"--threshold-for {unknown[0]}: the model has no feature {unknown[0]!r}; it has "
                          f"{', '.join(names)}")
    return {name: float((per_feature or {}).get(name, threshold)) for name in names}


def compare(training: Profile, live: Profile, *, threshold: float = DEFAULT_THRESHOLD,
            thresholds: Mapping[str, float] | None = None, model: str = "", version: str = "", rows: int = 0,
            rejected: int = 0, min_rows: int = DEFAULT_MIN_ROWS) -> DriftReport:
    """The drift of `live` against `training`: PSI and a verdict per feature and for the confidence. A feature
    with fewer than min_rows live values is `unknown`: ten rows out of ten buckets always look drifted."""
    limits = thresholds_for(training, threshold, thresholds)
    features = tuple(_verdict(name, d, live.features[name], limits[name], training.reasons.get(name, ""),
                              min_rows=min_rows) for name, d in training.features.items())
    confidence = (_verdict(CONFIDENCE, training.confidence, live.confidence, limits[CONFIDENCE], "", "confidence",
                           min_rows=min_rows) if training.confidence else None)
    return DriftReport(model, version, rows, rejected, features, confidence)


def _verdict(name: str, training: Optional[Distribution], live: Optional[Distribution], limit: float, reason: str,
             kind: str = "", min_rows: int = 0) -> FeatureDrift:
    if training is None or live is None:
        return FeatureDrift(name, "unknown", None, limit, "unknown", reason, (), (), (), "", "")
    value = psi(training, live)
    if value is None:
        reason = "no live values of it" if not live.total else "no training values of it"
    verdict = "unknown" if value is None else "drift" if value > limit else "ok"
    if value is not None and live.total < min_rows:
        verdict, reason = "unknown", (f"only {live.total} live values: too few for PSI to mean much (at least "
                                      f"{min_rows}, --min-rows)")
    return FeatureDrift(name, kind or training.kind, value, limit, verdict, "" if verdict != "unknown" else reason,
                        tuple(training.labels()), tuple(int(c) for c in training.counts),
                        tuple(int(c) for c in live.counts), training.summary(), live.summary())


def require_no_drift(report: DriftReport) -> None:
    """Raise DriftDetectedError (exit 4) naming what drifted, if anything did."""
    if report.drifted:
        worst = {f.name: f for f in (*report.features, report.confidence) if f is not None}
        named = ", ".join(f"{n} (PSI {worst[n].psi:.2f} > {worst[n].threshold:g})" for n in report.drifted)
        raise DriftDetectedError(f"{report.model} version {report.version} has drifted from its training data: "
                                 f"{named}. Look at what changed upstream of these inputs, or retrain on recent data.")


# ---------------------------------------------------------------- offline

def drift_file(bundle_dir: str | Path, data: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
               thresholds: Mapping[str, float] | None = None, chunk_rows: int = 20_000,
               min_rows: int = DEFAULT_MIN_ROWS,
               allow_unverified: bool = False, progress: Progress = quiet) -> DriftReport:
    """Drift of a data file (CSV, Parquet, JSON lines; streamed) against the bundle's training data, with the
    confidence of the served model's own predictions on it."""
    from .batch import ChunkReader, predict_chunk
    from .bundle import read_bundle
    from .server.repository import load_served

    data = Path(data)
    if not data.is_file():
        raise InputFileError(f"no data file at {data}")
    model = load_served(read_bundle(bundle_dir, verify=False), allow_unverified=allow_unverified)
    training = Profile.training(model.bundle)
    thresholds_for(training, threshold, thresholds)  # a bad option fails before the data is read
    live = training.empty()
    rows = rejected = 0
    progress(f"comparing {data} with the training data of {model.bundle.name} version {model.bundle.version}")
    for chunk in ChunkReader(data, model, chunk_rows):
        outputs, faults = predict_chunk(model, chunk)
        live.add_table(chunk.frame)
        if CONFIDENCE in outputs.columns:
            live.add_confidence(outputs[CONFIDENCE])
        rows += len(chunk.frame)
        rejected += len(faults)
    return compare(training, live, threshold=threshold, thresholds=thresholds, model=model.bundle.name,
                   version=model.bundle.version, rows=rows, rejected=rejected, min_rows=min_rows)

