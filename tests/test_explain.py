"""Explanations (exporter/explain.py): shap over the served ONNX session adds up to what that session answers, per
original column; the endpoint's refusals; a real server; the demo's "Why?" bars in Chromium."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import (ServerProcess, artifact_dir, churn_data, iris_frame, need, rehash_bundle, save_model,
                      wait_for_browser_runtime)
from test_demo_e2e import csp_violations, page  # noqa: F401  (page: the demo tests' Chromium page fixture)

CHURN_COLUMNS = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture(scope="module")
def more_bundles(tmp_path_factory):
    """Beside conftest's churn and iris (logistic regressions): a tree ensemble regressor on churn's columns, strings
    included, and an iris classifier exported from a .npy sample whose manifest then loses the column names that
    scikit-learn's export gives it (x0, x1, ...): a matrix without names, as a Keras, PyTorch or ONNX file's is."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression

    from edgeport.examples.churn import build_pipeline
    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("explain-bundles")
    frame, target = churn_data(n=300)
    forest = build_pipeline().set_params(clf=GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0))
    X, y = iris_frame()
    made = {"churn_trees": save_model(forest.fit(frame, (target == "churn").astype(float)), root, "churn_trees",
                                      frame.head(40)),
            "unnamed": save_model(LogisticRegression(max_iter=500).fit(X.to_numpy(), y), root, "unnamed",
                                  X.to_numpy()[:30])}
    bundles = {name: export_model(model, root / f"{name}-bundle", sample=sample).bundle
               for name, (model, sample) in made.items()}
    manifest_path = bundles["unnamed"].path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["inputs"][0]["columns"]
    manifest_path.write_text(json.dumps(manifest))
    rehash_bundle(bundles["unnamed"].path)
    return bundles


@pytest.fixture(scope="module")
def served(bundles, more_bundles):
    from edgeport.server.repository import load_served

    return {name: load_served(bundle) for name, bundle in {**bundles, **more_bundles}.items()}


@pytest.fixture(scope="module")
def client(bundles):
    from fastapi.testclient import TestClient

    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    return TestClient(create_app(Repository(bundles["churn"].path.parent)))


def served_output(model, row, explanation):
    """What the served session answers for `row`, for the explained target: computed here, apart from shap."""
    from edgeport.decoding import feeds_from_rows

    bundle = model.bundle
    feeds = feeds_from_rows(bundle.inputs, bundle.manifest.layout, [row])
    outputs = dict(zip([o.role for o in bundle.outputs], model.session.run([o.name for o in bundle.outputs], feeds)))
    if "value" in outputs:
        return float(outputs["value"].reshape(-1)[0])
    label = outputs["label"].reshape(-1)[0]
    assert str(explanation.target) == str(label)  # the predicted class is the one explained
    return float(outputs["probabilities"][0][list(map(str, bundle.classes)).index(str(label))])


@pytest.mark.parametrize("name", ["churn", "iris", "churn_trees"])
def test_attributions_add_up_to_what_the_served_model_answers(served, name):
    from edgeport.explain import explain_row

    model = served[name]
    for row in model.bundle.golden()["rows"][:4]:
        explanation = explain_row(model, row)
        total = explanation.base_value + sum(a.attribution for a in explanation.attributions)
        assert total == pytest.approx(explanation.prediction, abs=1e-6)
        assert explanation.prediction == pytest.approx(served_output(model, row, explanation), abs=1e-6)
        magnitudes = [abs(a.attribution) for a in explanation.attributions]
        assert magnitudes == sorted(magnitudes, reverse=True)
    assert any(abs(a.attribution) > 1e-3 for a in explanation.attributions)


def test_one_attribution_per_original_column_strings_included(served):
    from edgeport.explain import explain_row

    row = {"tenure_months": 3, "monthly_charges": 90.5, "support_calls": 4, "plan": "premium", "region": None}
    explanation = explain_row(served["churn_trees"], row)
    assert sorted(a.feature for a in explanation.attributions) == sorted(CHURN_COLUMNS)  # not one per one-hot slot
    values = {a.feature: a.value for a in explanation.attributions}
    assert values == {**row, "tenure_months": 3.0, "support_calls": 4.0, "region": ""}  # as decoded: null is ""
    assert explanation.target == "value"  # a regressor: its value output's name
    iris = explain_row(served["iris"], [6.7, 3.0, 5.2, 2.3])
    assert sorted(a.feature for a in iris.attributions) == sorted(IRIS_COLUMNS)
    assert iris.target == "virginica"


