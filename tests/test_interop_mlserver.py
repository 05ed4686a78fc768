"""The real JS client against a real MLServer 1.7 with its scikit-learn runtime, serving the same model.

MLServer runs in a venv of its own (tests/mlserver_env.py; created on first use, ~35 s). The client runs under
Node with forceNoWasm, so every prediction is the server's. With the bundle's fallback map (--fallback-version
default, label=predict, probabilities=predict_proba) its answers are scikit-learn's own; without it the client
fails with a ServerError naming what is wrong, never a wrong prediction.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import IRIS_NAMES, ServerProcess, free_port, iris_frame, need, run_node_client, save_model
from mlserver_env import mlserver_command, mlserver_python

NODE_PREDICT = """
import { loadModel } from '../client/edgeport.js';
const [manifest, fallbackUrl, options, rows] = process.argv.slice(2);
try {
  const model = await loadModel(manifest, { forceNoWasm: true, worker: false, fallbackUrl, ...JSON.parse(options) });
  process.stdout.write(JSON.stringify({ results: await model.predict(JSON.parse(rows)) }));
} catch (err) {
  process.stdout.write(JSON.stringify({ error: { name: err.name, code: err.code, message: err.message } }));
}
"""
MAP = ["--fallback-version", "default", "--fallback-output", "label=predict",
       "--fallback-output", "probabilities=predict_proba"]


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """An iris LogisticRegression on class names: saved as joblib for MLServer, as skops for edgeport, exported
    with the fallback map and without it; its rows and scikit-learn's own answers for them."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("interop")
    X, y = iris_frame()
    model = LogisticRegression(max_iter=500).fit(X, IRIS_NAMES[y])
    joblib.dump(model, root / "iris.joblib")
    model_path, sample_path = save_model(model, root, "iris", X.sample(40, random_state=0))
    for bundle, extra in (("mapped", MAP), ("plain", [])):
        done = CliRunner().invoke(app, ["export", str(model_path), "--out", str(root / bundle), "--sample",
                                        str(sample_path), *extra])
        assert done.exit_code == 0, done.output
    rows = X.iloc[::10]
    return {"root": root, "rows": rows.to_numpy().tolist(), "labels": model.predict(rows).tolist(),
            "probabilities": model.predict_proba(rows)}


class MLServerProcess(ServerProcess):
    """MLServer as a real process: started from its own command, then ServerProcess's readiness wait (OIP v2's
    /v2/health/ready, every model loaded), output and stop."""

    def __init__(self, command: list[str], port: int, log_dir: Path):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log = open(log_dir / f"mlserver-{port}.log", "w+")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout=120)


@pytest.fixture(scope="module")
def mlserver(iris):
    """MLServer serving iris.joblib as iris (no version, so MLServer's default) on free loopback ports."""
    python, why = mlserver_python()
    need(python is not None, f"MLServer could not be installed: {why}")
    port = free_port()
    command = mlserver_command(python, iris["root"] / "mlserver", "iris", iris["root"] / "iris.joblib", http_port=port,
                               grpc_port=free_port(), metrics_port=free_port())
    server = MLServerProcess(command, port, iris["root"])
    yield server.url
    server.stop()


def predict(iris, mlserver, bundle: str, **options) -> dict:
    return run_node_client(NODE_PREDICT, iris["root"] / bundle / "manifest.json", mlserver, json.dumps(options),
                           json.dumps(iris["rows"]), timeout=120)


def test_with_the_map_the_client_gets_scikit_learns_answers_from_mlserver(iris, mlserver):
    answer = predict(iris, mlserver, "mapped")
    assert "error" not in answer, answer
    results = answer["results"]
    manifest = json.loads((iris["root"] / "mapped" / "manifest.json").read_text())
    assert manifest["fallback"]["version_policy"] == "default"
    assert [r["served_by"] for r in results] == ["server"] * len(iris["rows"])
    assert [r["fallback_reason"] for r in results] == ["no-wasm"] * len(iris["rows"])
    assert [r["label"] for r in results] == iris["labels"]
    np.testing.assert_allclose([r["probabilities"] for r in results], iris["probabilities"],
                               atol=manifest["tolerance"]["atol"], rtol=manifest["tolerance"]["rtol"])


def test_without_the_map_the_client_fails_clearly(iris, mlserver):
    """The bundle exported without the map asks for version 1 (MLServer has only its default): a 4xx, said so."""
    failed = predict(iris, mlserver, "plain")["error"]
    assert (failed["name"], failed["code"]) == ("ServerError", "server-status"), failed
    assert "404" in failed["message"] and "version 1 not found" in failed["message"], failed


def test_the_default_version_by_the_graphs_output_names_is_refused_by_name(iris, mlserver):
    """The default version, but the graph's output names (label, probabilities): MLServer refuses them with a 4xx
    naming the outputs it serves, before any answer; the client passes that on."""
    failed = predict(iris, mlserver, "plain", fallbackVersion="default")["error"]
    assert (failed["name"], failed["code"]) == ("ServerError", "server-status"), failed
    assert "'predict', 'predict_proba' and 'transform'" in failed["message"] and "label" in failed["message"], failed


def test_an_answer_that_does_not_fit_the_manifest_is_a_server_response_error(iris, mlserver):
    """A wrong map (roles swapped): MLServer answers, but predict_proba's numbers are no labels. Checked against
    the manifest before use, the answer is a ServerError naming the output, never a prediction."""
    failed = predict(iris, mlserver, "mapped", fallbackOutputs={"label": "predict_proba", "probabilities": "predict"})
    failed = failed["error"]
    assert (failed["name"], failed["code"]) == ("ServerError", "server-response"), failed
    assert '"predict_proba"' in failed["message"] and "does not fit the model" in failed["message"], failed
