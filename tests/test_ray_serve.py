"""Ray Serve: what a replica builds and answers, in this venv (Ray doesn't install beside TensorFlow's pins, see
exporter/ray_serve.py); the deployment itself on a local Ray instance, in a venv of Ray's own (ray_env.py)."""
from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

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
    """What Ray does with serve.ingress's builder: check it is a builder function (inspect.isfunction: anything
    else Ray serves as the ASGI app itself), cloudpickle it, unpickle it in the replica, call it, route requests."""
    import inspect

    import cloudpickle
    import httpx

    bundle = bundles["iris"]
    factory = app_factory(bundle.path, site_cache=tmp_path / "sites")
    assert inspect.isfunction(factory) and not inspect.signature(factory).parameters
    factory = pickle.loads(cloudpickle.dumps(factory))
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


def test_replicas_on_a_local_ray_instance_answer_an_infer_request(bundles):
    """The deployment on a real Ray instance (Ray 2.60 in a venv of its own, ray_env.py): two replicas RUNNING and
    the golden rows answered through Ray's HTTP proxy with the golden labels."""
    import subprocess

    from conftest import free_port, need
    from ray_env import ray_python

    python, why = ray_python()
    need(python is not None, f"Ray Serve could not be installed: {why}")
    bundle = bundles["iris"]
    script = Path(__file__).with_name("ray_replicas.py")
    run = subprocess.run([python, str(script), str(bundle.path), str(free_port())], capture_output=True, text=True,
                         timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("edgeport-result ")]
    assert run.returncode == 0 and lines, (run.stdout[-2000:], run.stderr[-3000:])
    result = json.loads(lines[-1].split(" ", 1)[1])
    assert result["status"] == 200, result["body"]
    outputs = {o["name"]: o["data"] for o in json.loads(result["body"])["outputs"]}
    assert outputs[bundle.outputs[0].name] == bundle.golden()["outputs"]["label"]
    assert result["replicas"].get("RUNNING") == 2, result["replicas"]
