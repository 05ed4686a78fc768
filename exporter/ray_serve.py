"""Serving on Ray Serve: the very OIP v2 app `edgeport serve` runs (serving.build_app), as a Ray Serve deployment
with replicas.

    serve run edgeport.ray_serve:app_builder path=/shared/bundles num_replicas=4

or from Python:

    from ray import serve
    from edgeport.ray_serve import deployment
    serve.run(deployment("/shared/bundles", num_replicas=4))

Each replica builds the app itself: serve.ingress is given a builder (app_factory), which Ray pickles and calls
in the replica, because an onnxruntime session can't be pickled and sent. So every replica reads, verifies and
warms up the bundles at PATH (a bundle, a folder of bundles or a registry, as `edgeport serve` takes), which must
be where every node sees it. The app's own limits (body size, rows a request, inference timeout) hold in each
replica; the connection guards of `edgeport serve` (header and body timeouts, the connection cap, draining on
SIGTERM) belong to uvicorn there, and to Ray's HTTP proxy here.

Ray is imported only when a deployment is made, and it is not in the `all` extra: ray[serve] 2.60 needs
packaging >= 24 (tensorflowjs 4.22 pins packaging~=23.1), and its resolver takes protobuf 7 unless held below 6
(TensorFlow 2.19 needs protobuf<6; edgeport's requirements hold it there). Install it where tensorflowjs isn't:
pip install 'edgeport[serve,ray]'. tests/test_ray_serve.py runs this deployment on a local Ray 2.60 instance with two replicas, in a
venv of Ray's own layered over the test venv (tests/ray_env.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from .extras import require

DEFAULT_REPLICAS = 2


def app_factory(path: str | Path, **app_options: Any) -> Callable[[], Any]:
    """What a replica calls to build its app: serving.build_app for `path`. A function, not a functools.partial:
    serve.ingress takes a builder only where inspect.isfunction says so, and would serve a partial as the ASGI app
    itself (each request then called build_app(scope, receive, send): found on a real Ray 2.60). Ray pickles it
    with cloudpickle."""
    require("fastapi", "serve", "a Ray Serve deployment of the edgeport server")
    path = str(path)

    def build_edgeport_app() -> Any:
        from edgeport.serving import build_app

        return build_app(path, **app_options)

    return build_edgeport_app


class EdgeportReplica:
    """One replica of the edgeport server; serve.ingress gives it the app's routes."""


def deployment(path: str | Path, *, num_replicas: int = DEFAULT_REPLICAS, ray_actor_options: Optional[dict] = None,
               name: str = "edgeport", **app_options: Any):
    """The Ray Serve application (a bound deployment, for serve.run) serving `path` with `num_replicas` replicas;
    app_options go to serving.build_app (site, alias, allow_unverified, max_body_bytes, max_batch, timeout_s)."""
    serve = require("ray.serve", "ray", "a Ray Serve deployment")
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, not {num_replicas}")
    replica = serve.ingress(app_factory(path, **app_options))(EdgeportReplica)
    # one CPU a replica: onnxruntime runs each request on one thread (server.repository.load_served)
    return serve.deployment(replica, name=name, num_replicas=num_replicas,
                            ray_actor_options=ray_actor_options or {"num_cpus": 1}).bind()


def app_builder(args: dict[str, str]):
    """`serve run edgeport.ray_serve:app_builder path=PATH [num_replicas=N] [alias=NAME]`: Ray's application
    builder, given the command line's key=value pairs."""
    if "path" not in args:
        raise ValueError("give the bundle, folder of bundles or registry to serve: path=PATH")
    options = {key: value for key, value in args.items() if key in ("alias", "site")}
    if "site" in options:
        options["site"] = Path(options["site"])
    return deployment(args["path"], num_replicas=int(args.get("num_replicas", DEFAULT_REPLICAS)), **options)
