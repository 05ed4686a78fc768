"""Content-Type by file name, for everything edgeport serves (the server, the loopback test server)."""
from __future__ import annotations

import mimetypes
from pathlib import Path

CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                 ".json": "application/json", ".html": "text/html; charset=utf-8", ".onnx": "application/octet-stream",
                 ".bin": "application/octet-stream", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}


def content_type(name: str) -> str:
    """The Content-Type for a file name: ours for the web/model types, else the platform's guess."""
    suffix = Path(name).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