def test_the_endpoint_answers_with_the_whole_explanation(client, served):
    from edgeport.explain import explain_row

    row = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}
    for path in ("/v2/models/iris/explain", "/v2/models/iris/versions/1/explain"):
        response = client.post(path, json={"row": row})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"model_name", "model_version", "target", "base_value", "prediction", "attributions"}
        assert (body["model_name"], body["model_version"], body["target"]) == ("iris", "1", "setosa")
        assert [a["feature"] for a in body["attributions"]] == [
            a.feature for a in explain_row(served["iris"], row).attributions]
        assert {a["feature"]: a["value"] for a in body["attributions"]} == row
        assert body["base_value"] + sum(a["attribution"] for a in body["attributions"]) == pytest.approx(
            body["prediction"], abs=1e-6)


@pytest.mark.parametrize("body, status, words", [
    ({"row": [{"tenure_months": 1}, {"tenure_months": 2}]}, 400, "explain takes one row, got a list of 2"),
    ({"row": {"tenure_months": "long", "monthly_charges": 1, "support_calls": 1, "plan": "basic", "region": "east"}},
     400, 'row 0, column "tenure_months": expected a number (float32), got string \'long\''),
    ({"row": {"tenure_months": 1, "monthly_charges": 1, "support_calls": 1, "plan": "basic"}},
     400, 'row 0: missing column "region"'),
    ({"rows": []}, 400, "invalid request: field row"),
])
def test_a_bad_row_is_a_400_naming_the_field(client, body, status, words):
    response = client.post("/v2/models/churn/explain", json=body)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_a_matrix_without_column_names_is_refused_with_a_422(more_bundles):
    from fastapi.testclient import TestClient

    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    client = TestClient(create_app(Repository(more_bundles["unnamed"].path)))
    response = client.post("/v2/models/unnamed/explain", json={"row": [5.1, 3.5, 1.4, 0.2]})
    assert response.status_code == 422
    assert "explanations need named columns" in response.json()["error"]


def test_past_the_time_budget_is_a_422(bundles):
    from fastapi.testclient import TestClient

    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    client = TestClient(create_app(Repository(bundles["churn"].path.parent), explain_timeout_s=1e-6))
    response = client.post("/v2/models/churn/explain", json={"row": {
        "tenure_months": 1, "monthly_charges": 1, "support_calls": 1, "plan": "basic", "region": "east"}})
    assert response.status_code == 422
    assert "longer than its 1e-06 s budget" in response.json()["error"]


def test_without_shap_the_endpoint_is_a_501_naming_the_extra(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "shap", None)  # import shap raises ImportError
    response = client.post("/v2/models/iris/explain", json={"row": [5.1, 3.5, 1.4, 0.2]})
    assert response.status_code == 501
    assert "needs the explain extra" in response.json()["error"]


def test_neither_the_cli_nor_the_server_imports_shap_until_asked():
    probe = ("import sys; import edgeport.cli, edgeport.server.app, edgeport.explain; "
             "from typer.testing import CliRunner; CliRunner().invoke(edgeport.cli.app, ['--help']); "
             "print('shap' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_the_cli_explains_the_first_rows_of_a_file(bundles, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    frame, _ = churn_data(n=10)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    result = CliRunner().invoke(app, ["explain", str(bundles["churn"].path), "--data", str(tmp_path / "rows.csv"),
                                      "--rows", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("feature") == 2 and "row 1:" in result.output and "row 2:" not in result.output
    for column in CHURN_COLUMNS:
        assert column in result.output


# ---------------------------------------------------------------- a real server, and the demo's "Why?"

@pytest.fixture(scope="module")
def server(bundles):
    process = ServerProcess(bundles["churn"].path.parent)
    yield process
    process.stop()


def test_a_real_server_explains(server):
    import httpx

    row = {"tenure_months": 5, "monthly_charges": 80, "support_calls": 3, "plan": "basic", "region": "north"}
    response = httpx.post(f"{server.url}/v2/models/churn/explain", json={"row": row}, timeout=30)
    assert response.status_code == 200, response.text
    assert [a["feature"] for a in response.json()["attributions"]] != []
    assert sorted(a["feature"] for a in response.json()["attributions"]) == sorted(CHURN_COLUMNS)


@pytest.fixture
def chromium():
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")


@pytest.mark.browser
def test_why_in_the_demo_draws_the_top_columns_as_bars(chromium, server, page):
    page.goto(f"{server.url}/?model=churn")
    wait_for_browser_runtime(page)
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden])")
    assert page.is_visible("#why") and page.is_hidden("#why-result")
    page.click("#why")
    page.wait_for_selector("#why-result:not([hidden])")
    assert page.locator("#why-bars .why-row").count() == 5
    assert page.locator("#why-bars .why-row .fill").count() == 5
    assert "on average" in page.text_content("#why-caption")
    assert page.is_hidden("#why-error")
    assert not csp_violations(page), page.log.lines
    path = artifact_dir("demo") / "5-why-explanation.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    page.click("#predict")  # a new answer hides the old explanation
    page.wait_for_selector("#why-result[hidden]", state="attached")
