"""create_app(): the OIP v2 fallback endpoint, the demo site, the bundle files, and /metrics.

Bad input is always a 4xx with {"error": "..."} naming what is wrong; it never
reaches onnxruntime and never gets a 5xx. Each model's request budget (oip.py)
refuses a body before reading it when it is larger than the model can need;
big bodies are parsed, and inference runs, in a worker thread, each within the
per-request timeout.

The infer route is the hot path, so it is answered before FastAPI's routing,
dependency solving and middleware stack (Front, below), by the same checks;
every other route goes through FastAPI. Outermost first:

    CloseWhileDraining (serving.py)  `connection: close` while draining
    Front                            last resort (JSON 500), nosniff on every response, then infer or:
      CORSMiddleware                 only with --cors-origin (and then in front of infer too)
      FastAPI's stack, BodyLimit     every other route
"""
from __future__ import annotations

import logging
import re
import weakref
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..bundle import OutputSpec
from ..drift import DEFAULT_MIN_ROWS as DEFAULT_DRIFT_MIN_ROWS, DEFAULT_THRESHOLD as DEFAULT_DRIFT_THRESHOLD
from .monitoring import DEFAULT_WINDOW_S as DEFAULT_DRIFT_WINDOW_S
from ..errors import RowValidationError, RuntimeUnavailableError
from ..explain import (DEFAULT_MAX_SAMPLES, DEFAULT_TIMEOUT_S as DEFAULT_EXPLAIN_TIMEOUT_S, ExplanationBudgetError,
                       ExplanationUnsupportedError, explain_row)
from .http import NOSNIFF, BodyLimit, error
from .oip import (ErrorResponse, InferInputError, InferRequest, InferResponse, ModelMetadata, RequestBudget,
                  feeds_from_request, parse_request, response_outputs, tensor_metadata)
from .repository import ModelUnavailable, Repository, RegistryRepository, ServedModel
from .static import Snapshot

# on site.json: a site built without --fallback-url falls back to the server that serves it (web_demo/demo/app.js)
SAME_ORIGIN_HEADER = "Edgeport-Fallback"

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 1024
DEFAULT_TIMEOUT_S = 10.0
INLINE_ROWS = 8
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
# measured here: a thread hop costs ~150 us, about what parsing and checking a 4 KB body takes (a single row: ~10 us)
INLINE_BODY_BYTES = 4 * 1024

logger = logging.getLogger("uvicorn.error")


