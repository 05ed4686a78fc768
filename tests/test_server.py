"""The OIP v2 fallback server: TestClient for the contract, a real uvicorn process for its own behaviour."""
from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import ServerProcess


@pytest.fixture(scope="module", autouse=True)
def site_cache(tmp_path_factory):
    """The servers started here keep their demo sites in a cache of this module's own, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPORT_CACHE", str(tmp_path_factory.mktemp("edgeport-cache")))
        yield


@pytest.fixture(scope="module")
def bundles(example_bundles):
    return example_bundles.bundles_dir


@pytest.fixture(scope="module")
def client(bundles):
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    return TestClient(create_app(Repository(bundles), max_body_bytes=64_000, max_batch=100))


@pytest.fixture(scope="module")
def server(bundles):
    process = ServerProcess(bundles, "--max-body-bytes", "64000", "--max-batch", "100")
    yield process
    process.stop()


def iris_request(rows):
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP64", "data": [v for r in rows for v in r]}]}


def test_metadata_is_the_manifest_in_oip_terms(client):
    response = client.get("/v2/models/churn")
    assert response.status_code == 200
    assert response.json() == {
        "name": "churn", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "tenure_months", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "monthly_charges", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "support_calls", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "plan", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "region", "datatype": "BYTES", "shape": [-1, 1]},
        ],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        "parameters": {"task": "classification", "classes": ["churn", "stay"], "version": "1",
                       "manifest_url": "/bundles/churn/1/manifest.json"},
    }
    assert client.get("/v2/models/churn/versions/1/ready").json() == {"name": "churn", "ready": True}
    assert client.get("/v2").json() == {"name": "edgeport", "version": "0.1.0", "extensions": []}
    assert client.get("/v2/health/live").status_code == 200


def test_infer_matches_the_original_model(client, example_bundles):
    from edgeport.examples.iris import train

    model = train().model
    X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    import pandas as pd

    frame = pd.DataFrame(X, columns=model.feature_names_in_)
    response = client.post("/v2/models/iris/versions/1/infer", json={**iris_request(X.tolist()), "id": "r1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "iris" and body["model_version"] == "1" and body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"] == {"name": "label", "shape": [2], "datatype": "BYTES", "data": list(model.predict(frame))}
    assert outputs["probabilities"]["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (2, 3)), model.predict_proba(frame), atol=1e-9)


def test_bundle_files_are_served_with_their_hash_as_etag(client, example_bundles):
    bundle = next(m for m in example_bundles.models if m.name == "iris").export.bundle
    entry = next(f for f in bundle.manifest.to_dict()["files"] if f["path"] == "model.onnx")
    response = client.get("/bundles/iris/1/model.onnx")
    assert response.status_code == 200 and response.content == (bundle.path / "model.onnx").read_bytes()
    assert response.headers["etag"] == f'"{entry["sha256"]}"' and "max-age" in response.headers["cache-control"]
    assert client.get("/bundles/iris/1/model.onnx", headers={"if-none-match": response.headers["etag"]}).status_code == 304
    assert client.get("/bundles/iris/1/manifest.json").json()["name"] == "iris"


def test_fallback_reasons_are_counted_in_metrics(client):
    body = {**iris_request([[5.1, 3.5, 1.4, 0.2]]), "parameters": {"fallback_reason": "low-confidence"}}
    assert client.post("/v2/models/iris/infer", json=body).status_code == 200
    metrics = client.get("/metrics").text
    assert 'edgeport_fallback_requests_total{model="iris",reason="low-confidence"} 1.0' in metrics
    assert 'edgeport_infer_rows_total{model="iris",version="1"}' in metrics
    assert 'edgeport_predicted_class_total{label="setosa",model="iris",version="1"}' in metrics
    assert 'edgeport_prediction_confidence_bucket{le="1.0",model="iris",version="1"}' in metrics


def test_a_request_for_the_label_alone_still_counts_its_class(client):
    """A newcomer's request asked for outputs [label] only: its rows counted in infer_rows but in no class."""
    def count(metrics: str) -> float:
        line = next((l for l in metrics.splitlines()
                     if l.startswith('edgeport_predicted_class_total{label="setosa",model="iris",version="1"}')), None)
        return float(line.split()[-1]) if line else 0.0

    before = count(client.get("/metrics").text)
    body = {**iris_request([[5.1, 3.5, 1.4, 0.2], [5.0, 3.4, 1.5, 0.2]]), "outputs": [{"name": "label"}]}
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200 and [o["name"] for o in response.json()["outputs"]] == ["label"], response.text
    assert count(client.get("/metrics").text) == before + 2


