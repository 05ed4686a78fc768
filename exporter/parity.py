"""The parity comparison: pure numpy, no runtime inside.

Every output is compared before anything is decided, so one failure never hides
another. Tolerances are explicit (`|candidate - reference| <= atol + rtol*|reference|`,
never numpy's hidden defaults). Classifier labels must agree exactly, except on
ties: where the reference's top probabilities are within atol, any of the tied
classes passes, and the report counts such rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import EdgeportError, ParityError, ParityUndecidedError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):  # NaN would make every comparison pass
                raise ValueError(f"{name} must be a finite number, 0 or more; got {value}")


@dataclass(frozen=True)
class OutputDiff:
    """How one output of a runtime compares with the reference."""

    role: str
    passed: bool
    shape: tuple[int, ...]
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    worst_row: int | None = None
    mismatched_rows: int = 0
    ties: int = 0
    note: str = ""


@dataclass(frozen=True)
class RuntimeResult:
    """One runtime's verdict: its per-output diffs, or the error that stopped it."""

    runtime: str
    status: str  # "passed", "failed", "error", "not_applicable"
    outputs: tuple[OutputDiff, ...] = ()
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    diagnostics: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "not_applicable")


@dataclass(frozen=True)
class ParityReport:
    """The whole verdict: one section per runtime. `passed` only if every runtime passed."""

    bundle: str
    reference: str
    tolerance: Tolerance
    runtimes: tuple[RuntimeResult, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every runtime passed or does not apply, and at least one actually compared outputs."""
        return self.verdict == "passed"

    @property
    def verdict(self) -> str:
        """passed; failed (some runtime's numbers differ beyond the tolerance: the only parity failure);
        error (nothing differs, but a runtime could not run); nothing_compared (no runtime applied)."""
        statuses = {r.status for r in self.runtimes}
        if "failed" in statuses:
            return "failed"
        if "error" in statuses:
            return "error"
        return "passed" if "passed" in statuses else "nothing_compared"

    def failure(self, subject: str, kept: str | None = None) -> EdgeportError | None:
        """The error this report means for `subject`, or None if it passed. Only differing numbers are a
        ParityError (exit 3); a runtime that could not run, or a gate that compared nothing, decided nothing
        about parity and says so (ParityUndecidedError, exit 1)."""
        where = f"; the bundle is kept at {kept} for inspection" if kept else ""
        errored = [r for r in self.runtimes if r.status == "error"]
        also = "; " + "; ".join(f"the {r.runtime} runtime could not run: {r.error}" for r in errored) if errored else ""
        if self.verdict == "failed":
            differ = ", ".join(r.runtime for r in self.runtimes if r.status == "failed")
            return ParityError(f"parity failed for {subject}: the outputs in {differ} differ from {self.reference} "
                               f"beyond atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g} (the table above "
                               f"says where){also}{where}")
        if self.verdict == "error":
            names = ", ".join(r.runtime for r in errored)
            return ParityUndecidedError(
                f"parity of {subject} is undecided: {also[2:]}. No outputs were compared in {names}, so this is not a "
                f"parity failure: fix what stopped the runtime (the table above shows its messages) and check again"
                f"{where}")
        if self.verdict == "nothing_compared":
            applies = "; ".join(f"{r.runtime}: {r.error}" for r in self.runtimes if r.error)
            return ParityUndecidedError(
                f"nothing was compared for {subject}: no runtime asked for applies to it ({applies}). Choose a runtime "
                f"that does with -r, or leave -r out for the bundle's defaults{where}")
        return None

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"passed": self.passed, **data}

    def summary(self) -> dict:
        """The short form stored in manifest.json's `parity` field."""
        return {
            "passed": self.passed,
            "reference": self.reference,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "runtimes": {r.runtime: r.status for r in self.runtimes},
        }


def compare_outputs(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    tolerance: Tolerance,
    classes: Sequence[Any] | None = None,
) -> tuple[OutputDiff, ...]:
    """Compare every output role present in `reference` with `candidate`."""
    diffs = []
    for role, ref in reference.items():
        if role not in candidate:
            diffs.append(OutputDiff(role, False, tuple(np.shape(ref)), note=f"runtime produced no {role!r} output"))
        elif role == "label":
            diffs.append(_compare_labels(ref, candidate[role], reference.get("probabilities"), tolerance, classes))
        else:
            diffs.append(_compare_numeric(role, ref, candidate[role], tolerance))
    return tuple(diffs)


def _compare_numeric(role: str, reference: Any, candidate: Any, tol: Tolerance) -> OutputDiff:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.size == cand.size and ref.shape != cand.shape and ref.shape[:1] == cand.shape[:1]:
        cand = cand.reshape(ref.shape)  # (n,) against (n, 1) is the same data
    if ref.shape != cand.shape:
        return OutputDiff(role, False, tuple(cand.shape), note=f"shape {tuple(cand.shape)} differs from reference {tuple(ref.shape)}")
    if ref.size == 0:
        return OutputDiff(role, True, tuple(ref.shape))
    both_nan = np.isnan(ref) & np.isnan(cand)
    abs_diff = np.where(both_nan, 0.0, np.abs(cand - ref))
    abs_diff = np.where(np.isnan(abs_diff), np.inf, abs_diff)
    allowed = tol.atol + tol.rtol * np.abs(np.nan_to_num(ref))
    bad = ~(abs_diff <= allowed)  # NaN anywhere (a tolerance, a diff) is a failure, never a silent pass
    # relative diff only where the reference is big enough for it to mean something
    meaningful = np.abs(ref) > tol.atol
    rel = np.where(meaningful, abs_diff / np.where(meaningful, np.abs(ref), 1.0), 0.0)
    per_row_abs = abs_diff.reshape(len(ref), -1).max(axis=1)
    bad_rows = bad.reshape(len(ref), -1).any(axis=1)
    return OutputDiff(
        role=role,
        passed=not bad.any(),
        shape=tuple(ref.shape),
        max_abs_diff=_finite(abs_diff.max()),
        max_rel_diff=_finite(rel.max()),
        worst_row=int(per_row_abs.argmax()),
        mismatched_rows=int(bad_rows.sum()),
    )


def _compare_labels(reference: Any, candidate: Any, probabilities: Any, tol: Tolerance, classes: Sequence[Any] | None) -> OutputDiff:
    ref = [_label_key(v) for v in np.asarray(reference, dtype=object).ravel()]
    cand = [_label_key(v) for v in np.asarray(candidate, dtype=object).ravel()]
    if len(ref) != len(cand):
        return OutputDiff("label", False, (len(cand),), note=f"{len(cand)} labels for {len(ref)} reference rows")
    tied_sets = _tied_classes(probabilities, tol, classes) if probabilities is not None and classes else {}
    mismatched, ties, first_bad = 0, 0, None
    for row, (r, c) in enumerate(zip(ref, cand)):
        if row in tied_sets:
            ties += 1
            ok = c in tied_sets[row]
        else:
            ok = r == c
        if not ok:
            mismatched += 1
            first_bad = row if first_bad is None else first_bad
    note = f"{mismatched} of {len(ref)} labels differ" if mismatched else ""
    return OutputDiff("label", mismatched == 0, (len(ref),), worst_row=first_bad, mismatched_rows=mismatched, ties=ties, note=note)


def _tied_classes(probabilities: Any, tol: Tolerance, classes: Sequence[Any]) -> dict[int, set[str]]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or probs.shape[1] < 2:
        return {}
    keys = [_label_key(c) for c in classes]
    top = probs.max(axis=1, keepdims=True)
    near = probs >= top - tol.atol
    return {row: {keys[j] for j in np.flatnonzero(near[row])} for row in np.flatnonzero(near.sum(axis=1) > 1)}


def _label_key(value: Any) -> str:
    """Labels from sklearn, onnxruntime and JSON compare equal when they name the same class."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
