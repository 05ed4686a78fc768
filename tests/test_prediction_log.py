"""The prediction log: one JSON line per predicted row, PII columns dropped or hashed, rotated by size, and a full
disk that stops the log but never the predictions."""
from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import time

import httpx
import pytest
from conftest import ServerProcess, churn_data, rehash_bundle

SALT = "test-salt-not-secret"


def churn_request(bundle, frame) -> dict:
    inputs = []
    for spec in bundle.inputs:
        values = frame[spec.column]
        string = spec.dtype == "string"
        inputs.append({"name": spec.name, "shape": [len(frame), 1], "datatype": "BYTES" if string else
                       {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}[spec.dtype],
                       "data": [None if v is None or v != v else (str(v) if string else v) for v in values.tolist()]})
    return {"inputs": inputs}


def read_lines(path, rows, timeout=10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= rows:
            break
        time.sleep(0.05)
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def bundle_with_pii(bundles, tmp_path, pii):
    """A copy of the churn bundle whose manifest names `pii`, as `edgeport export --pii` writes it."""
    folder = tmp_path / "bundles"
    copy = folder / "churn"
    shutil.copytree(bundles["churn"].path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["pii"] = list(pii)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    rehash_bundle(copy)
    return folder


@pytest.mark.parametrize("mode", ["drop", "hash"])
def test_the_log_has_a_line_per_row_and_no_value_of_a_redacted_column(bundles, tmp_path, monkeypatch, mode):
    """drop: region, named by the server's --pii; hash: plan, named by the manifest, salted from the environment."""
    column = "region" if mode == "drop" else "plan"
    if mode == "drop":
        folder, args = bundles["churn"].path.parent, ["--pii", "region", "--pii-mode", "drop"]
    else:
        folder, args = bundle_with_pii(bundles, tmp_path, ["plan"]), ["--pii-mode", "hash"]
        monkeypatch.setenv("EDGEPORT_PII_SALT", SALT)
    log = tmp_path / "predictions.jsonl"
    server = ServerProcess(folder, "--prediction-log", log, *args, log_dir=tmp_path)
    try:
        frame, _ = churn_data(n=40, seed=3)
        sent = 0
        for chunk in (frame.iloc[:1], frame.iloc[1:15], frame.iloc[15:40]):
            response = httpx.post(f"{server.url}/v2/models/churn/infer", json=churn_request(bundles["churn"], chunk),
                                  timeout=30)
            assert response.status_code == 200, response.text
            sent += len(chunk)
        lines = read_lines(log, sent)
    finally:
        server.stop()
    assert len(lines) == sent
    for line, (_, row) in zip(lines, frame.iterrows()):
        assert set(line) == {"timestamp", "model", "version", "latency_ms", "confidence", "outputs", "inputs"}, line
        assert (line["model"], line["version"]) == ("churn", "1")
        assert line["latency_ms"] >= 0 and 0.5 <= line["confidence"] <= 1
        assert line["outputs"]["label"] in ("churn", "stay")
        assert max(line["outputs"]["probabilities"]) == pytest.approx(line["confidence"])
        assert line["inputs"]["tenure_months"] == (None if row["tenure_months"] != row["tenure_months"]
                                                   else pytest.approx(row["tenure_months"]))
        if mode == "drop":
            assert column not in line["inputs"]
        elif row[column] is not None and row[column] == row[column]:
            expected = hmac.new(SALT.encode(), str(row[column]).encode(), hashlib.sha256).hexdigest()[:16]
            assert line["inputs"][column] == expected
    text = log.read_text()
    values = {v for v in frame[column].tolist() if isinstance(v, str)}
    assert values
    for value in values:
        assert value not in text, f"{column}={value!r} is in the log"


def test_rotation_at_a_tiny_size_keeps_whole_lines(bundles, tmp_path):
    from edgeport.server.prediction_log import PredictionLog
    from edgeport.server.repository import load_served

    model = load_served(bundles["churn"], allow_unverified=True)
    frame, _ = churn_data(n=5, seed=1)
    feeds = {spec.name: frame[[spec.column]].to_numpy(dtype=object if spec.dtype == "string" else spec.dtype)
             for spec in model.bundle.inputs}
    outputs = dict(zip([o.role for o in model.bundle.outputs], model.session.run(None, feeds)))
    path = tmp_path / "log.jsonl"
    log = PredictionLog(path, max_bytes=700, backups=3)
    for _ in range(12):
        log.record(model, feeds, outputs, 1.5)
    log.flush()
    assert log.stopped is None and log.written == 60
    files = [path, *(path.with_name(f"log.jsonl.{n}") for n in (1, 2, 3))]
    assert all(f.exists() for f in files) and not path.with_name("log.jsonl.4").exists()
    for f in files:
        text = f.read_text()
        assert text.endswith("\n") and len(text.encode()) <= 700
        assert all(json.loads(line)["model"] == "churn" for line in text.splitlines())


def test_a_full_disk_stops_the_log_not_the_predictions(bundles, tmp_path):
    server = ServerProcess(bundles["churn"].path.parent, "--prediction-log", "/dev/full", log_dir=tmp_path)
    try:
        frame, _ = churn_data(n=3)
        for _ in range(5):
            response = httpx.post(f"{server.url}/v2/models/churn/infer", json=churn_request(bundles["churn"], frame),
                                  timeout=30)
            assert response.status_code == 200, response.text
        time.sleep(0.5)
        output = server.output()
    finally:
        server.stop()
    assert output.count("prediction log /dev/full stopped") == 1, output
    assert "No space left on device" in output


def test_off_by_default(bundles, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    monkeypatch.chdir(tmp_path)
    app = create_app(Repository(bundles["churn"].path.parent))
    frame, _ = churn_data(n=2)
    with TestClient(app) as client:
        assert client.post("/v2/models/churn/infer", json=churn_request(bundles["churn"], frame)).status_code == 200
    assert app.state.prediction_log is None
    assert list(tmp_path.iterdir()) == []


def test_hashing_without_a_salt_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgeport.cli import app

    monkeypatch.delenv("EDGEPORT_PII_SALT", raising=False)
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--prediction-log", str(tmp_path / "p.jsonl"),
                                      "--pii", "plan", "--pii-mode", "hash"])
    assert result.exit_code == 2, result.output
    assert "--pii-salt" in result.output


def test_manifest_pii_must_name_input_columns(bundles, tmp_path):
    from edgeport.bundle import Manifest
    from edgeport.errors import BundleError

    manifest = json.loads((bundles["churn"].path / "manifest.json").read_text())
    assert Manifest.from_dict({**manifest, "pii": ["region"]}).pii == ("region",)
    with pytest.raises(BundleError, match="field pii: 'email'"):
        Manifest.from_dict({**manifest, "pii": ["email"]})


def test_export_pii_is_checked_against_the_columns(churn_model, tmp_path):
    from typer.testing import CliRunner

    from edgeport.cli import app

    _, model_path, sample_path = churn_model
    result = CliRunner().invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out",
                                      str(tmp_path / "bad"), "--pii", "email"])
    assert result.exit_code == 2, result.output
    assert "--pii email" in result.output and "region" in result.output
    result = CliRunner().invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out",
                                      str(tmp_path / "good"), "--pii", "region", "--pii", "tenure_months"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "good" / "manifest.json").read_text())["pii"] == ["region", "tenure_months"]