def test_output_selection_and_nested_data(client):
    request = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}],
               "outputs": [{"name": "probabilities"}]}
    body = client.post("/v2/models/iris/infer", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]


def test_missing_numbers_are_accepted_where_the_model_imputes(client):
    request = {"inputs": [
        {"name": "tenure_months", "shape": [1, 1], "datatype": "FP32", "data": [12]},
        {"name": "monthly_charges", "shape": [1, 1], "datatype": "FP32", "data": [None]},
        {"name": "support_calls", "shape": [1, 1], "datatype": "FP32", "data": [2]},
        {"name": "plan", "shape": [1, 1], "datatype": "BYTES", "data": ["basic"]},
        {"name": "region", "shape": [1, 1], "datatype": "BYTES", "data": ["north"]},
    ]}
    response = client.post("/v2/models/churn/infer", json=request)
    assert response.status_code == 200, response.text


def churn_input(name, **override):
    base = {"tenure_months": ("FP32", [12]), "monthly_charges": ("FP32", [70.0]), "support_calls": ("FP32", [1]),
            "plan": ("BYTES", ["basic"]), "region": ("BYTES", ["north"])}[name]
    return {"name": name, "shape": [1, 1], "datatype": base[0], "data": base[1], **override}


def churn_request(**overrides):
    names = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
    return {"inputs": [churn_input(n, **overrides.get(n, {})) for n in names]}