def create_app(
    repository: Repository | RegistryRepository,
    *,
    site_dir: Optional[Path] = None,
    cors_origins: tuple[str, ...] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_batch: int = DEFAULT_MAX_BATCH,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    explain_timeout_s: float = DEFAULT_EXPLAIN_TIMEOUT_S,
    explain_samples: int = DEFAULT_MAX_SAMPLES,
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
    drift_thresholds: Optional[dict[str, float]] = None,
    drift_window_s: Optional[float] = DEFAULT_DRIFT_WINDOW_S,
    drift_min_rows: int = DEFAULT_DRIFT_MIN_ROWS,
    prediction_log: Optional[Any] = None,
) -> FastAPI:
    """The ASGI app serving `repository`'s models (and `site_dir` at /, if given).

    Refuses bodies over max_body_bytes (and over what each model can need) and requests over max_batch rows;
    inference gets timeout_s (and so does a body's arrival, under serving.serve_forever). An explanation
    (explain.py) gets explain_timeout_s and at most explain_samples of shap's samples. Live drift (monitoring.py)
    is a PSI above drift_threshold (drift_thresholds: per feature, where a model has it) over the last
    drift_window_s seconds (None: since the start), once a feature has drift_min_rows live values. A prediction_log (prediction_log.PredictionLog) gets every answered request."""
    from .metrics import Metrics
    from .monitoring import Monitors, add_routes

    if max_body_bytes < 1 or max_batch < 1 or not timeout_s > 0 or not explain_timeout_s > 0 or explain_samples < 1:
        raise ValueError(f"max_body_bytes, max_batch and explain_samples must be at least 1, timeout_s and "
                         f"explain_timeout_s above 0; got {max_body_bytes}, {max_batch}, {explain_samples}, "
                         f"{timeout_s}, {explain_timeout_s}")
    if not 0 < drift_threshold < float("inf"):
        raise ValueError(f"drift_threshold must be a number above 0, such as 0.2; got {drift_threshold}")
    metrics = Metrics()
    for feature, limit in (drift_thresholds or {}).items():
        if not 0 < limit < float("inf"):
            raise ValueError(f"drift_thresholds[{feature!r}] must be a number above 0, such as 0.2; got {limit}")
    monitors = metrics.monitors = Monitors(drift_threshold, thresholds=drift_thresholds, window_s=drift_window_s,
                                           min_rows=drift_min_rows)
    # the site's files are read and hashed (a 14 MB wasm: tens of ms, mostly outside the GIL) while FastAPI builds
    # its routes; a site that fails its check still fails the start, below
    site_loading = _in_background(Snapshot.of_site, site_dir) if site_dir is not None else None
    # by model: a registry's versions load (and leave the cache) while the server runs
    budgets: "weakref.WeakKeyDictionary[Any, RequestBudget]" = weakref.WeakKeyDictionary()

    def budget_of(model: ServedModel) -> RequestBudget:
        budget = budgets.get(model.session)
        if budget is None:
            budget = budgets[model.session] = RequestBudget.for_bundle(model.bundle, max_batch, max_body_bytes)
        return budget

    def infer_model(scope: dict) -> Optional[ServedModel]:
        """The model of an infer request (POST /v2/models/NAME[/versions/VERSION]/infer) that is loaded and can
        answer, else None: FastAPI's route then loads it off the event loop, or says why it can't (no such model,
        a version that can't be served)."""
        match = INFER_PATH.fullmatch(scope["path"]) if scope["method"] == "POST" else None
        if match is None:
            return None
        try:
            return repository.peek(match["name"], match["version"])
        except ModelUnavailable:
            return None

    def too_large(model: ServedModel, budget: RequestBudget) -> Response:
        # close rather than read (and throw away) the rest of the body
        response = metrics.refused(model, f"request body is larger than the {budget.max_bytes} bytes that the largest "
                                          f"request for {model.name} ({budget.rows} rows) can need; send fewer rows "
                                          "per request", 413)
        response.headers["connection"] = "close"
        return response

    app = EdgeportAPI(title="edgeport", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.repository = repository
    app.state.has_site = site_dir is not None
    app.state.prediction_log = prediction_log
    app.state.draining = False  # set by the server on SIGTERM (serving.DrainingServer)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = next(iter(exc.errors()), {})
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return error(400, f"request body is not valid JSON: {first.get('msg')}")
        return error(400, f"invalid request: field {where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    def find(name: str, version: Optional[str]) -> ServedModel:
        try:
            model = repository.get(name, version)
            if model is None:
                what = f"model {name!r}" + (f" version {version!r}" if version else "")
                raise StarletteHTTPException(404, f"unknown {what}; this server has {', '.join(repository.names())}")
        except ModelUnavailable as exc:  # a damaged registry version, or a registry that can't be read: a 409
            raise StarletteHTTPException(409, str(exc)) from exc
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
        classes = list(manifest.classes) if manifest.classes is not None else None
        return ModelMetadata(
            name=model.name, versions=repository.versions(model.name), platform="onnxruntime_onnx",
            inputs=tensor_metadata(model.bundle.inputs), outputs=tensor_metadata(model.bundle.outputs),
            # the manifest URL of this version: apps resolve the active model at run time, not in their code
            parameters={"task": manifest.task, "classes": classes, "version": model.version,
                        "manifest_url": f"/bundles/{model.name}/{model.version}/manifest.json"},
        )

    def model_ready(name: str, version: Optional[str] = None) -> dict:
        find(name, version)
        return {"name": name, "ready": True}

    async def answer_infer(model: ServedModel, scope: dict, receive) -> Response:
        budget = budget_of(model)
        length = _content_length(scope)
        if length is not None and length > budget.max_bytes:
            # refusing a hostile body must cost far less than serving a good request: refused before reading it
            return too_large(model, budget)
        started = time.perf_counter()
        # a body that doesn't arrive within timeout_s is the server's to cut (connections.py): a timer, not a scope
        try:
            body = await _read_body(receive, budget.max_bytes)
        except ClientDisconnect:
            logger.warning("the body of a request to %s never arrived in full: the client went away, or was too slow",
                           scope["path"])
            return Response(status_code=400)  # nobody is left to read an answer
        if body is None:  # streamed past the budget
            return too_large(model, budget)
        try:
            if len(body) <= INLINE_BODY_BYTES:
                payload, feeds, names = _prepare(model, body, budget, max_batch)
            else:  # a big body takes milliseconds to parse and check: not on the event loop, where others wait
                payload, feeds, names = await anyio.to_thread.run_sync(_prepare, model, body, budget, max_batch)
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
        except Exception as exc:
            if type(exc).__name__ == "InvalidArgument":  # onnxruntime's own: the values, not the server, are at fault
                # (an id past an Embedding's vocabulary passes the manifest's checks; the graph's Gather refuses it)
                return metrics.refused(model, "the model can't compute an answer for these values: onnxruntime says "
                                       f"{_ort_status(exc)}. For an id input, every id must be below the "
                                       "vocabulary size the model was trained with.")
            # onnxruntime failed on input that passed every check: a server fault
            metrics.observe(model, "error", started, 0, payload)
            return error(500, f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        metrics.observe(model, "ok", started, rows, payload)
        by_role = {spec.role: v for spec, v in zip(_specs(model, names), values)}
        metrics.predictions(model, by_role)
        monitors.record(model, feeds, by_role.get("probabilities"))  # a queue append: drift is folded elsewhere
        if prediction_log is not None:  # a queue append too: the lines are made and written by its thread
            prediction_log.record(model, feeds, by_role, (time.perf_counter() - started) * 1000)
        response = InferResponse(model_name=model.name, model_version=model.version, id=payload.id,
                                 outputs=response_outputs(model.bundle, names, values))
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

    async def infer(request: Request, name: str, version: Optional[str] = None) -> Response:
        # Front answers every infer request for a loaded model: this route is for the OpenAPI schema, and loads a
        # registry's version on its first request, in a worker thread
        model = await anyio.to_thread.run_sync(find, name, version)
        return await answer_infer(model, request.scope, request.receive)

    infer_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}}}
    refusals = {status: {"model": ErrorResponse, "description": what} for status, what in (
        (400, "the request doesn't fit the model"), (404, "no such model or version"),
        (408, "the body did not arrive in time"), (413, "the body is larger than the model can need"))}
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.get(prefix, response_model=ModelMetadata)(metadata)
        app.get(prefix + "/ready")(model_ready)
        app.post(prefix + "/infer", openapi_extra=infer_body,
                 responses={200: {"model": InferResponse}, **refusals})(infer)

    async def explain(body: ExplainRequest, name: str, version: Optional[str] = None) -> Response:
        model = await anyio.to_thread.run_sync(find, name, version)
        try:  # shap's work is seconds of CPU: never on the event loop
            explanation = await anyio.to_thread.run_sync(
                lambda: explain_row(model, body.row, timeout_s=explain_timeout_s, max_samples=explain_samples))
        except tuple(EXPLAIN_REFUSALS) as exc:
            return error(next(status for kind, status in EXPLAIN_REFUSALS.items() if isinstance(exc, kind)), str(exc))
        return JSONResponse(explanation.to_dict())

    explain_refusals = {status: {"model": ErrorResponse, "description": what} for status, what in (
        (400, "the row doesn't fit the model, or is more than one row"), (404, "no such model or version"),
        (422, "the model can't be explained per column, or the explanation passed its time budget"),
        (501, "this server hasn't the explain extra (shap)"))}
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.post(prefix + "/explain", responses={200: {"model": ExplainResponse}, **explain_refusals})(explain)

    add_routes(app, find, metrics, monitors)

    generate_openapi = app.openapi

    def openapi() -> dict:
        schema = generate_openapi()
        # the schema of the body infer reads itself, for clients and schema-driven fuzzers; its $defs go in
        # components. Made here, at the first request for it, not at every start
        infer_schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        infer_defs = {**infer_schema.pop("$defs", {}), "InferRequest": infer_schema}
        schema.setdefault("components", {}).setdefault("schemas", {}).update(infer_defs)
        # the models this server has, so that clients (and fuzzers) name one rather than guess
        known = {"name": repository.names(),
                 "version": sorted({v for name in repository.names() for v in repository.versions(name)})}
        for path, operations in schema["paths"].items():
            for operation in operations.values() if path.startswith("/v2/models/") else ():
                for parameter in operation.get("parameters", ()):
                    if parameter["in"] == "path" and parameter["name"] in known:
                        parameter["schema"]["enum"] = known[parameter["name"]]
        return schema

    app.openapi = openapi

    @app.get("/metrics")
    async def prometheus() -> Response:
        # on the event loop, where the counters are updated: a scrape never reads them halfway through an update
        return Response(metrics.render(), media_type=metrics.content_type)

    def bundle_file(name: str, version: str, path: str, request: Request) -> Response:
        model = find(name, version)
        # the snapshot read when the model loaded: the files it was built from, with their manifest hashes as ETags;
        # a registry's published version never changes, so a browser may keep its files for good
        cache = "public, max-age=31536000, immutable" if model.immutable else "public, max-age=3600"
        response = model.files.response(path, request, cache=cache)
        return response or error(404, f"{path!r} is not a file of bundle {name} version {version}")

    @app.get("/bundles/{name}/_aliases.json")
    def aliases(name: str) -> Response:
        """Where each alias points now (a registry; bundles on disk have none), read by the client's resolveModel."""
        try:
            versions = repository.versions(name)
            if not versions:
                return error(404, f"unknown model {name!r}; this server has {', '.join(repository.names())}")
            return JSONResponse({"name": name, "aliases": repository.aliases(name), "versions": versions},
                                headers={"Cache-Control": "no-cache"})
        except ModelUnavailable as exc:
            return error(409, str(exc))

    # one route per method, each with its own operation ID (one route for several methods gives them all one)
    for method in ("GET", "HEAD"):
        app.add_api_route("/bundles/{name}/{version}/{path:path}", bundle_file, methods=[method],
                          operation_id=f"bundle_file_{method.lower()}")

    if site_loading is not None:
        site = site_loading.result()

        def site_file(path: str, request: Request) -> Response:
            if request.method not in ("GET", "HEAD") or path == "v2" or path.startswith("v2/"):
                return error(404, f"no such endpoint: {request.method} /{path}")
            relative = path.rstrip("/")
            candidates = [relative or "index.html", f"{relative}/index.html".lstrip("/")]
            for candidate in candidates:
                response = site.response(candidate, request, cache="no-cache")
                if response is not None:
                    if candidate == "site.json":  # this server answers OIP v2 too: the page's fallback by default
                        response.headers[SAME_ORIGIN_HEADER] = "same-origin"
                    return response
            return error(404, f"not found: /{path}")

        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            app.add_api_route("/{path:path}", site_file, methods=[method], operation_id=f"site_file_{method.lower()}")

    async def infer_asgi(scope: dict, receive, send) -> None:
        response = await answer_infer(scope["edgeport.model"], scope, receive)
        await response(scope, receive, send)

    routed = super(EdgeportAPI, app).__call__
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        def cors(inner):
            return CORSMiddleware(inner, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                  allow_headers=["content-type"])

        routed, infer_asgi = cors(routed), cors(infer_asgi)
    app.front = Front(routed, infer_model, infer_asgi)
    return app


