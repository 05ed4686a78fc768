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


TABLE_FAULTS_OF_SHAPE = {"extra-column", "missing-column", "row-type", "row-length", "rows"}  # a table's shape rules these out


def table_case(case) -> bool:
    """A corpus case a table (CSV, Parquet) can hold: one scalar per column, in every row."""
    inputs = case["inputs"]
    if not (case["layout"] == "columns" or (case["layout"] == "matrix" and inputs[0].get("columns"))):
        return False
    keys = [i["column"] for i in inputs] if case["layout"] == "columns" else inputs[0]["columns"]
    rows = case["rows"]
    return (isinstance(rows, list) and bool(rows) and case.get("code") not in TABLE_FAULTS_OF_SHAPE
            # what a table can't hold: pandas' string dtype refuses a lone surrogate, and holds NaN as a missing value
            and "surrogate" not in case["id"] and case["id"] != "columns-string-nan-is-not-missing"
            and all(isinstance(r, dict) and list(r) == keys and not any(isinstance(v, (list, dict)) and "$number" not in v
                                                                          for v in r.values()) for r in rows))


@pytest.mark.parametrize("case", [c for c in CORPUS["cases"] if table_case(c)],
                         ids=[c["id"] for c in CORPUS["cases"] if table_case(c)])
def test_the_table_decoder_agrees_with_the_row_decoder_on_each_corpus_case(case):
    """edgeport predict decodes whole columns at once (feeds_from_table): same verdicts, codes, rows, fields, tensors."""
    import pandas as pd

    from edgeport.bundle import InputSpec
    from edgeport.decoding import feeds_from_rows, feeds_from_table
    from edgeport.errors import RowValidationError

    inputs = [InputSpec.from_dict(i) for i in case["inputs"]]
    rows = native(case["rows"])
    feeds, good, faults = feeds_from_table(inputs, case["layout"], pd.DataFrame(rows), first_row=0)
    if case["verdict"] == "refuse":
        assert faults, "the table decoder accepted what the row decoder refuses"
        first = faults[0]
        with pytest.raises(RowValidationError) as caught:
            feeds_from_rows(inputs, case["layout"], rows)
        assert (first.code, first.row, first.field, str(first)) == (caught.value.code, caught.value.row, caught.value.field,
                                                                    str(caught.value))
        return
    assert not faults and good.all()
    expected = feeds_from_rows(inputs, case["layout"], rows)
    assert set(feeds) == set(expected)
    for name in expected:
        assert feeds[name].dtype == expected[name].dtype and feeds[name].shape == expected[name].shape, name
        if expected[name].dtype == object:
            assert feeds[name].tolist() == expected[name].tolist(), name
        else:
            np.testing.assert_array_equal(feeds[name], expected[name], err_msg=name)


def test_the_table_decoder_numbers_rows_from_where_the_chunk_starts_and_keeps_the_good_ones():
    import pandas as pd

    from edgeport.bundle import InputSpec
    from edgeport.decoding import feeds_from_table

    inputs = [InputSpec.from_dict({"name": "x", "column": "x", "dtype": "float32", "shape": [None, 1], "nullable": False}),
              InputSpec.from_dict({"name": "c", "column": "c", "dtype": "string", "shape": [None, 1], "nullable": False})]
    table = pd.DataFrame({"x": [1.5, None, "7", 2.0, 1e39], "c": ["a", "b", "c", None, "e"], "id": [10, 11, 12, 13, 14]})
    feeds, good, faults = feeds_from_table(inputs, "columns", table, first_row=1000)
    assert good.tolist() == [True, False, False, False, False]
    assert [(f.row, f.field, f.code) for f in faults] == [(1001, "x", "missing-value"), (1002, "x", "type"),
                                                          (1003, "c", "missing-value"), (1004, "x", "range")]
    assert feeds["x"].tolist() == [[1.5]] and feeds["c"].tolist() == [["a"]]
