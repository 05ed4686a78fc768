"""Running the fallback server: the repository, the demo site, and uvicorn with a draining shutdown."""
from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path
from typing import Callable, Optional

import uvicorn

from .errors import EdgeportError
from .registry import Progress
from .server.app import create_app
from .server.repository import Repository
from .site import build_site


def build_app(path: str | Path, *, site: Optional[Path] = None, site_cache: Optional[Path] = None,
              allow_unverified: bool = False, **limits):
    """The app for a bundle or folder of bundles; builds a same-origin demo site when none is given."""
    repository = Repository(path, allow_unverified=allow_unverified)
    if site is None:
        site_cache = Path(site_cache or tempfile.mkdtemp(prefix="edgeport-site-"))
        latest = [repository.get(name).bundle.path for name in sorted(repository.models)]
        site = build_site(latest, site_cache / "site", fallback_url="", allow_unverified=allow_unverified).path
    return create_app(repository, site_dir=site, **limits)


def serve_forever(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, site: Optional[Path] = None,
                  progress: Optional[Progress] = None, on_listening: Optional[Callable[[str], None]] = None,
                  **limits) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits."""
    progress = progress or (lambda _msg: None)
    check_port(host, port)
    progress(f"loading bundles from {path}")
    with tempfile.TemporaryDirectory(prefix="edgeport-site-") as cache:
        app = build_app(path, site=site, site_cache=Path(cache), **limits)
        progress("serving " + ", ".join(f"{m.name}@{m.version}" for m in app.state.repository.all()))
        if on_listening:
            on_listening(f"http://{host}:{port}")
        # one worker: uvicorn's --workers path loses TCP_NODELAY (+44 ms a request, Kludex/uvicorn#3149)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
        DrainingServer(config).run()


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report not-ready, stop accepting, let just-accepted connections send their
    request, then uvicorn's own graceful shutdown finishes every request in flight."""

    accept_grace_s = 0.3

    async def shutdown(self, sockets=None) -> None:
        self.config.app.state.draining = True
        for server in self.servers:
            server.close()
        await asyncio.sleep(self.accept_grace_s)
        await super().shutdown(sockets)


def check_port(host: str, port: int) -> None:
    """Fail early, with a clear message, when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise EdgeportError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running? "
                                "Pass --port to pick another port.") from exc