BAD_INPUTS = [
    # (id, path, body (dict -> JSON, str/bytes -> raw), expected status, words the error must contain)
    ("malformed JSON", "/v2/models/iris/infer", "{not json", 400, ["JSON"]),
    ("empty body", "/v2/models/iris/infer", "", 400, ["JSON"]),
    ("JSON array", "/v2/models/iris/infer", "[1, 2]", 400, ["invalid request"]),
    ("no inputs field", "/v2/models/iris/infer", {"id": "x"}, 400, ["inputs"]),
    ("empty inputs", "/v2/models/iris/infer", {"inputs": []}, 400, ["inputs"]),
    ("unknown field", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "extra": 1}, 400, ["extra"]),
    ("shape not ints", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": ["1", "4"], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, ["shape"]),
    ("wrong shape rank", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, ["'input'", "rank"]),
    ("wrong feature count", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 400, ["'input'", "dimension 1"]),
    ("data/shape mismatch", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, ["'input'", "4 values"]),
    ("negative dimension", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [-1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, ["'input'", "negative"]),
    ("zero rows", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP64", "data": []}]}, 400, ["no rows"]),
    ("wrong datatype", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}, 400, ["'input'", "BYTES"]),
    ("unknown datatype", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}]}, 400, ["FP128"]),
    ("strings for numbers", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ["5.1", 3.5, 1.4, 0.2]}]}, 400, ["'input'", "value 0", "expected a number"]),
    ("booleans for numbers", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [True, 3.5, 1.4, 0.2]}]}, 400, ["expected a number", "boolean"]),
    ("NaN where not allowed", "/v2/models/iris/infer", '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [NaN, 3.5, 1.4, 0.2]}]}', 400, ["missing value"]),
    ("null where not allowed", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [None, 3.5, 1.4, 0.2]}]}, 400, ["missing value"]),
    ("a number beyond float64", "/v2/models/iris/infer", '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1%s, 3.5, 1.4, 0.2]}]}' % ("0" * 400), 400, ["does not fit"]),
    ("a number beyond float32", "/v2/models/churn/infer", churn_request(tenure_months={"data": [3.5e38]}), 400, ["'tenure_months'", "does not fit float32"]),
    ("Infinity", "/v2/models/iris/infer", '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [Infinity, 3.5, 1.4, 0.2]}]}', 400, ["infinite"]),
    ("unknown input name", "/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, ["unknown input 'x'"]),
    ("input given twice", "/v2/models/iris/infer", {"inputs": [iris_request([[1, 2, 3, 4]])["inputs"][0]] * 2}, 400, ["more than once"]),
    ("missing input", "/v2/models/churn/infer", {"inputs": [churn_input("plan")]}, 400, ["'tenure_months' is missing"]),
    ("numbers for strings", "/v2/models/churn/infer", churn_request(plan={"datatype": "BYTES", "data": [3]}), 400, ["'plan'", "expected a string"]),
    ("numeric datatype for strings", "/v2/models/churn/infer", churn_request(region={"datatype": "FP32", "data": [1.0]}), 400, ["'region'", "BYTES"]),
    ("batch sizes differ", "/v2/models/churn/infer", churn_request(plan={"shape": [2, 1], "data": ["basic", "premium"]}), 400, ["batch size"]),
    ("over the batch cap", "/v2/models/iris/infer", iris_request([[1, 2, 3, 4]] * 101), 400, ["at most 100"]),
    ("unknown output", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "outputs": [{"name": "logits"}]}, 400, ["unknown output 'logits'"]),
    ("unknown model", "/v2/models/nope/infer", iris_request([[1, 2, 3, 4]]), 404, ["unknown model 'nope'"]),
    ("unknown version", "/v2/models/iris/versions/7/infer", iris_request([[1, 2, 3, 4]]), 404, ["version '7'"]),
    ("traversal in the name", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", iris_request([[1, 2, 3, 4]]), 404, []),  # decoded to extra path segments: no route matches
    ("traversal in a bundle file", "/bundles/iris/1/..%2F..%2F..%2Fetc%2Fpasswd", None, 404, ["not a file of bundle"]),
    ("GET on infer", "/v2/models/iris/infer", None, (404, 405), []),
    ("oversized body", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1.0] * 20000}]}, 413, ["larger than"]),
    # issue 8: data that doesn't nest as its shape, parameters nobody checked, bodies that cost more than they may
    ("ragged data", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [[1, 2], [3, 4]]}]}, 400, ["'input'", "shape [1, 4]"]),
    ("rows of different lengths", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6, 7, 8]]}]}, 400, ["'input'", "3 items at depth 1"]),
    ("nested deeper than the shape", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [[[1, 2, 3, 4]]]}]}, 400, ["'input'", "shape [1, 4]"]),
    ("flat and nested mixed", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4, [5, 6, 7, 8]]}]}, 400, ["'input'", "shape [2, 4]"]),
    ("JSON nested 60 deep", "/v2/models/iris/infer", '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": %s1%s}]}' % ("[" * 60, "]" * 60), 400, ["deeper than"]),
    ("more values than any request needs", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1] * 3000}]}, 400, ["values", "at most"]),
    ("parameters as a list", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": ["fallback_reason"]}, 400, ["parameters"]),
    ("fallback_reason as a list", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": {"fallback_reason": ["timeout"]}}, 400, ["fallback_reason"]),
    ("fallback_reason as a dict", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": {"fallback_reason": {"why": "timeout"}}}, 400, ["fallback_reason"]),
    ("unknown fallback_reason", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": {"fallback_reason": "bored"}}, 400, ["fallback_reason", "low-confidence"]),
    ("unknown parameter", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": {"temperature": 0.7}}, 400, ["unknown parameter", "temperature"]),
    ("unknown input parameter", "/v2/models/iris/infer", {"inputs": [{**iris_request([[1, 2, 3, 4]])["inputs"][0], "parameters": {"scale": 2}}]}, 400, ["inputs.0.parameters.scale"]),
    ("malformed input parameter", "/v2/models/iris/infer", {"inputs": [{**iris_request([[1, 2, 3, 4]])["inputs"][0], "parameters": {"content_type": ["np"]}}]}, 400, ["content_type"]),
    ("unknown output parameter", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "outputs": [{"name": "label", "parameters": {"classification": 2}}]}, 400, ["classification"]),
    ("binary output asked for", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}, 400, ["binary_data", "not supported"]),
    ("binary outputs asked for", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "parameters": {"binary_data_output": True}}, 400, ["binary_data_output", "not supported"]),
    ("binary input announced", "/v2/models/iris/infer", {"inputs": [{**iris_request([[1, 2, 3, 4]])["inputs"][0], "parameters": {"binary_data_size": 32}}]}, 400, ["binary_data_size", "not supported"]),
    ("INT8 carrying 1000", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT8", "data": [1000, 3, 1, 0]}]}, 400, ["'input'", "INT8", "1000"]),
    ("INT16 carrying a fraction", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT16", "data": [5, 3.5, 1, 0]}]}, 400, ["INT16", "whole numbers", "value 1"]),
    ("UINT64 carrying -1", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "UINT64", "data": [-1, 3, 1, 0]}]}, 400, ["UINT64", "-1"]),
    ("FP16 past its range", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP16", "data": [70000, 3, 1, 0]}]}, 400, ["FP16", "65504"]),
    ("output asked for twice", "/v2/models/iris/infer", {**iris_request([[1, 2, 3, 4]]), "outputs": [{"name": "label"}, {"name": "label"}]}, 400, ["'label'", "more than once"]),
]


def _statuses(status):
    return status if isinstance(status, tuple) else (status,)


def _send(http, base, path, body):
    if body is None:
        return http.get(base + path)
    content = json.dumps(body) if isinstance(body, dict) else body
    return http.post(base + path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("name,path,body,status,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_that_names_the_fault(client, name, path, body, status, words):
    response = _send(client, "", path, body)
    assert response.status_code in _statuses(status), response.text
    error = response.json()["error"]
    for word in words:
        assert word in error, error


def test_the_real_process_refuses_the_whole_corpus_and_stays_healthy(server):
    assert len(BAD_INPUTS) >= 20
    with httpx.Client(timeout=10) as http:
        for name, path, body, status, _ in BAD_INPUTS:
            response = _send(http, server.url, path, body)
            assert response.status_code in _statuses(status) and 400 <= response.status_code < 500, (name, response.text)
            assert "error" in response.json(), name
        assert http.get(f"{server.url}/v2/health/ready").status_code == 200
        good = http.post(f"{server.url}/v2/models/iris/infer", json=iris_request([[5.1, 3.5, 1.4, 0.2]]))
        assert good.status_code == 200
        # a body with a Content-Length that lies is still cut off at the cap
        chunks = (b"x" * 16_384 for _ in range(8))
        streamed = http.post(f"{server.url}/v2/models/iris/infer", content=chunks)
        assert streamed.status_code == 413
        metrics = http.get(f"{server.url}/metrics").text
        assert 'edgeport_infer_requests_total{model="iris",outcome="bad_request",version="1"}' in metrics
    assert server.proc.poll() is None


def test_tritonclient_speaks_to_edgeport(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("churn", "1")
    metadata = client.get_model_metadata("churn")
    assert [i["datatype"] for i in metadata["inputs"]] == ["FP32", "FP32", "FP32", "BYTES", "BYTES"]

    x = triton.InferInput("input", [2, 4], "FP64")
    x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]), binary_data=False)
    result = client.infer("iris", [x], outputs=[triton.InferRequestedOutput("label", binary_data=False)])
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == ["setosa", "virginica"]

    inputs = []
    for name, value in (("tenure_months", 3.0), ("monthly_charges", 95.0), ("support_calls", 6.0)):
        t = triton.InferInput(name, [1, 1], "FP32")
        t.set_data_from_numpy(np.array([[value]], dtype=np.float32), binary_data=False)
        inputs.append(t)
    for name, value in (("plan", "basic"), ("region", "north")):
        t = triton.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=object), binary_data=False)
        inputs.append(t)
    result = client.infer("churn", inputs, outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 2) and abs(probabilities.sum() - 1) < 1e-5


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory):
    """A kNN over 20,000 rows: a 1,000-row request takes about half a second, long enough to be in flight."""
    import pandas as pd
    from sklearn.neighbors import KNeighborsRegressor

    from conftest import save_model
    from edgeport.export import export_model

    root = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(20_000, 16)), columns=[f"f{i}" for i in range(16)])
    model_path, sample = save_model(KNeighborsRegressor(3).fit(X, X.sum(axis=1)), root, "slow", X.head(50))
    return export_model(model_path, root / "bundles" / "slow", sample=sample, name="slow").bundle


