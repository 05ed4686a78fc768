"""One input contract on every path: the typed manifest (version 2, and version 1 read as before), the server
runtime inside the parity gate, and converter options that are refused rather than swallowed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.errors import SampleError

runner = CliRunner()


def test_a_skew_in_the_servers_decoding_alone_is_caught_by_check_server(iris_bundle, churn_model, tmp_path,
                                                                         monkeypatch):
    """The fallback path is inside the parity gate: a server decoder that drops one column's value fails
    `check -r server` with exit 3, while the python runtime, which never goes through the server, still passes."""
    import edgeport.server.oip as oip
    from edgeport.export import export_model

    _, churn_path, churn_sample = churn_model
    churn = export_model(churn_path, tmp_path / "churn", sample=churn_sample).bundle
    for bundle in (iris_bundle, churn):
        clean = runner.invoke(app, ["check", str(bundle.path), "-r", "server", "-r", "python"])
        assert clean.exit_code == 0, clean.output

    original = oip.tensor_from_values

    def drops_a_column(spec, shape, flat):
        tensor = original(spec, shape, flat)
        if spec.name == "input":  # iris: one matrix input; its first column's value is lost
            tensor = tensor.copy()
            tensor[:, 0] = 0
        if spec.name == "tenure_months":  # churn: one input per column; this one's value is lost
            tensor = np.zeros_like(tensor)
        return tensor

    monkeypatch.setattr(oip, "tensor_from_values", drops_a_column)
    for bundle in (iris_bundle, churn):
        skewed = runner.invoke(app, ["check", str(bundle.path), "-r", "server", "-r", "python", "--report",
                                     str(tmp_path / f"{bundle.name}.json")])
        assert skewed.exit_code == 3, skewed.output
        report = json.loads((tmp_path / f"{bundle.name}.json").read_text())
        statuses = {r["runtime"]: r["status"] for r in report["runtimes"]}
        assert statuses == {"server": "failed", "python": "passed"}, skewed.output


def test_the_server_runtime_reports_a_refusal_by_the_server_as_undecided_not_as_differing_numbers(iris_bundle, tmp_path, monkeypatch):
    import edgeport.server.oip as oip
    from edgeport.errors import RowValidationError

    def refuses(spec, shape, flat):
        raise RowValidationError("refused by a stricter server", code="type")

    monkeypatch.setattr(oip, "tensor_from_values", refuses)
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "server"])
    assert result.exit_code == 1, result.output  # no outputs were compared: not a parity failure (exit 3)
    assert "answered 400" in result.output and "refused by a stricter server" in result.output
    assert "undecided" in result.output and "not a parity failure" in result.output


def version_1(manifest: dict) -> dict:
    """A manifest as edgeport wrote it before version 2: no layout, no server_model_file, and `nullable` only
    where the scikit-learn converter set it (numeric inputs)."""
    old = {k: v for k, v in manifest.items() if k not in ("layout", "server_model_file")}
    old["manifest_version"] = 1
    old["inputs"] = [{k: v for k, v in i.items() if k != "nullable" or i["dtype"] != "string"}
                     for i in manifest["inputs"]]
    return old


def test_a_version_1_bundle_still_loads_checks_and_serves(iris_bundle, churn_model, tmp_path):
    from edgeport.bundle import read_bundle
    from edgeport.export import export_model

    _, churn_path, churn_sample = churn_model
    churn = export_model(churn_path, tmp_path / "churn", sample=churn_sample).bundle
    from conftest import rehash_bundle

    for bundle, layout in ((iris_bundle, "matrix"), (churn, "columns")):
        # version 1 had no golden rows with a missing string (those are version 2's rows for nullable inputs)
        golden_path = bundle.path / "golden.json"
        golden = json.loads(golden_path.read_text())
        keep = [i for i, row in enumerate(golden["rows"]) if not (isinstance(row, dict) and None in (
            row.get(spec.key) for spec in bundle.inputs if spec.dtype == "string"))]
        golden = {"rows": [golden["rows"][i] for i in keep],
                  "outputs": {role: [values[i] for i in keep] for role, values in golden["outputs"].items()}}
        golden_path.write_text(json.dumps(golden))
        rehash_bundle(bundle.path)
        path = bundle.path / "manifest.json"
        path.write_text(json.dumps(version_1(json.loads(path.read_text())), indent=2))
        read = read_bundle(bundle.path)
        assert read.manifest.layout == layout and read.manifest.server_model_file == "model.onnx"
        assert all(i.nullable is False for i in read.inputs if i.dtype == "string")
        result = runner.invoke(app, ["check", str(bundle.path), "-r", "python", "-r", "server"])
        assert result.exit_code == 0, result.output


def test_an_unknown_manifest_version_is_refused_with_how_to_re_export(iris_bundle):
    path = iris_bundle.path / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "manifest_version": 7}))
    result = runner.invoke(app, ["check", str(iris_bundle.path)])
    assert result.exit_code == 1, result.output
    assert "manifest_version 7" in result.output and "Re-export" in result.output
    assert "Traceback" not in result.output


def test_the_manifest_round_trips_through_its_type(iris_bundle):
    from edgeport.bundle import Manifest

    data = json.loads((iris_bundle.path / "manifest.json").read_text())
    assert data["manifest_version"] == 2 and data["layout"] == "matrix"
    assert all("nullable" in i for i in data["inputs"]) and data["server_model_file"] == data["model_file"]
    assert Manifest.from_dict(data).to_dict() == data


def test_an_option_the_converter_does_not_take_is_refused_not_ignored(iris_model, tmp_path):
    _, model_path, sample_path = iris_model
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(out),
                                 "--classes", "a,b,c"])
    assert result.exit_code == 2, result.output
    assert "--classes does not apply to sklearn models" in result.output and "keras" in result.output
    assert not out.exists()
    quantized = runner.invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(out),
                                    "--quantize", "int8"])
    assert quantized.exit_code == 2 and "--quantize does not apply" in quantized.output, quantized.output


def test_rows_the_inputs_refuse_are_a_data_error_not_a_parity_failure(iris_model, iris_bundle, tmp_path):
    """A parity failure means the numbers differ: --data with a missing value where the model takes none exits 1,
    naming the row and the column, before any runtime runs."""
    from edgeport.bundle import MANIFEST

    model, model_path, sample_path = iris_model
    data = tmp_path / "holes.csv"
    lines = sample_path.read_text().splitlines()
    first = lines[3].split(",")
    first[1] = ""
    data.write_text("\n".join([lines[0], lines[1], lines[2], ",".join(first)]) + "\n")
    before = (iris_bundle.path / MANIFEST).read_text()
    result = runner.invoke(app, ["check", str(iris_bundle.path), "--model", str(model_path), "--data", str(data),
                                 "-r", "python", "-r", "server"])
    assert result.exit_code == 1, result.output
    column = lines[0].split(",")[1]
    assert "row 2" in result.output and column in result.output and "No runtime was run" in result.output
    assert (iris_bundle.path / MANIFEST).read_text() == before


def test_a_missing_string_is_only_accepted_where_the_model_reads_it_as_the_empty_string(tmp_path):
    """The graph gets "" for a missing string. Where "" is a category of its own, None and "" mean different things
    to the original, so that input is not nullable; elsewhere it is, and a golden row with the value missing
    puts that path inside the parity gate."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from conftest import save_model
    from edgeport.export import export_model

    rng = np.random.default_rng(0)
    for name, plans in (("with-empty", ["", "basic", "premium"]), ("without", ["basic", "premium", "gold"])):
        frame = pd.DataFrame({"age": rng.normal(40, 10, 300), "plan": rng.choice(plans, 300)})
        target = np.where((frame.age > 40) ^ (frame.plan == plans[0]), "yes", "no")
        model = Pipeline([("pre", ColumnTransformer([("age", "passthrough", ["age"]),
                                                     ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])])),
                          ("clf", LogisticRegression())]).fit(frame, target)
        model_path, _ = save_model(model, tmp_path, name, frame)
        sample = tmp_path / f"{name}.parquet"  # parquet keeps "" (a CSV reader would read it as missing)
        frame.to_parquet(sample)
        result = export_model(model_path, tmp_path / f"{name}-bundle", sample=sample, runtimes=["python", "server"])
        plan = next(i for i in result.bundle.inputs if i.name == "plan")
        golden = result.bundle.golden()["rows"]
        if name == "with-empty":
            assert plan.nullable is False and all(r["plan"] is not None for r in golden)
        else:
            assert plan.nullable is True and any(r["plan"] is None for r in golden)
        assert result.passed, result.report.to_dict()


