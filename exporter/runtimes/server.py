"""The `server` runtime: the fallback server's own app, in this process, answering real OIP v2 requests.

The rows are encoded the way the JS client's fallback encodes them (decoded into tensors, then sent as
OIP v2 JSON: FP32/FP64/INT32/INT64/BYTES, a missing number as null), posted to the app that `edgeport serve`
runs (create_app over a Repository of this one bundle) through httpx's ASGI transport, and the answer is
read back by output name. So the server's request parsing, its decoder, its session and its response
encoding are all inside the parity gate: a skew between the fallback path and the browser is caught by
`check -r server` like any other.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..decoding import feeds_from_rows
from ..errors import RowValidationError, RuntimeFailedError
from ..extras import require
from . import RuntimeOutput, with_labels

DATATYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "string": "BYTES"}
HOST = "http://edgeport.in-process"


def run(bundle: Bundle, rows: list) -> RuntimeOutput:
    for module in ("fastapi", "httpx"):
        require(module, "serve", "the server runtime (check -r server)")
    import anyio
    import httpx

    from ..server.app import DEFAULT_MAX_BATCH, create_app
    from ..server.repository import Repository

    try:
        feeds = feeds_from_rows(bundle.inputs, bundle.manifest.layout, rows)
    except RowValidationError as exc:
        raise RuntimeFailedError(f"the rows don't fit the bundle's inputs: {exc}") from exc
    # at export the parity check is still pending: this runtime is part of deciding it
    app = create_app(Repository(bundle.path, allow_unverified=True))
    url = f"/v2/models/{bundle.name}/versions/{bundle.version}/infer"
    batches = [{name: value[start:start + DEFAULT_MAX_BATCH] for name, value in feeds.items()}
               for start in range(0, len(rows), DEFAULT_MAX_BATCH)]

    async def post_all() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=HOST, timeout=120) as client:
            return [await client.post(url, content=infer_request(bundle, batch),
                                      headers={"content-type": "application/json"}) for batch in batches]

    answers = anyio.run(post_all)
    parts: dict[str, list[np.ndarray]] = {}
    for answer in answers:
        if answer.status_code != 200:
            error = _error_of(answer)
            raise RuntimeFailedError(f"the fallback server answered {answer.status_code} on rows the bundle's "
                                     f"inputs accept: {error}")
        for name, value in _outputs(bundle, answer.json()).items():
            parts.setdefault(name, []).append(value)
    by_role = {o.role: np.concatenate(parts[o.name]) for o in bundle.outputs}
    return RuntimeOutput(with_labels(by_role, bundle.classes))


def infer_request(bundle: Bundle, feeds: dict[str, np.ndarray]) -> bytes:
    """An OIP v2 infer request body for decoded feeds, as the JS client's fallback builds it."""
    inputs = []
    for spec in bundle.inputs:
        value = feeds[spec.name]
        if spec.dtype == "string":
            data = [str(v) for v in value.ravel()]
        elif spec.dtype in ("int32", "int64"):
            data = [int(v) for v in value.ravel()]
        else:
            data = [None if math.isnan(v) else v for v in value.ravel().tolist()]
        inputs.append({"name": spec.name, "shape": list(value.shape), "datatype": DATATYPES[spec.dtype], "data": data})
    request = {"inputs": inputs, "outputs": [{"name": o.name} for o in bundle.outputs]}
    return json.dumps(request, allow_nan=False).encode()


def _outputs(bundle: Bundle, payload: dict) -> dict[str, np.ndarray]:
    given = {o.get("name"): o for o in payload.get("outputs") or []}
    out = {}
    for spec in bundle.outputs:
        item = given.get(spec.name)
        if item is None:
            raise RuntimeFailedError(f"the fallback server's answer has no {spec.name!r} output")
        dtype = object if spec.dtype == "string" else np.float64 if spec.dtype.startswith("float") else np.int64
        out[spec.name] = np.array(item["data"], dtype=dtype).reshape(item["shape"])
    return out


def _error_of(answer: Any) -> str:
    try:
        return str(answer.json().get("error"))
    except ValueError:
        return answer.text[:300]
