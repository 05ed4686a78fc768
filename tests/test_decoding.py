"""The one Python decoder against the shared corpus (tests/corpus/decoding.json), which the JS client's
buildInputs must also pass (web_demo/test/decoding.test.mjs): the same verdict, code, row and field, and for
accepted rows the same tensors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

CORPUS = json.loads((Path(__file__).parent / "corpus" / "decoding.json").read_text())
MARKERS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def native(value):
    """The corpus with {"$number": "NaN" | "Infinity" | "-Infinity"} replaced by the float it stands for."""
    if isinstance(value, dict):
        if set(value) == {"$number"}:
            return MARKERS[value["$number"]]
        return {k: native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [native(v) for v in value]
    return value


@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["id"] for c in CORPUS["cases"]])
def test_the_python_decoder_gives_each_corpus_case_its_verdict(case):
    from edgeport.bundle import InputSpec
    from edgeport.decoding import feeds_from_rows
    from edgeport.errors import RowValidationError

    inputs = [InputSpec.from_dict(i) for i in case["inputs"]]
    rows = native(case["rows"])
    if case["verdict"] == "refuse":
        with pytest.raises(RowValidationError) as caught:
            feeds_from_rows(inputs, case["layout"], rows)
        error = caught.value
        assert error.code == case["code"], str(error)
        if "row" in case:
            assert f"row {case['row']}" in str(error) and error.row == case["row"], str(error)
        if "field" in case:
            assert case["field"] in str(error) and error.field == case["field"], str(error)
        return
    feeds = feeds_from_rows(inputs, case["layout"], rows)
    assert set(feeds) == set(case["tensors"])
    for name, expected in case["tensors"].items():
        got = feeds[name]
        assert list(got.shape) == expected["shape"], name
        want = native(expected["data"])
        if expected["dtype"] == "string":
            assert got.dtype == object and got.ravel().tolist() == want, name
            continue
        assert got.dtype == {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64}[expected["dtype"]], name
        dtype = np.float32 if expected["dtype"] == "float32" else got.dtype
        np.testing.assert_array_equal(got.ravel(), np.array(want, dtype=dtype), err_msg=name)  # NaN equals NaN


def test_the_corpus_covers_every_layout_dtype_and_code():
    cases = CORPUS["cases"]
    assert {c["layout"] for c in cases} == {"matrix", "columns", "tensors"}
    assert {i["dtype"] for c in cases for i in c["inputs"]} == {"float32", "float64", "int32", "int64", "string"}
    assert {c["code"] for c in cases if c["verdict"] == "refuse"} == {
        "rows", "row-type", "extra-column", "missing-column", "row-length", "type", "missing-value", "range"}


@pytest.mark.parametrize("bad,code", [(math.nan, "missing-value"), (math.inf, "range"), (1e39, "range"),
                                      ("1", "type"), (True, "type"), (None, "missing-value")])
@pytest.mark.parametrize("width", [4, 64])
def test_many_values_checked_in_bulk_get_the_verdict_each_gets_alone(bad, code, width):
    """Above a few values the decoder checks floats in bulk with numpy; the verdict must not depend on it."""
    from edgeport.bundle import InputSpec
    from edgeport.decoding import feeds_from_rows
    from edgeport.errors import RowValidationError

    spec = InputSpec("x", "float32", (None, width))
    row = [0.5] * width
    row[width - 1] = bad
    with pytest.raises(RowValidationError) as caught:
        feeds_from_rows([spec], "matrix", [[0.25] * width, row])
    assert caught.value.code == code and caught.value.row == 1 and f"value {width - 1}" in str(caught.value)
    assert feeds_from_rows([spec], "matrix", [[0.25] * width])["x"].shape == (1, width)
