"""Live drift on a real server: its own infer traffic and browsers' telemetry against the training data."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from conftest import ServerProcess, iris_frame

SHIFTED = "sepal length (cm)"


@pytest.fixture(scope="module")
def server(bundles):
    process = ServerProcess(bundles["iris"].path.parent, "--drift-min-rows", "10")
    yield process
    process.stop()


@pytest.fixture
def iris(server):
    """A clean slate: the live profiles reset, so each test sees only its own traffic."""
    response = httpx.delete(f"{server.url}/v2/models/iris/drift")
    assert response.status_code == 204, response.text
    return server


def training_rows():
    # the export sample (conftest `bundles`): the rows the manifest's feature_stats were computed from
    X, _ = iris_frame()
    return X.sample(40, random_state=0).reset_index(drop=True)


def shifted_rows():
    rows = training_rows()
    rows[SHIFTED] = rows[SHIFTED] + 3 * rows[SHIFTED].std()
    return rows


def infer(server, bundle, frame) -> None:
    spec = bundle.inputs[0]
    datatype = {"float32": "FP32", "float64": "FP64"}[spec.dtype]
    body = {"inputs": [{"name": spec.name, "shape": list(frame.shape), "datatype": datatype,
                        "data": frame[list(spec.columns)].to_numpy().ravel().tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text


def drift(server) -> dict:
    response = httpx.get(f"{server.url}/v2/models/iris/drift", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def psi_of(report: dict) -> dict[str, float]:
    return {f["name"]: f["psi"] for f in report["features"]}


def metrics(server) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def assert_only_shifted_drifted(report: dict) -> None:
    psi = psi_of(report)
    assert set(psi) == set(training_rows().columns)
    assert psi[SHIFTED] > report["features"][0]["threshold"] == 0.2, psi
    for name, value in psi.items():
        if name != SHIFTED:
            assert value is not None and value < 0.2, (name, psi)
    assert SHIFTED in report["drifted"]
    assert not set(report["drifted"]) - {SHIFTED, "confidence"}, report["drifted"]


def test_server_traffic_with_one_shifted_feature_drifts_that_feature_only(iris, bundles):
    for _ in range(3):
        infer(iris, bundles["iris"], shifted_rows())
    report = drift(iris)
    assert report["sources"] == {"server": 120, "browser": 0}
    assert report["rows"] == 120 and report["dropped"] == 0
    assert_only_shifted_drifted(report)
    scraped = metrics(iris)
    gauge = scraped[("edgeport_drift_psi", (("feature", SHIFTED), ("model", "iris"), ("version", "1")))]
    assert gauge == pytest.approx(psi_of(report)[SHIFTED])
    assert ("edgeport_drift_psi", (("feature", "confidence"), ("model", "iris"), ("version", "1"))) in scraped
    assert scraped[("edgeport_drift_rows", (("model", "iris"), ("source", "server"), ("version", "1")))] == 120
    assert scraped[("edgeport_requests_total", (("model", "iris"), ("source", "server"), ("version", "1")))] >= 3


def test_unshifted_traffic_is_no_drift(iris, bundles):
    infer(iris, bundles["iris"], training_rows())
    report = drift(iris)
    assert all(value < 0.01 for value in psi_of(report).values()), psi_of(report)
    assert report["drifted"] == []


def sketch_of(bundle, frame) -> dict:
    from edgeport.drift import Profile

    training = Profile.training(bundle)
    live = training.empty()
    live.add_table(frame)
    sketch = live.to_sketch()
    sketch["confidence"] = {"counts": [int(c) for c in training.confidence.counts[:-1]]}
    return sketch


def good_report(bundle, frame) -> dict:
    return {"predictions": len(frame), "served_by": {"browser": len(frame) - 1, "server": 1},
            "fallback_reasons": {"timeout": 1}, "latency_ms": {"count": len(frame), "sum": 12.5},
            "labels": {"setosa": 10, "virginica": len(frame) - 10}, "sketch": sketch_of(bundle, frame)}


def test_browser_telemetry_with_a_shifted_sketch_drifts_that_feature(iris, bundles):
    before = metrics(iris)
    for content_type in ("application/json", "text/plain;charset=UTF-8"):
        response = httpx.post(f"{iris.url}/v2/models/iris/versions/1/telemetry",
                              content=json.dumps(good_report(bundles["iris"], shifted_rows())),
                              headers={"content-type": content_type})
        assert response.status_code == 204, response.text
    report = drift(iris)
    assert report["sources"] == {"server": 0, "browser": 80}
    assert_only_shifted_drifted(report)
    after = metrics(iris)
    browser = (("model", "iris"), ("source", "browser"), ("version", "1"))
    assert after[("edgeport_requests_total", browser)] - before.get(("edgeport_requests_total", browser), 0) == 78
    reason = ("edgeport_fallback_reasons_total", (("model", "iris"), ("reason", "timeout"), *browser[1:]))
    assert after[reason] - before.get(reason, 0) == 2
    assert after[("edgeport_latency_seconds_sum", browser)] - before.get(("edgeport_latency_seconds_sum", browser), 0) \
        == pytest.approx(0.025)


def bad_reports(bundle) -> list[tuple[str, object, int, str]]:
    good = good_report(bundle, shifted_rows())
    wrong_bins = json.loads(json.dumps(good))
    wrong_bins["sketch"]["features"][SHIFTED]["counts"].append(1)
    huge = {**good, "labels": {**good["labels"], **{f"x{i}": 1 for i in range(8000)}}}
    return [
        ("a negative count", {**good, "predictions": -1}, 400, "predictions"),
        ("a fraction", {**good, "latency_ms": {"count": 1.5, "sum": 3}}, 400, "latency_ms.count"),
        ("an unknown reason", {**good, "fallback_reasons": {"bored": 1}}, 400, "fallback_reasons"),
        ("an unknown label", {**good, "labels": {"setosa": 1, "rose": 2}}, 400, "labels"),
        ("a bin count list of the wrong length", wrong_bins, 400, SHIFTED),
        ("an unknown feature", {**good, "sketch": {"features": {"petal colour": {"counts": []}}}}, 400, "petal colour"),
        ("a body over 64 KB", huge, 413, "65536 bytes"),
        ("not JSON", "{predictions: 3", 400, "JSON"),
        ("JSON nested past its recursion limit", "[" * 30_000, 400, "body"),
        ("a count past int64", {**good, "sketch": {"features": {SHIFTED: {"counts": [10**30] * 10}}}}, 400, SHIFTED),
        ("NaN", '{"predictions": NaN}', 400, "predictions"),
        ("a list", [1, 2], 400, "object"),
    ]


def test_bad_reports_are_refused_naming_the_field_and_count_nothing(iris, bundles):
    good = httpx.post(f"{iris.url}/v2/models/iris/telemetry", json=good_report(bundles["iris"], training_rows()))
    assert good.status_code == 204, good.text
    before_drift, before_metrics = drift(iris), metrics(iris)
    for what, body, status, field in bad_reports(bundles["iris"]):
        content = body if isinstance(body, str) else json.dumps(body)
        response = httpx.post(f"{iris.url}/v2/models/iris/telemetry", content=content,
                              headers={"content-type": "text/plain"})
        assert response.status_code == status, (what, response.text)
        assert field in response.json()["error"], (what, response.json())
    response = httpx.post(f"{iris.url}/v2/models/iris/telemetry", content=b"{}", headers={"content-type": "image/png"})
    assert response.status_code == 415, response.text
    streamed = httpx.post(f"{iris.url}/v2/models/iris/telemetry", headers={"content-type": "text/plain"},
                          content=(b'{"labels": {"' + b"x" * 4096 + b'": 1}, ' for _ in range(20)))  # no length
    assert streamed.status_code == 413, streamed.text
    assert drift(iris) == before_drift
    after_metrics = metrics(iris)
    refused = ("edgeport_errors_total", (("kind", "bad_report"), ("model", "iris"), ("source", "browser"),
                                         ("version", "1")))
    assert after_metrics.pop(refused) - before_metrics.pop(refused, 0) == len(bad_reports(bundles["iris"])) + 2
    browser = {k: v for k, v in after_metrics.items() if ("source", "browser") in k[1]}
    assert browser == {k: v for k, v in before_metrics.items() if ("source", "browser") in k[1]}


def test_unknown_models_and_versions_are_404(server):
    for path in ("/v2/models/nope/drift", "/v2/models/iris/versions/9/drift"):
        assert httpx.get(server.url + path).status_code == 404
    assert httpx.post(f"{server.url}/v2/models/nope/telemetry", json={}).status_code == 404


def test_string_columns_of_server_traffic_are_counted(server, bundles):
    """churn: the columns layout, string categories and nullable numbers decode back into the features' buckets."""
    from conftest import churn_data

    frame, _ = churn_data(n=30)
    frame.loc[[0, 5], "region"] = None
    inputs = []
    for spec in bundles["churn"].inputs:
        values = frame[spec.column]
        string = spec.dtype == "string"
        inputs.append({"name": spec.name, "shape": [len(frame), 1], "datatype": "BYTES" if string else
                       {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}[spec.dtype],
                       "data": [None if v is None or v != v else (str(v) if string else v) for v in values.tolist()]})
    assert httpx.delete(f"{server.url}/v2/models/churn/drift").status_code == 204
    response = httpx.post(f"{server.url}/v2/models/churn/infer", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text
    report = httpx.get(f"{server.url}/v2/models/churn/versions/1/drift").json()
    assert report["sources"] == {"server": 30, "browser": 0}
    for feature in report["features"]:
        if feature["kind"] != "unknown":
            assert sum(feature["live"]) == 30, feature
    # a missing string is `missing`, as an empty CSV cell is for edgeport drift (the decoder feeds it as "")
    region = next(f for f in report["features"] if f["name"] == "region")
    assert region["live"][region["buckets"].index("missing")] == 2
    assert {f["kind"] for f in report["features"]} >= {"numeric", "categorical"}


def test_a_full_queue_drops_requests_and_counts_them(bundles):
    from edgeport.server.monitoring import Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    feeds = {model.bundle.inputs[0].name: training_rows().to_numpy(dtype=np.float32)}
    monitors = Monitors(queue_size=1, min_rows=10)
    with monitors._lock:  # the drift thread can't fold while this is held: the queue fills
        for _ in range(4):
            monitors.record(model, feeds, None)
    assert monitors.dropped >= 2
    report = monitors.drift(model)
    assert report["sources"]["server"] == 40 * (4 - monitors.dropped)
    assert report["dropped"] == monitors.dropped


def test_serve_refuses_a_drift_threshold_that_is_not_above_zero(tmp_path):
    from typer.testing import CliRunner

    from edgeport.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--drift-threshold", "0"])
    assert result.exit_code == 2, result.output
    assert "PSI threshold" in result.output


class Clock:
    """A clock the test moves: the drift window's time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_live_window_slides_a_bucket_at_a_time_and_forgets_what_is_older(bundles):
    from edgeport.server.monitoring import WINDOW_BUCKETS, Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    name = model.bundle.inputs[0].name
    clock = Clock()
    monitors = Monitors(window_s=600, clock=clock, min_rows=10)  # ten minutes, in buckets of ten seconds
    bucket_s = 600 / WINDOW_BUCKETS
    monitors.record(model, {name: shifted_rows().to_numpy(dtype=np.float32)}, None)
    assert monitors.drift(model)["sources"]["server"] == 40
    assert SHIFTED in monitors.drift(model)["drifted"]
    clock.now += 300
    monitors.record(model, {name: training_rows().to_numpy(dtype=np.float32)}, None)
    both = monitors.drift(model)
    assert both["sources"]["server"] == 80 and both["window_seconds"] == 600
    clock.now += 300 + bucket_s  # the shifted rows' bucket ends more than ten minutes ago
    recent = monitors.drift(model)
    assert recent["sources"]["server"] == 40
    assert recent["drifted"] == [] and all(v < 0.01 for v in psi_of(recent).values()), psi_of(recent)
    assert monitors.psi[("iris", model.version, SHIFTED)] == pytest.approx(psi_of(recent)[SHIFTED])
    clock.now += 600
    empty = monitors.drift(model)
    assert empty["sources"] == {"server": 0, "browser": 0} and empty["rows"] == 0
    monitors.refresh()  # what a scrape does: nothing is left to publish for this version
    assert not [k for k in monitors.psi if k[:2] == ("iris", model.version)]
    assert monitors.rows[("iris", model.version, "server")] == 0


def test_browser_sketches_fall_out_of_the_window_too(bundles):
    from edgeport.server.monitoring import Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    clock = Clock()
    monitors = Monitors(window_s=60, clock=clock, min_rows=10)
    monitors.add_sketch(model, sketch_of(bundles["iris"], shifted_rows()))
    assert monitors.drift(model)["sources"]["browser"] == 40
    clock.now += 61 + 1
    assert monitors.drift(model)["sources"]["browser"] == 0


def test_without_a_window_live_drift_counts_everything_since_the_start(bundles):
    from edgeport.server.monitoring import Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    clock = Clock()
    monitors = Monitors(window_s=None, clock=clock, min_rows=10)
    monitors.record(model, {model.bundle.inputs[0].name: shifted_rows().to_numpy(dtype=np.float32)}, None)
    clock.now += 10 ** 7
    report = monitors.drift(model)
    assert report["sources"]["server"] == 40 and report["window_seconds"] is None


def test_a_per_feature_threshold_holds_where_the_model_has_that_feature(bundles):
    from edgeport.server.monitoring import Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    feeds = {model.bundle.inputs[0].name: shifted_rows().to_numpy(dtype=np.float32)}
    strict = Monitors(min_rows=10)
    strict.record(model, feeds, None)
    psi = psi_of(strict.drift(model))[SHIFTED]
    lenient = Monitors(thresholds={SHIFTED: psi * 2, "tenure_months": 0.01}, min_rows=10)  # churn's feature: not iris's
    lenient.record(model, feeds, None)
    report = lenient.drift(model)
    assert SHIFTED not in report["drifted"]
    shifted = next(f for f in report["features"] if f["name"] == SHIFTED)
    assert shifted["threshold"] == psi * 2
    assert {f["threshold"] for f in report["features"] if f["name"] != SHIFTED} == {0.2}


def test_a_served_window_forgets_old_traffic_without_new_traffic(bundles, tmp_path):
    """The real process: --drift-window in minutes; /drift and /metrics both slide with no traffic at all."""
    process = ServerProcess(bundles["iris"].path.parent, "--drift-window", "0.05", "--drift-min-rows", "10",
                            "--drift-threshold-for", f"{SHIFTED}=0.3")
    try:
        infer(process, bundles["iris"], shifted_rows())
        report = drift(process)
        assert report["sources"]["server"] == 40 and report["window_seconds"] == 3
        assert next(f for f in report["features"] if f["name"] == SHIFTED)["threshold"] == 0.3
        assert ("edgeport_drift_psi", (("feature", SHIFTED), ("model", "iris"), ("version", "1"))) in metrics(process)
        import time

        time.sleep(3.5)
        scraped = metrics(process)
        assert ("edgeport_drift_psi", (("feature", SHIFTED), ("model", "iris"), ("version", "1"))) not in scraped
        assert scraped[("edgeport_drift_rows", (("model", "iris"), ("source", "server"), ("version", "1")))] == 0
        assert drift(process)["sources"]["server"] == 0
    finally:
        process.stop()


@pytest.mark.parametrize("option, message", [
    (["--drift-threshold-for", "petal=0"], "not a PSI threshold"),
    (["--drift-threshold-for", "petal"], "expected COL=X"),
    (["--drift-window", "-1"], "should be greater than"),
])
def test_serve_refuses_bad_drift_options_naming_them(tmp_path, option, message):
    from typer.testing import CliRunner

    from edgeport.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), *option])
    assert result.exit_code == 2, result.output
    assert message in result.output and option[0] in result.output, result.output


def test_metrics_publish_a_psi_only_where_it_is_a_verdict(bundles):
    """Below min_rows the report says unknown; /metrics must not carry the PSI of a handful of rows (6 to 17 for one
    row) for an alert to fire on."""
    from edgeport.server.monitoring import Monitors
    from edgeport.server.repository import load_served

    model = load_served(bundles["iris"], allow_unverified=True)
    monitors = Monitors(min_rows=100)
    monitors.record(model, {model.bundle.inputs[0].name: shifted_rows().to_numpy(dtype=np.float32)}, None)
    report = monitors.drift(model)
    assert {f["verdict"] for f in report["features"]} == {"unknown"} and psi_of(report)[SHIFTED] > 0.2
    assert not [k for k in monitors.psi if k[:2] == ("iris", model.version)]


def test_serve_refuses_a_drift_threshold_for_a_feature_no_model_has(bundles, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    result = subprocess.run([str(Path(sys.executable).with_name("edgeport")), "serve", str(bundles["iris"].path),
                             "--port", str(free_port()), "--drift-threshold-for", "petal=0.5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--drift-threshold-for petal: no served model has a feature" in " ".join(result.stderr.split())
    assert "is serving" not in result.stdout + result.stderr  # refused before it says it serves