def test_export_pii_keeps_the_values_out_of_what_the_bundle_publishes(churn_model, tmp_path):
    """The manifest and golden.json are served with the bundle: a PII column's values are in neither (a string
    column's golden values are the model's own categories; a number is the rows' median), and parity still holds
    on the replaced rows."""
    import pandas as pd
    from typer.testing import CliRunner

    from edgeport.cli import app
    from edgeport.drift import Profile
    from edgeport.bundle import read_bundle

    _, model_path, sample_path = churn_model
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(model_path), "--sample", str(sample_path), "--out", str(out),
                                      "--pii", "region", "--pii", "tenure_months"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    for column in ("region", "tenure_months"):
        assert set(manifest["feature_stats"][column]) == {"count", "missing", "pii"}, manifest["feature_stats"][column]
    assert "frequencies" in manifest["feature_stats"]["plan"] and "bins" in manifest["feature_stats"]["monthly_charges"]
    sample = pd.read_csv(sample_path)
    rows = json.loads((out / "golden.json").read_text())["rows"]
    tenures = {row["tenure_months"] for row in rows} - {None}
    assert len(tenures) == 1 and len(set(sample["tenure_months"].dropna())) > 10, tenures
    categories = next(i for i in manifest["inputs"] if i.get("column", i["name"]) == "region").get("categories")
    assert len({row["region"] for row in rows} - {None}) == 1  # one category for every row: no row keeps its own
    assert {row["region"] for row in rows} - {None} <= set(categories or ())
    assert not tenures & set(sample["tenure_months"].dropna()), "the mean, not one person's value"
    assert "region is one-hot or ordinal encoded" in " ".join(result.output.split())
    assert any(row["tenure_months"] is None for row in rows)  # the missing-value row is still checked
    profile = Profile.training(read_bundle(out))
    assert profile.features["region"] is None and "personal data" in profile.reasons["region"]


def test_sigterm_writes_what_the_last_requests_queued(bundles, tmp_path):
    """A burst answered just before SIGTERM: every row's line is in the log once the process has exited."""
    from concurrent.futures import ThreadPoolExecutor

    log = tmp_path / "predictions.jsonl"
    server = ServerProcess(bundles["churn"].path.parent, "--prediction-log", log, log_dir=tmp_path)
    frame, _ = churn_data(n=1000, seed=5)
    body = churn_request(bundles["churn"], frame)
    try:
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.post(f"{server.url}/v2/models/churn/infer",
                                                           json=body).status_code, range(24)))
        assert statuses == [200] * 24
        server.proc.terminate()
        # uvicorn re-raises the signal once it has shut down: the exit is by SIGTERM, after a clean shutdown
        assert server.proc.wait(timeout=60) in (0, -15), server.output()
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    assert len(lines) == 24 * 1000, f"{len(lines)} lines of {24 * 1000} rows answered"
    assert json.loads(lines[-1])["model"] == "churn"


@pytest.mark.parametrize("args, message", [
    (["--prediction-log", "LOG", "--pii", "vinyard"], "--pii vinyard: no served model"),
    (["--pii", "region"], "--pii region: PII columns are kept out of the prediction log, which is off"),
])
def test_serve_refuses_a_pii_column_that_would_protect_nothing(bundles, tmp_path, args, message):
    """A typo (vinyard for vineyard) would leave the real column in the log; --pii without a log does nothing."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    args = [str(tmp_path / "log.jsonl") if a == "LOG" else a for a in args]
    result = subprocess.run([str(Path(sys.executable).with_name("edgeport")), "serve", str(bundles["churn"].path),
                             "--port", str(free_port()), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