def test_missing_values_are_refused_where_the_graph_would_answer_differently_from_the_model(tmp_path):
    """scikit-learn's forests route NaN down a side of their own choosing; the ONNX graph doesn't. The original accepts a missing
    value, but the bundle refuses it rather than answer differently from the model (found by the golden row with a
    missing value that export now adds for every nullable input)."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    from conftest import save_model
    from edgeport.export import export_model

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    # trained without missing values, the forest still predicts on NaN: it sends it down the busier side
    model = RandomForestRegressor(n_estimators=20, random_state=0).fit(X, y)
    model_path, sample_path = save_model(model, tmp_path, "forest", X.head(100))
    said = []
    result = export_model(model_path, tmp_path / "bundle", sample=sample_path, progress=said.append)
    assert result.passed, result.report.to_dict()
    assert result.bundle.inputs[0].nullable is False
    assert any("refuses missing values" in line for line in said), said
    # a sample that holds such a missing value is told why, and what to do (not only that the row is refused)
    holed = X.head(100).copy()
    holed.iloc[3, 2] = float("nan")
    holed.to_csv(tmp_path / "holed.csv", index=False)
    with pytest.raises(SampleError) as refused:
        export_model(model_path, tmp_path / "bundle2", sample=tmp_path / "holed.csv")
    message = str(refused.value)
    assert f"row 3, {X.columns[2]!r}" in message and "would answer differently" in message, message
    assert "SimpleImputer" in message and not (tmp_path / "bundle2").exists()


def _inputs_renamed(manifest: dict) -> dict:
    return {**manifest, "inputs": [{**i, "name": "same"} for i in manifest["inputs"]]}


def _matrix_layout(manifest: dict) -> dict:
    return {**manifest, "layout": "matrix"}


def _negative_dim(manifest: dict) -> dict:
    return {**manifest, "inputs": [{**i, "shape": [None, -3]} for i in manifest["inputs"]]}


def _version_true(manifest: dict) -> dict:
    return {**manifest, "manifest_version": True}


def _task_contradicts_roles(manifest: dict) -> dict:
    return {**manifest, "task": "clustering"}  # a classifier's label and probabilities: no distances


def _role_of_another_task(manifest: dict) -> dict:
    return {**manifest, "outputs": [{**o, "role": "score"} if o["role"] == "probabilities" else o for o in manifest["outputs"]]}


def test_a_manifest_that_contradicts_itself_is_refused_naming_the_field(churn_model, tmp_path):
    """What the JS client refuses, Python refuses too, with a one-paragraph error naming the field (not a row
    error at warm-up, a 413 on every request, or an unexpected exception)."""
    from edgeport.export import export_model

    _, churn_path, churn_sample = churn_model
    bundle = export_model(churn_path, tmp_path / "churn", sample=churn_sample).bundle
    path = bundle.path / "manifest.json"
    good = json.loads(path.read_text())
    for edit, words in ((_matrix_layout, "field layout"), (_negative_dim, "shape"),
                        (_inputs_renamed, "appears more than once"), (_version_true, "manifest_version"),
                        (_task_contradicts_roles, "not 'probabilities'"), (_role_of_another_task, "not 'score'")):
        path.write_text(json.dumps(edit(good)))
        result = runner.invoke(app, ["check", str(bundle.path), "-r", "python"])
        assert result.exit_code == 1 and words in result.output, (edit.__name__, result.output)
        assert "unexpected" not in result.output and "Traceback" not in result.output


def test_a_model_onnxruntime_cannot_run_is_undecided_not_a_parity_failure(iris_bundle, tmp_path):
    """A runtime error compares no numbers: exit 1 naming the runtime's error, never exit 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import rehash_bundle

    # the graph takes what the manifest says, but fails at run time: 4 values a row don't reshape into rows of 7
    label, probabilities = (next(o for o in iris_bundle.outputs if o.role == role) for role in ("label", "probabilities"))
    number = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[probabilities.dtype]
    assert label.dtype == "int64" and iris_bundle.inputs[0].dtype == probabilities.dtype
    nodes = [helper.make_node("Reshape", ["input", "seven"], ["rows"]),
             helper.make_node("Identity", ["rows"], [probabilities.name]),
             helper.make_node("ArgMax", ["rows"], [label.name], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "fails_at_run_time",
                              [helper.make_tensor_value_info("input", number, [None, 4])],
                              [helper.make_tensor_value_info(label.name, TensorProto.INT64, [None]),
                               helper.make_tensor_value_info(probabilities.name, number, [None, 3])],
                              [numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "seven")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), iris_bundle.model_path)
    rehash_bundle(iris_bundle.path)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "python", "--report", str(report)])
    assert result.exit_code == 1, result.output
    assert "onnxruntime failed" in result.output and "not a parity failure" in result.output, result.output
    assert "UNDECIDED" in result.output and "FAILED" not in result.output, result.output
    assert json.loads(report.read_text())["runtimes"][0]["status"] == "error"


