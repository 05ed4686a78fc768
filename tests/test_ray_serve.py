"""Ray Serve: what a replica builds and answers, tested without Ray (it doesn't install beside TensorFlow's pins,
see exporter/ray_serve.py); the deployment itself on a local Ray instance where Ray is installed."""
from __future__ import annotations

import importlib.util
import json
import pickle

import anyio
import pytest

from edgeport.decoding import feeds_from_rows
from edgeport.errors import RuntimeUnavailableError
from edgeport.ray_serve import app_factory, deployment
from edgeport.runtimes.server import infer_request

pytest.importorskip("fastapi", reason="needs the serve extra")


def golden_request(bundle) -> tuple[bytes, dict]:
    golden = bundle.golden()
    return infer_request(bundle, feeds_from_rows(bundle.inputs, bundle.manifest.layout, golden["rows"])), golden


def test_a_replica_builds_the_app_from_the_pickled_factory_and_answers_oip_v2(bundles, tmp_path):
    """What Ray does with serve.ingress's builder: unpickle it in the replica, call it, route requests to the app."""
    import httpx

    bundle = bundles["iris"]
    factory = pickle.loads(pickle.dumps(app_factory(bundle.path, site_cache=tmp_path / "sites")))
    app = factory()
    body, golden = golden_request(bundle)

    async def ask():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
            ready = await client.get("/v2/health/ready")
            answer = await client.post(f"/v2/models/iris/versions/{bundle.version}/infer", content=body,
                                       headers={"content-type": "application/json"})
            return ready, answer

    ready, answer = anyio.run(ask)
    assert ready.status_code == 200, ready.text
    assert answer.status_code == 200, answer.text
    labels = next(o for o in answer.json()["outputs"] if o["name"] == bundle.outputs[0].name)
    assert labels["data"] == golden["outputs"]["label"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_without_ray_a_deployment_names_the_extra_to_install(bundles):
    with pytest.raises(RuntimeUnavailableError, match=r"needs the ray extra .*pip install"):
        deployment(bundles["iris"].path)


@pytest.mark.slow
def test_replicas_on_a_local_ray_instance_answer_an_infer_request(bundles):
    ray = pytest.importorskip("ray", reason="Ray isn't installed: it conflicts with TensorFlow's pins (ray_serve.py)")
    import httpx
    from ray import serve

    bundle = bundles["iris"]
    body, golden = golden_request(bundle)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.run(deployment(bundle.path, num_replicas=2), route_prefix="/")
        answer = httpx.post(f"http://127.0.0.1:8000/v2/models/iris/versions/{bundle.version}/infer", content=body,
                            headers={"content-type": "application/json"}, timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in json.loads(answer.text)["outputs"]}
        assert outputs[bundle.outputs[0].name] == golden["outputs"]["label"]
        assert serve.status().applications["default"].deployments["edgeport"].replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
