"""The pure comparison: tolerances, every output, ties, shapes, NaN."""
import numpy as np

from edgeport.parity import Tolerance, compare_outputs

TOL = Tolerance(atol=1e-5, rtol=1e-4)


def by_role(diffs):
    return {d.role: d for d in diffs}


def test_identical_outputs_pass():
    ref = {"label": [0, 1], "probabilities": [[0.9, 0.1], [0.2, 0.8]]}
    diffs = by_role(compare_outputs(ref, ref, TOL, [0, 1]))
    assert diffs["label"].passed and diffs["probabilities"].passed
    assert diffs["probabilities"].max_abs_diff == 0.0


def test_every_output_is_compared_before_deciding():
    ref = {"label": [0, 1], "probabilities": [[0.9, 0.1], [0.2, 0.8]]}
    cand = {"label": [1, 1], "probabilities": [[0.9, 0.1], [0.5, 0.5]]}
    diffs = by_role(compare_outputs(ref, cand, TOL, [0, 1]))
    assert not diffs["label"].passed and diffs["label"].worst_row == 0
    assert not diffs["probabilities"].passed and diffs["probabilities"].worst_row == 1
    assert np.isclose(diffs["probabilities"].max_abs_diff, 0.3)


def test_tolerance_is_explicit_atol_plus_rtol():
    ref = {"value": [[100.0], [0.0]]}
    inside = {"value": [[100.0 + 100 * 1e-4], [1e-5]]}
    outside = {"value": [[100.0 + 100 * 1e-4 + 2e-5], [0.0]]}
    assert compare_outputs(ref, inside, TOL)[0].passed
    diff = compare_outputs(ref, outside, TOL)[0]
    assert not diff.passed and diff.mismatched_rows == 1


def test_tied_labels_pass_either_way_and_are_counted():
    ref = {"label": ["a", "b"], "probabilities": [[0.5, 0.5], [0.1, 0.9]]}
    cand = {"label": ["b", "b"], "probabilities": [[0.5, 0.5], [0.1, 0.9]]}
    label = by_role(compare_outputs(ref, cand, TOL, ["a", "b"]))["label"]
    assert label.passed and label.ties == 1


def test_a_tie_does_not_excuse_a_class_outside_it():
    ref = {"label": ["a"], "probabilities": [[0.45, 0.45, 0.10]]}
    cand = {"label": ["c"], "probabilities": [[0.45, 0.45, 0.10]]}
    assert not by_role(compare_outputs(ref, cand, TOL, ["a", "b", "c"]))["label"].passed


def test_labels_of_different_types_compare_by_class():
    ref = {"label": np.array([0, 2], dtype=np.int64)}
    assert compare_outputs(ref, {"label": [0.0, 2.0]}, TOL)[0].passed
    assert compare_outputs({"label": np.array(["x"], dtype=object)}, {"label": [b"x"]}, TOL)[0].passed


def test_shape_mismatch_and_missing_output_fail_with_a_note():
    ref = {"probabilities": [[0.5, 0.5]], "label": [1]}
    diffs = by_role(compare_outputs(ref, {"probabilities": [[0.5, 0.25, 0.25]]}, TOL))
    assert not diffs["probabilities"].passed and "shape" in diffs["probabilities"].note
    assert not diffs["label"].passed and "no 'label'" in diffs["label"].note


def test_nan_matches_nan_but_not_a_number():
    ref = {"value": [[np.nan], [1.0]]}
    assert compare_outputs(ref, {"value": [[np.nan], [1.0]]}, TOL)[0].passed
    assert not compare_outputs(ref, {"value": [[0.0], [1.0]]}, TOL)[0].passed


def test_a_report_where_no_runtime_applies_does_not_pass():
    from edgeport.parity import ParityReport, RuntimeResult

    not_applicable = RuntimeResult("python", "not_applicable", error="tfjs bundle")
    assert not ParityReport("b", "golden", TOL, (not_applicable,)).passed
    compared = RuntimeResult("node", "passed", outputs=compare_outputs({"value": [[1.0]]}, {"value": [[1.0]]}, TOL), rows=1)
    assert ParityReport("b", "golden", TOL, (not_applicable, compared)).passed
