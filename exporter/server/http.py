"""ASGI pieces the routes rely on: a request body cap, the nosniff header, and the JSON error shape."""
from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response


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


# on every response (app.Front): a browser never guesses a type we didn't send
NOSNIFF = (b"x-content-type-options", b"nosniff")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
