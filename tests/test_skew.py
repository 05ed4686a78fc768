"""Skew is caught: exit 3, and the report says which runtime, which output, which row."""
import json
import shutil

from typer.testing import CliRunner

from cli import app
from conftest import churn_data, iris_frame, rehash_bundle, save_model

runner = CliRunner()


def failed_outputs(report_path):
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    return {(r["runtime"], o["role"]): o for r in report["runtimes"] for o in r["outputs"] if not o["passed"]}


def test_bundle_model_swapped_for_a_differently_trained_one(iris_bundle, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeport.export import export_model

    X, y = iris_frame()
    other = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500)).fit(X, y)
    other_path, sample = save_model(other, tmp_path, "other", X)
    other_bundle = export_model(other_path, tmp_path / "other-bundle", sample=sample).bundle
    shutil.copy(other_bundle.model_path, iris_bundle.model_path)
    rehash_bundle(iris_bundle.path)  # hashes match, so only parity can tell

    report = tmp_path / "report.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "--report", str(report)])
    assert result.exit_code == 3, result.output
    failed = failed_outputs(report)
    assert ("python", "probabilities") in failed
    assert failed[("python", "probabilities")]["max_abs_diff"] > 0.01
    assert "FAIL" in result.output


def test_original_on_new_data_against_a_bundle_of_another_model(iris_bundle, tmp_path):
    from sklearn.tree import DecisionTreeClassifier

    X, y = iris_frame()
    different = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)
    model_path, _ = save_model(different, tmp_path, "tree", X)
    data = tmp_path / "new.csv"
    X.sample(n=60, random_state=3).to_csv(data, index=False)

    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "--model", str(model_path), "--data", str(data),
                                 "--report", str(report)])
    assert result.exit_code == 3, result.output
    failed = failed_outputs(report)
    assert ("python", "probabilities") in failed  # labels of a depth-1 tree are 50/50 ties, which pass either way
    assert json.loads(report.read_text())["reference"] == "tree.skops on new.csv"


def test_original_on_new_data_passes_when_it_is_the_same_model(iris_model, tmp_path):
    from edgeport.export import export_model

    _, model_path, sample = iris_model
    bundle = export_model(model_path, tmp_path / "b", sample=sample).bundle
    X, _ = iris_frame()
    data = tmp_path / "new.csv"
    (X.sample(n=50, random_state=7) + 0.05).to_csv(data, index=False)
    result = runner.invoke(app, ["check", str(bundle.path), "--model", str(model_path), "--data", str(data)])
    assert result.exit_code == 0, result.output


def test_preprocessing_that_differs_minmax_instead_of_standard(churn_model, tmp_path):
    from sklearn.preprocessing import MinMaxScaler

    from edgeport.export import export_model
    from edgeport.examples.churn import build_pipeline

    _, model_path, sample = churn_model
    bundle = export_model(model_path, tmp_path / "b", sample=sample).bundle
    frame, target = churn_data()
    skewed = build_pipeline(scaler=MinMaxScaler()).fit(frame, target)
    skewed_path, _ = save_model(skewed, tmp_path, "skewed", frame)
    report = tmp_path / "r.json"
    junit = tmp_path / "junit.xml"
    result = runner.invoke(app, ["check", str(bundle.path), "--model", str(skewed_path), "--data", str(sample),
                                 "--report", str(report), "--junit", str(junit)])
    assert result.exit_code == 3, result.output
    failed = failed_outputs(report)
    assert failed[("python", "probabilities")]["worst_row"] is not None
    assert "<failure" in junit.read_text()


def test_export_keeps_a_failing_artifact_and_exits_3(churn_model, tmp_path):
    _, model_path, sample = churn_model
    out = tmp_path / "b"
    # the churn graph runs in float32 (onnxruntime's Imputer has no double kernel), so a zero
    # tolerance cannot be met: a stand-in for skew at export time
    result = runner.invoke(app, ["export", str(model_path), "--sample", str(sample), "--out", str(out),
                                 "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 3, result.output
    assert (out / "model.onnx").exists() and (out / "parity.json").exists()
    assert "kept" in result.output
    assert json.loads((out / "manifest.json").read_text())["parity"]["passed"] is False