DRAIN_S = 4  # long enough to check inside it on a loaded 2-core machine


def test_sigterm_finishes_every_request_in_flight(slow_bundle):
    # a generous inference timeout: six 1,000-row requests share two loaded cores, and this test is about the drain
    server = ServerProcess(slow_bundle.path.parent, "--drain-seconds", DRAIN_S, "--timeout", 120)
    dtype = "FP64" if slow_bundle.inputs[0].dtype == "float64" else "FP32"
    rows = np.random.default_rng(1).normal(size=(1000, 16))
    body = {"inputs": [{"name": "input", "shape": [1000, 16], "datatype": dtype, "data": rows.ravel().tolist()}]}
    sent = threading.Barrier(7)

    def call():
        with httpx.Client(timeout=60) as http:
            request = http.build_request("POST", f"{server.url}/v2/models/slow/infer", json=body)
            sent.wait()
            response = http.send(request)
            return response.status_code, len(response.json()["outputs"][0]["data"]) if response.status_code == 200 else response.text

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(call) for _ in range(6)]
            sent.wait()
            time.sleep(0.3)  # the six requests are on the wire; the server needs seconds to answer them all
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)  # uvicorn notices the signal within its 0.1 s tick, then drains
            # during the drain new connections are still served, and ready tells load balancers to go elsewhere
            with httpx.Client(timeout=DRAIN_S) as fresh:
                assert fresh.get(f"{server.url}/v2/health/live").status_code == 200
                assert fresh.get(f"{server.url}/v2/health/ready").status_code == 503
            assert time.monotonic() - signalled < DRAIN_S, "too slow to check inside the drain"
            # after it, new connections are refused
            deadline, refused = time.monotonic() + 10, False
            while not refused and time.monotonic() < deadline:
                try:
                    httpx.get(f"{server.url}/v2/health/live", timeout=1)
                    time.sleep(0.05)
                except httpx.ConnectError:
                    refused = True
            assert refused, "the server kept accepting connections after the drain"
            assert time.monotonic() - signalled > DRAIN_S - 0.5, "the server stopped accepting before the drain was over"
            outcomes = [f.result() for f in futures]
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is the clean exit
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM), server.output()
    finally:
        server.stop()
    assert outcomes == [(200, 1000)] * 6, outcomes


def test_inference_past_the_timeout_is_a_503_not_a_hang(slow_bundle):
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    client = TestClient(create_app(Repository(slow_bundle.path), timeout_s=0.01))
    dtype = "FP64" if slow_bundle.inputs[0].dtype == "float64" else "FP32"
    rows = np.zeros((1000, 16)).ravel().tolist()
    response = client.post("/v2/models/slow/infer", json={"inputs": [{"name": "input", "shape": [1000, 16], "datatype": dtype, "data": rows}]})
    assert response.status_code == 503
    assert "longer than 0.01s" in response.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_cors_lets_a_named_origin_call_the_api(bundles):
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    client = TestClient(create_app(Repository(bundles), cors_origins=("https://app.example.com",)))
    preflight = client.options("/v2/models/iris/infer", headers={
        "origin": "https://app.example.com", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    other = client.post("/v2/models/iris/infer", json=iris_request([[5.1, 3.5, 1.4, 0.2]]),
                        headers={"origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
