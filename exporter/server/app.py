"""create_app(): the OIP v2 fallback endpoint, the demo site, the bundle files, and /metrics.

Bad input is always a 4xx with {"error": "..."} naming what is wrong; it never
reaches onnxruntime and never gets a 5xx. Inference runs in a worker thread
with a per-request timeout.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .http import BodyLimit, SecurityHeaders, error
from .oip import (InferInputError, InferRequest, InferResponse, ModelMetadata, feeds_from_request, response_outputs,
                  tensor_metadata)
from .repository import Repository, ServedModel
from .static import Snapshot

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 1024
DEFAULT_TIMEOUT_S = 10.0
INLINE_ROWS = 8


def create_app(
    repository: Repository,
    *,
    site_dir: Optional[Path] = None,
    cors_origins: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_batch: int = DEFAULT_MAX_BATCH,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FastAPI:
    """The ASGI app serving `repository`'s models (and `site_dir` at /, if given)."""
    from .metrics import Metrics

    metrics = Metrics()
    app = FastAPI(title="edgeport", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.repository = repository
    app.state.draining = False  # set by the server on SIGTERM (serving.DrainingServer)
    if max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type"])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON: {first.get('msg')}")
        return error(400, f"invalid request: field {where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    def find(name: str, version: Optional[str]) -> ServedModel:
        model = repository.get(name, version)
        if model is None:
            what = f"model {name!r}" + (f" version {version!r}" if version else "")
            raise StarletteHTTPException(404, f"unknown {what}; this server has {', '.join(sorted(repository.models))}")
        return model

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        if app.state.draining:  # shutting down: load balancers should stop sending traffic here
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2")
    def server_metadata() -> dict:
        return {"name": "edgeport", "version": __version__, "extensions": []}

    def metadata(name: str, version: Optional[str] = None) -> ModelMetadata:
        model = find(name, version)
        manifest = model.bundle.manifest
        return ModelMetadata(
            name=model.name, versions=sorted(repository.models[model.name]), platform="onnxruntime_onnx",
            inputs=tensor_metadata(model.bundle.inputs), outputs=tensor_metadata(model.bundle.outputs),
            # the manifest URL of this version: apps resolve the active model at run time, not in their code
            parameters={"task": manifest["task"], "classes": manifest.get("classes"), "version": model.version,
                        "manifest_url": f"/bundles/{model.name}/{model.version}/manifest.json"},
        )

    def model_ready(name: str, version: Optional[str] = None) -> dict:
        find(name, version)
        return {"name": name, "ready": True}

    async def infer(request: Request, name: str, version: Optional[str] = None) -> Response:
        model = find(name, version)
        started = time.perf_counter()
        body = await request.body()
        try:
            payload = InferRequest.model_validate_json(body)
        except ValueError as exc:  # pydantic.ValidationError, with the field at fault
            return metrics.refused(model, _validation_message(exc))
        try:
            feeds = feeds_from_request(model.bundle, payload, max_batch)
            names = _requested_outputs(model, payload)
        except InferInputError as exc:
            return metrics.refused(model, str(exc))
        try:
            rows = next(iter(feeds.values())).shape[0]
            if rows <= INLINE_ROWS:
                # a few rows take microseconds: a thread hop would cost more than the inference
                values = model.session.run(names, feeds)
            else:
                with anyio.fail_after(timeout_s):
                    values = await anyio.to_thread.run_sync(model.session.run, names, feeds, abandon_on_cancel=True)
        except TimeoutError:
            metrics.observe(model, "timeout", started, 0, payload)
            return error(503, f"inference took longer than {timeout_s:g}s; try fewer rows")
        except Exception as exc:  # onnxruntime failed on input that passed every check: a server fault
            metrics.observe(model, "error", started, 0, payload)
            return error(500, f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        metrics.observe(model, "ok", started, rows, payload)
        metrics.predictions(model, {spec["role"]: v for spec, v in zip(_specs(model, names), values)})
        response = InferResponse(model_name=model.name, model_version=model.version, id=payload.id,
                                 outputs=response_outputs(model.bundle, names, values))
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.get(prefix, response_model=ModelMetadata)(metadata)
        app.get(prefix + "/ready")(model_ready)
        app.post(prefix + "/infer")(infer)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.api_route("/bundles/{name}/{version}/{path:path}", methods=["GET", "HEAD"])
    def bundle_file(name: str, version: str, path: str, request: Request) -> Response:
        model = find(name, version)
        # the snapshot read at start-up: the files the model was built from, with their manifest hashes as ETags
        response = model.files.response(path, request, cache="public, max-age=3600")
        return response or error(404, f"{path!r} is not a file of bundle {name} version {version}")

    if site_dir is not None:
        site = Snapshot.of_site(site_dir)

        @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
        def site_file(path: str, request: Request) -> Response:
            if request.method not in ("GET", "HEAD") or path == "v2" or path.startswith("v2/"):
                return error(404, f"no such endpoint: {request.method} /{path}")
            relative = path.rstrip("/")
            candidates = [relative or "index.html", f"{relative}/index.html".lstrip("/")]
            for candidate in candidates:
                response = site.response(candidate, request, cache="no-cache")
                if response is not None:
                    return response
            return error(404, f"not found: /{path}")

    return app


def _specs(model: ServedModel, names: list[str]) -> list[dict]:
    by_name = {o["name"]: o for o in model.bundle.outputs}
    return [by_name[n] for n in names]


def _requested_outputs(model: ServedModel, payload: InferRequest) -> list[str]:
    available = [o["name"] for o in model.bundle.outputs]
    if not payload.outputs:
        return available
    names = [o.name for o in payload.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InferInputError(f"unknown output {unknown[0]!r}; the model has {', '.join(available)}")
    return names


def _validation_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return f"invalid request: {exc}"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}"
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"invalid request: field {where}: {first.get('msg')}"