def test_a_manifest_that_contradicts_its_graph_is_a_bundle_error_in_check_and_serve(iris_bundle):
    """Found by an adversarial review: an edited manifest (an input's dtype, an output's name) passed check or
    started a server whose every answer was a 500. Both now say the bundle contradicts its model."""
    from conftest import rehash_bundle
    from edgeport.errors import BundleError
    from edgeport.server.repository import Repository

    path = iris_bundle.path / "manifest.json"
    good = json.loads(path.read_text())
    edits = {
        "in the manifest but tensor(": lambda m: {  # the other float: golden rows still fit, the graph doesn't
            **m, "inputs": [{**i, "dtype": {"float32": "float64", "float64": "float32"}[i["dtype"]]} for i in m["inputs"]]},
        "is not an output of": lambda m: {**m, "outputs": [{**o, "name": o["name"] + "_x"} for o in m["outputs"]]},
        "is string in the manifest but tensor(int64)": lambda m: {
            **m, "outputs": [{**o, "dtype": "string"} if o["role"] == "label" else o for o in m["outputs"]]},
    }
    for words, edit in edits.items():
        path.write_text(json.dumps(edit(good)))
        rehash_bundle(iris_bundle.path)
        result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "python"])
        assert result.exit_code == 1 and "contradicts its model" in result.output and words in result.output, result.output
        with pytest.raises(BundleError, match="contradicts its model"):
            Repository(iris_bundle.path, allow_unverified=True)


def test_a_manifest_nested_thousands_deep_is_a_bundle_error(iris_bundle):
    (iris_bundle.path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["check", str(iris_bundle.path)])
    assert result.exit_code == 1 and "nested too deeply" in result.output, result.output
