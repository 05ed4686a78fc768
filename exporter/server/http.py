"""ASGI pieces the routes rely on: a request body cap, and static files with precompressed variants."""
from __future__ import annotations

import hashlib
import json
import mimetypes
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ..loopback import CONTENT_TYPES, resolve_inside


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        body = json.dumps({"error": f"request body is larger than this server's limit of {self.max_bytes} bytes"}).encode()
        await Response(body, status_code=413, media_type="application/json")(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def static_file(root: Path, relative: str, request: Request, cache: str = "no-cache") -> Response:
    """A file under root (never outside it), preferring a .br or .gz sibling the client accepts."""
    target = resolve_inside(root, relative or "index.html")
    if target is None and (root / relative).is_dir():
        target = resolve_inside(root, f"{relative.rstrip('/')}/index.html")
    if target is None or target.suffix in (".gz", ".br"):
        return error(404, f"not found: /{relative}")
    etag = '"' + hashlib.sha256(f"{target.stat().st_mtime_ns}:{target.stat().st_size}".encode()).hexdigest()[:32] + '"'
    headers = {"Cache-Control": cache, "ETag": etag, "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media_type = CONTENT_TYPES.get(target.suffix.lower()) or mimetypes.guess_type(target.name)[0]
    accepted = request.headers.get("accept-encoding", "")
    for encoding, suffix in (("br", ".br"), ("gzip", ".gz")):
        variant = target.with_name(target.name + suffix)
        if encoding in accepted and variant.is_file():
            return FileResponse(variant, media_type=media_type, headers={**headers, "Content-Encoding": encoding})
    return FileResponse(target, media_type=media_type, headers=headers)
