"""Run by tests/test_ray_serve.py in the Ray venv (ray_env.py): edgeport's deployment on a local Ray instance with
two replicas, one infer request of the bundle's golden rows through Ray's HTTP proxy, the answer and the replica
states printed as one JSON line.

    python ray_replicas.py BUNDLE PORT
"""
import json
import sys

import httpx
import ray
from ray import serve

from edgeport.bundle import read_bundle
from edgeport.decoding import feeds_from_rows
from edgeport.ray_serve import deployment
from edgeport.runtimes.server import infer_request

path, port = sys.argv[1], int(sys.argv[2])
bundle = read_bundle(path)
body = infer_request(bundle, feeds_from_rows(bundle.inputs, bundle.manifest.layout, bundle.golden()["rows"]))
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment(path, num_replicas=2), route_prefix="/")
    answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/{bundle.name}/versions/{bundle.version}/infer",
                        content=body, headers={"content-type": "application/json"}, timeout=60)
    states = serve.status().applications["default"].deployments["edgeport"].replica_states
    print("edgeport-result " + json.dumps({"status": answer.status_code, "body": answer.text, "replicas": dict(states)}),
          flush=True)
finally:
    serve.shutdown()
    ray.shutdown()
