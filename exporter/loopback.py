"""A small static file server on a free loopback port, for the browser runtime and benchmarks.

Routes map URL prefixes to directories (optionally to an allow-list of files)
or exact URLs to bytes. Every path is resolved and checked to stay inside its
directory, so `..` and symlinks can't escape.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from .media_types import content_type


@dataclass(frozen=True)
class Mount:
    directory: Path
    only: tuple[str, ...] | None = None  # allow-list of relative paths


def resolve_inside(directory: Path, relative: str) -> Path | None:
    """directory/relative if it exists as a file inside directory, else None."""
    root = directory.resolve()
    target = (root / relative).resolve()
    return target if target.is_relative_to(root) and target.is_file() else None


@contextmanager
def serve(mounts: dict[str, Mount], files: dict[str, bytes] | None = None, headers: dict[str, str] | None = None) -> Iterator[str]:
    """Serve on 127.0.0.1:<free port>; yields the base URL (no trailing slash)."""
    files = files or {}
    extra = headers or {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = unquote(urlsplit(self.path).path)
            if path in files:
                return self._send(200, files[path], content_type(path))
            for prefix, mount in mounts.items():
                if path.startswith(prefix):
                    relative = path[len(prefix):]
                    if mount.only is not None and relative not in mount.only:
                        break
                    target = resolve_inside(mount.directory, relative)
                    if target:
                        return self._send(200, target.read_bytes(), content_type(target.name))
                    break
            self._send(404, b"not found", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
