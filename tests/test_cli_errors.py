"""Bad input gets exit 1 and a one-paragraph message with no traceback."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cli import app
from conftest import REPO, iris_frame, save_model

runner = CliRunner()


def assert_clean_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in message, message


def export(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def test_missing_model_file(tmp_path):
    assert_clean_error(export(tmp_path / "nope.skops", "--out", tmp_path / "b", "--sample", tmp_path / "x.csv"),
                       "model file not found", "nope.skops")


def test_missing_sample_file(iris_model, tmp_path):
    _, model_path, _ = iris_model
    assert_clean_error(export(model_path, "--out", tmp_path / "b", "--sample", tmp_path / "x.csv"), "sample file not found")


def test_unsupported_estimator_is_named_with_what_to_do(tmp_path):
    from sklearn.semi_supervised import LabelSpreading

    X, y = iris_frame()
    model_path, sample = save_model(LabelSpreading().fit(X, y), tmp_path, "ls", X)
    result = export(model_path, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(result, "LabelSpreading can't be exported: skl2onnx has no ONNX converter for it",
                       "supported_converters", "update_registered_converter")
    assert "RandomForestClassifier" not in result.output  # not a list of ~150 names
    assert not (tmp_path / "b").exists()


def test_pickle_without_allow_pickle_is_refused_and_explained(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_frame()
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(X, y)))
    sample = tmp_path / "s.csv"
    X.to_csv(sample, index=False)
    assert_clean_error(export(path, "--out", tmp_path / "b", "--sample", sample), "--allow-pickle", "runs", ".skops")
    allowed = export(path, "--out", tmp_path / "b", "--sample", sample, "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output


def test_sample_whose_columns_dont_match(iris_model, tmp_path):
    _, model_path, _ = iris_model
    X, y = iris_frame()
    bad = X.rename(columns={"petal width (cm)": "petal_width"}).assign(species=y)
    sample = tmp_path / "bad.csv"
    bad.to_csv(sample, index=False)
    assert_clean_error(export(model_path, "--out", tmp_path / "b", "--sample", sample),
                       "missing column(s) 'petal width (cm)'", "unexpected column(s) 'petal_width', 'species'")


def test_sample_with_wrong_width_npy(iris_model, tmp_path):
    import numpy as np

    _, model_path, _ = iris_model
    sample = tmp_path / "s.npy"
    np.save(sample, np.zeros((5, 3)))
    assert_clean_error(export(model_path, "--out", tmp_path / "b", "--sample", sample), "3 columns", "trained on 4")


def test_corrupt_skops(tmp_path):
    path = tmp_path / "broken.skops"
    path.write_bytes(b"PK\x03\x04 this is not a real archive")
    sample = tmp_path / "s.csv"
    iris_frame()[0].to_csv(sample, index=False)
    assert_clean_error(export(path, "--out", tmp_path / "b", "--sample", sample), "broken.skops", "not a valid .skops")


def test_untrusted_skops_type_is_named_and_can_be_trusted(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from custom_steps import Doubler

    X, y = iris_frame()
    model_path, sample = save_model(make_pipeline(Doubler(), LogisticRegression(max_iter=500)).fit(X, y), tmp_path, "c", X)
    refused = export(model_path, "--out", tmp_path / "b", "--sample", sample)
    assert_clean_error(refused, "custom_steps.Doubler", "--trust custom_steps.Doubler")
    # trusted, it loads; skl2onnx then has no converter for the custom step, and says so
    trusted = export(model_path, "--out", tmp_path / "b", "--sample", sample, "--trust", "custom_steps.Doubler")
    assert_clean_error(trusted, "Doubler (a step of Pipeline(Doubler, LogisticRegression)) can't be exported",
                       "It comes from 'custom_steps', not scikit-learn", "update_registered_converter")


def test_tampered_bundle_file_is_named(iris_bundle):
    golden = iris_bundle.path / "golden.json"
    data = json.loads(golden.read_text())
    data["outputs"]["label"][0] = 2
    golden.write_text(json.dumps(data))
    assert_clean_error(runner.invoke(app, ["check", str(iris_bundle.path)]), "golden.json", "does not match manifest.json")


def test_unwritable_out(iris_model, tmp_path):
    _, model_path, sample = iris_model
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits; a file in the way is unwritable for all
            blocker = tmp_path / "file"
            blocker.write_text("x")
            out = blocker / "bundle"
        else:
            out = locked / "bundle"
        assert_clean_error(export(model_path, "--out", out, "--sample", sample), "cannot write the bundle", str(out))
    finally:
        locked.chmod(0o700)


def test_out_that_is_a_bundle_needs_force(iris_bundle, iris_model):
    _, model_path, sample = iris_model
    assert_clean_error(export(model_path, "--out", iris_bundle.path, "--sample", sample), "--force")


def test_invalid_manifest_names_the_field(iris_bundle):
    manifest = iris_bundle.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["task"] = "ranking"  # not a task edgeport knows
    manifest.write_text(json.dumps(data))
    assert_clean_error(runner.invoke(app, ["check", str(iris_bundle.path)]), "field task")


def test_help_is_fast_and_does_not_import_tensorflow():
    code = ("import sys, time; t=time.perf_counter(); from typer.testing import CliRunner; import cli; "
            "r = CliRunner().invoke(cli.app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('tensorflow', 'onnxruntime', 'sklearn', 'skl2onnx', 'torch') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_installed_console_script_runs(iris_model, tmp_path):
    _, model_path, sample = iris_model
    script = Path(sys.executable).with_name("edgeport")
    result = subprocess.run([str(script), "export", str(model_path), "--sample", str(sample), "--out", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout
    assert "converting" in result.stderr  # progress goes to stderr
    bad = subprocess.run([str(script), "check", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "bundle directory not found" in bad.stderr


def test_a_tiny_sample_exports_with_a_warning_that_it_proves_little(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_frame()
    model_path, sample = save_model(LogisticRegression(max_iter=500).fit(X, y), tmp_path, "m", X.iloc[:5])
    result = export(model_path, "--out", tmp_path / "b", "--sample", sample)
    assert result.exit_code == 0, result.output
    assert "warning: the sample has 5 rows: parity on so few rows proves little" in result.output, result.output
    enough, _ = save_model(LogisticRegression(max_iter=500).fit(X, y), tmp_path, "n", X.iloc[:20])
    quiet = export(enough, "--out", tmp_path / "c", "--sample", tmp_path / "n.csv")
    assert quiet.exit_code == 0 and "warning:" not in quiet.output, quiet.output


def test_a_quantization_that_made_the_model_bigger_is_a_warning_not_a_saving():
    from edgeport.export import export_warnings

    grew = {"mode": "int8", "float_weight_bytes": 2048, "quantized_weight_bytes": 2090, "saved_fraction": -0.0205}
    (warning,) = export_warnings(200, grew)
    assert "made the weights bigger" in warning and "2.0 KB → 2.0 KB" in warning and "without --quantize" in warning
    assert export_warnings(200, {**grew, "quantized_weight_bytes": 600, "saved_fraction": 0.7}) == ()


def test_load_options_for_another_kind_of_file_are_refused_not_ignored(iris_model, tmp_path):
    """--trust is for .skops types and --allow-op for SavedModel ops: on any other file they would allow nothing."""
    import joblib

    from sklearn.linear_model import LogisticRegression

    X, y = iris_frame()
    pickled = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), pickled)
    _, skops_path, sample = iris_model
    trust = export(pickled, "--allow-pickle", "--out", tmp_path / "a", "--sample", sample, "--trust", "x.Y")
    assert trust.exit_code == 2 and "--trust applies to .skops files" in trust.output, trust.output
    allow_op = export(skops_path, "--out", tmp_path / "b", "--sample", sample, "--allow-op", "WriteFile")
    assert allow_op.exit_code == 2 and "--allow-op applies to TensorFlow SavedModel" in allow_op.output, allow_op.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
