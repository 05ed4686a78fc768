"""The node and browser runtimes: the zoo passes, skew is caught, broken pages fail fast and clearly."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from cli import app
from conftest import assert_parity, churn_data, iris_frame, need, rehash_bundle, save_model
from edgeport.webassets import ORT_DIST, ORT_BROWSER_FILES

pytestmark = [pytest.mark.browser]
runner = CliRunner()
JS = ("node", "browser")


@pytest.fixture(autouse=True)
def js_available():
    need(shutil.which("node") is not None, "node is not on PATH (install Node.js 20)")
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")


def test_every_zoo_bundle_passes_in_node_and_chromium(zoo_export):
    from edgeport.check import check_bundle
    from zoo import zoo

    failures = {}
    for name in zoo():
        report = check_bundle(zoo_export(name)[2].bundle.path, ["python", *JS])
        try:
            assert_parity(report, ("python", *JS))
        except AssertionError as exc:
            failures[name] = str(exc)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_one_report_has_a_section_per_runtime(iris_bundle, tmp_path):
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "python", "-r", "node", "-r", "browser",
                                 "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert [r["runtime"] for r in data["runtimes"]] == ["python", "node", "browser"]
    assert all(r["status"] == "passed" and r["rows"] == 150 for r in data["runtimes"])


def _failed_roles(report_path, runtime):
    data = json.loads(report_path.read_text())
    section = next(r for r in data["runtimes"] if r["runtime"] == runtime)
    return {o["role"] for o in section["outputs"] if not o["passed"]}


@pytest.mark.parametrize("runtime", JS)
def test_swapped_model_is_caught(runtime, iris_bundle, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeport.export import export_model

    X, y = iris_frame()
    other = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500)).fit(X, y)
    other_path, sample = save_model(other, tmp_path, "other", X)
    shutil.copy(export_model(other_path, tmp_path / "o", sample=sample).bundle.model_path, iris_bundle.model_path)
    rehash_bundle(iris_bundle.path)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", runtime, "--report", str(report)])
    assert result.exit_code == 3, result.output
    assert "probabilities" in _failed_roles(report, runtime)


@pytest.mark.parametrize("runtime", JS)
def test_other_model_on_new_data_is_caught(runtime, iris_bundle, tmp_path):
    from sklearn.tree import DecisionTreeClassifier

    X, y = iris_frame()
    model_path, _ = save_model(DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y), tmp_path, "t", X)
    data = tmp_path / "new.csv"
    X.sample(n=40, random_state=1).to_csv(data, index=False)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", runtime, "--model", str(model_path),
                                 "--data", str(data), "--report", str(report)])
    assert result.exit_code == 3, result.output
    assert "probabilities" in _failed_roles(report, runtime)


@pytest.mark.parametrize("runtime", JS)
def test_different_preprocessing_is_caught(runtime, churn_model, tmp_path):
    from sklearn.preprocessing import MinMaxScaler

    from edgeport.export import export_model
    from edgeport.examples.churn import build_pipeline

    _, model_path, sample = churn_model
    bundle = export_model(model_path, tmp_path / "b", sample=sample).bundle
    frame, target = churn_data()
    skewed_path, _ = save_model(build_pipeline(scaler=MinMaxScaler()).fit(frame, target), tmp_path, "mm", frame)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(bundle.path), "-r", runtime, "--model", str(skewed_path),
                                 "--data", str(sample), "--report", str(report)])
    assert result.exit_code == 3, result.output
    assert "probabilities" in _failed_roles(report, runtime)


# ------------------------------------------------------------ broken browser inputs: a report, never a hang

def _run_browser(bundle_dir, **kwargs):
    from edgeport.bundle import read_bundle
    from edgeport.errors import RuntimeFailedError
    from edgeport.runtimes import browser

    bundle = read_bundle(bundle_dir, verify=False)  # the page must catch what the Python side would
    with pytest.raises(RuntimeFailedError) as info:
        browser.run(bundle, bundle.golden()["rows"], **kwargs)
    return info.value


def test_unfetchable_wasm_fails_with_a_report(iris_bundle):
    error = _run_browser(iris_bundle.path, block=("**/*.wasm",), timeout_s=30)
    assert "JS client failed in chromium" in str(error)
    assert any(".wasm" in line for line in error.diagnostics), error.diagnostics


def test_unfetchable_model_file_fails_with_a_report(iris_bundle):
    (iris_bundle.path / "model.onnx").unlink()
    error = _run_browser(iris_bundle.path, timeout_s=30)
    assert "model.onnx" in str(error) and "404" in str(error)


def test_model_that_fails_its_hash_is_refused_by_the_client(iris_bundle):
    with open(iris_bundle.path / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    error = _run_browser(iris_bundle.path, timeout_s=30)
    assert "IntegrityError" in str(error) and "integrity check" in str(error)


def test_a_page_that_throws_fails_within_the_timeout(iris_bundle, tmp_path, monkeypatch):
    from edgeport.runtimes import browser

    harness = tmp_path / "harness"
    harness.mkdir()
    (harness / "broken.html").write_text("<script>throw new Error('boom from the page')</script>")
    original = browser.mounts_for
    monkeypatch.setattr(browser, "mounts_for", lambda d: {**original(d), "/broken/": browser.Mount(harness)})
    error = _run_browser(iris_bundle.path, harness="/broken/broken.html", timeout_s=5)
    assert "did not finish within 5s" in str(error)
    assert any("boom from the page" in line for line in error.diagnostics), error.diagnostics


def test_browser_failure_through_check_is_undecided_with_the_reason(iris_bundle, tmp_path, monkeypatch):
    from edgeport.runtimes import browser

    original = browser.run
    monkeypatch.setattr(browser, "run", lambda b, rows: original(b, rows, block=("**/*.wasm",), timeout_s=30))
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "browser", "--report", str(report)])
    # the page never loaded the model: nothing was compared, so this is exit 1, never "outputs differ" (exit 3)
    assert result.exit_code == 1 and "could not run" in result.output and "not a parity failure" in result.output, result.output
    assert "differ" not in result.output.split("error:")[-1].replace("not a parity failure", ""), result.output
    section = json.loads(report.read_text())["runtimes"][0]
    assert section["status"] == "error" and section["diagnostics"]


# ------------------------------------------------------------ missing runtimes: exit 1 with the install hint

def test_missing_node_is_a_clear_error(iris_bundle, monkeypatch):
    monkeypatch.setattr("edgeport.webassets.shutil.which", lambda name: None)
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "node"])
    assert result.exit_code == 1 and "Node.js" in result.output and "make setup" in result.output


def test_missing_chromium_is_a_clear_error(iris_bundle, monkeypatch):
    monkeypatch.setattr("edgeport.webassets.shutil.which", lambda name: None)
    monkeypatch.delenv("EDGEPORT_CHROMIUM", raising=False)
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "browser"])
    assert result.exit_code == 1 and "apt-get install -y chromium" in result.output


def test_missing_npm_ci_is_a_clear_error(iris_bundle, monkeypatch, tmp_path):
    monkeypatch.setattr("edgeport.webassets.ORT_DIST", tmp_path / "nothing")
    result = runner.invoke(app, ["check", str(iris_bundle.path), "-r", "node"])
    assert result.exit_code == 1 and "npm ci" in result.output