class ExplainRequest(BaseModel):
    """POST /v2/models/NAME/explain: one row, as the JS client sends rows (decoding.py)."""
    model_config = ConfigDict(extra="forbid")
    row: Any


class AttributionItem(BaseModel):
    feature: str
    value: Any
    attribution: float


class ExplainResponse(BaseModel):
    model_name: str
    model_version: str
    target: Any
    base_value: float
    prediction: float
    attributions: list[AttributionItem]


# bad input is a 4xx, never a 5xx; a server without shap is 501: the request was fine, the feature isn't installed
EXPLAIN_REFUSALS = {RowValidationError: 400, ExplanationUnsupportedError: 422, ExplanationBudgetError: 422,
                    RuntimeUnavailableError: 501}


def _specs(model: ServedModel, names: list[str]) -> list[OutputSpec]:
    by_name = {o.name: o for o in model.bundle.outputs}
    return [by_name[n] for n in names]


def _requested_outputs(model: ServedModel, payload: InferRequest) -> list[str]:
    available = [o.name for o in model.bundle.outputs]
    if not payload.outputs:
        return available
    names = [o.name for o in payload.outputs]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InferInputError(f"unknown output {unknown[0]!r}; the model has {', '.join(available)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InferInputError(f"output {repeated[0]!r} is requested more than once")
    return names


def _prepare(model: ServedModel, body: bytes, budget: RequestBudget, max_batch: int):
    """Parse and check a request body: (request, onnxruntime feeds, output names), or InferInputError."""
    payload = parse_request(body, budget)
    return payload, feeds_from_request(model.bundle, payload, max_batch), _requested_outputs(model, payload)


def _ort_status(exc: BaseException) -> str:
    """onnxruntime's status message, without its error-code preamble."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split("Status Message: ", 1)[-1][:300]


def _in_background(function, *args) -> Future:
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="edgeport-site-snapshot", daemon=True).start()
    return future


def _content_length(scope: dict) -> Optional[int]:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_body(receive, limit: int) -> Optional[bytes]:
    """The body, or None as soon as it passes limit; ClientDisconnect if the client goes away first."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


class EdgeportAPI(FastAPI):
    """FastAPI, with every HTTP request going through `front` (set by create_app) before FastAPI's own stack."""

    front: Optional["Front"] = None

    async def __call__(self, scope: dict, receive, send) -> None:
        if self.front is None or scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        await self.front(scope, receive, send)


class Front:
    """The outermost ASGI layer of the app, one layer instead of several:

    - last resort: an exception that no route turned into an answer becomes a JSON 500 and one log line (not a
      plain-text 500 and a traceback). Bad input never gets here: it is a 4xx where it is found;
    - `X-Content-Type-Options: nosniff` on every response: a browser never guesses a type we didn't send;
    - an infer request for a model that exists goes to `infer` (with the model in scope["edgeport.model"]),
      before FastAPI's routing, which costs more than the checks and the inference of a single row; any other
      request goes to `routed`."""

    def __init__(self, routed, infer_model, infer):
        self.routed = routed
        self.infer_model = infer_model
        self.infer = infer

    async def __call__(self, scope: dict, receive, send) -> None:
        started = False

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers") or []
                if not any(key.lower() == b"x-content-type-options" for key, _ in headers):
                    message = {**message, "headers": [*headers, NOSNIFF]}
            await send(message)

        try:
            model = self.infer_model(scope)
            if model is None:
                await self.routed(scope, receive, guarded_send)
            else:
                scope["edgeport.model"] = model
                await self.infer(scope, receive, guarded_send)
        except Exception as exc:
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            logger.error("%s %s failed: %s: %s", scope.get("method"), scope.get("path"), type(exc).__name__, detail)
            if not started:
                await error(500, f"internal error ({type(exc).__name__}); the server log has the details")(
                    scope, receive, guarded_send)
