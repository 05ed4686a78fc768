"""Running the fallback server: the repository, the demo site (given, or from the site cache), and uvicorn with
guarded connections and a draining shutdown."""
from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import signal
import socket
from pathlib import Path
from typing import Callable, Optional

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol  # h11, or httptools when it is installed

from .bundle import input_columns
from .errors import EdgeportError, OptionError, SiteError
from .progress import Progress
from .server.app import DEFAULT_TIMEOUT_S, create_app
from .server.connections import CloseWhileDraining, ConnectionGuard
from .server.repository import RegistryRepository, Repository

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_DRAIN_S = 2.0
# open files the server needs besides its connections: the listener, logs, onnxruntime, the event loop
RESERVED_FILES = 100

logger = logging.getLogger("uvicorn.error")


def build_app(path: str | Path, *, site: Optional[Path] = None, site_cache: Optional[Path] = None,
              allow_unverified: bool = False, progress: Optional[Progress] = None, alias: str = "production",
              cache_bytes: int = 512 * 2**20, **limits):
    """The app for a bundle or folder of bundles, with `site` at /: when none is given, a same-origin demo site
    for the latest version of each model, from the site cache under site_cache (default: site_cache.cache_root()).
    For a registry (a directory edgeport publish made, or mlflow:URI) every version is served as asked for, NAME
    follows NAME@alias, and there is a site only when one is given."""
    from .model_registry import is_registry, open_registry

    if str(path).startswith("mlflow:") or is_registry(path):
        repository = RegistryRepository(open_registry(path), alias=alias, allow_unverified=allow_unverified,
                                        max_bytes=cache_bytes)
        return create_app(repository, site_dir=site, **limits)
    repository = Repository(path, allow_unverified=allow_unverified)
    if site is not None:
        return create_app(repository, site_dir=site, **limits)
    from .site_cache import cached_site, discard_site, is_temporary  # only for a site of its own: the builder's imports

    latest = [repository.get(name) for name in repository.names()]
    triples = [(m.name, m.version, m.bundle.path) for m in latest]
    site = cached_site(triples, allow_unverified=allow_unverified, progress=progress, root=site_cache)
    try:
        try:
            return create_app(repository, site_dir=site, **limits)
        except SiteError as exc:
            if is_temporary(site):
                raise
            (progress or (lambda _m: None))(f"the cached demo site failed its check ({exc}); building it again")
            discard_site(site)
            site = cached_site(triples, allow_unverified=allow_unverified, progress=progress, root=site_cache)
            return create_app(repository, site_dir=site, **limits)
    finally:
        if is_temporary(site):  # built for this run only: the app holds it in memory now
            shutil.rmtree(site.parent, ignore_errors=True)


def serve_forever(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, site: Optional[Path] = None,
                  progress: Optional[Progress] = None, on_listening: Optional[Callable[[str], None]] = None,
                  header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
                  max_connections: Optional[int] = None, drain_s: float = DEFAULT_DRAIN_S, **limits) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits.

    Each request head must arrive within header_timeout_s of its first byte, and its body within timeout_s (one
    of `limits`, which also bounds inference); a connection idle for keep_alive_s is closed; at most
    max_connections are open (default DEFAULT_MAX_CONNECTIONS, fewer when the open-file limit is lower). On
    SIGTERM the server drains for drain_s: it answers not-ready but still serves, then stops accepting.
    """
    progress = progress or (lambda _msg: None)
    check_port(host, port)
    max_connections = connection_cap(max_connections)
    progress(f"loading bundles from {path}")
    app = build_app(path, site=site, progress=progress, **limits)
    repository = app.state.repository
    if isinstance(repository, RegistryRepository):
        progress(f"serving the registry {path}: " + ", ".join(
            f"{name} (versions {', '.join(repository.versions(name))}; {repository.alias} -> "
            f"{repository.aliases(name).get(repository.alias, 'unset: the highest version')})" for name in repository.names()))
    else:
        progress("serving " + ", ".join(f"{m.name}@{m.version}" for m in repository.all()))
    body_timeout_s = limits.get("timeout_s", DEFAULT_TIMEOUT_S)
    log = limits.get("prediction_log")
    if not isinstance(repository, RegistryRepository):  # a registry's versions load later: nothing to check yet
        models = repository.all()
        # a typo would leave a column in the prediction log, or a threshold on nothing
        _require_known("--pii", log.pii if log is not None else (), "an input column", {
            name for model in models for name in input_columns([s.to_dict() for s in model.bundle.inputs])})
        _require_known("--drift-threshold-for", limits.get("drift_thresholds") or {}, "a feature",
                       {"confidence"} | {name for model in models for name in model.bundle.manifest.feature_stats})
    if log is not None:
        named = ", ".join(sorted(log.pii)) + " and the manifests'" if log.pii else "the manifests'"
        progress(f"prediction log: {log.path} (rotated past {log.max_bytes / 2**20:g} MB; PII columns: {named}, "
                 f"{'dropped' if log.pii_mode == 'drop' else 'hashed'})")
    if on_listening:
        on_listening(f"http://{host}:{port}", getattr(app.state, "has_site", True))
    guard = ConnectionGuard(header_timeout=header_timeout_s, body_timeout=body_timeout_s,
                            max_connections=max_connections)
    progress(f"connections: at most {max_connections}; request head within {header_timeout_s:g}s, body within "
             f"{body_timeout_s:g}s, idle for {keep_alive_s:g}s; SIGTERM drains for {drain_s:g}s")
    # one worker: uvicorn's --workers path loses TCP_NODELAY (+44 ms a request, Kludex/uvicorn#3149)
    config = uvicorn.Config(CloseWhileDraining(app), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=30, timeout_keep_alive=keep_alive_s,
                            http=guard.protocol(AutoHTTPProtocol))
    # what start-up made (modules, FastAPI's routes and schemas, the models) lives as long as the process: out of
    # the collector's sight, a full collection no longer walks it, which is a pause in some request's latency.
    # No gc.collect() first: it would delay readiness by tens of ms to reclaim a little start-up garbage
    gc.freeze()
    DrainingServer(config, app, drain_s=drain_s).run()


def _require_known(option: str, names, what: str, known: set[str]) -> None:
    """OptionError naming the first of `names` that no served model has."""
    unknown = sorted(set(names) - known)
    if unknown:
        raise OptionError(f"{option} {unknown[0]}: no served model has {what} of that name; they have "
                          f"{', '.join(sorted(known))}")


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report not-ready (/v2/health/ready answers 503) but keep accepting and answering for drain_s,
    so that a load balancer sees the 503 and moves its traffic while nothing queued is dropped; then stop
    accepting, let just-accepted connections send their request, and let uvicorn's own graceful shutdown
    finish every request in flight, and the prediction log its last lines. Ctrl-C (SIGINT) skips the drain: a
    person is waiting, not a load balancer."""

    accept_grace_s = 0.3

    def __init__(self, config: uvicorn.Config, app, drain_s: float = DEFAULT_DRAIN_S):
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s

    def handle_exit(self, sig: int, frame) -> None:
        if sig != signal.SIGTERM:
            self.drain_s = 0.0
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        self.app.state.draining = True
        loop = asyncio.get_running_loop()
        end = loop.time() + self.drain_s
        if self.drain_s > 0:
            logger.warning("draining for %gs: /v2/health/ready answers 503, requests are still served", self.drain_s)
        while loop.time() < end and self.drain_s > 0 and not self.force_exit:
            await asyncio.sleep(min(0.1, end - loop.time()))
        for server in self.servers:
            server.close()
        await asyncio.sleep(self.accept_grace_s)
        await super().shutdown(sockets)
        # every request has been answered: write the prediction log's last lines before the process exits (here,
        # since uvicorn re-raises the signal once run() is done, so nothing after run() would run)
        log = getattr(self.app.state, "prediction_log", None)
        if log is not None:
            await asyncio.to_thread(log.close)


def connection_cap(requested: Optional[int]) -> int:
    """The connection cap, with enough open files for it: raise the soft limit up to the hard one when needed.

    A requested cap the limit can't hold is an error; the default shrinks to fit, since past the open-file
    limit accept() fails and every client waits, the well-behaved ones included."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (requested or DEFAULT_MAX_CONNECTIONS) + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    available = wanted if soft == resource.RLIM_INFINITY else soft - RESERVED_FILES
    if requested is None:
        return max(1, min(DEFAULT_MAX_CONNECTIONS, available))
    if requested > available:
        raise EdgeportError(f"--max-connections {requested} needs {requested + RESERVED_FILES} open files, but this "
                            f"process may open {soft} (ulimit -n). Pass --max-connections {max(1, available)} or less, "
                            "or raise the limit.")
    return requested


def check_port(host: str, port: int) -> None:
    """Fail early, with a clear message, when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise EdgeportError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running? "
                                "Pass --port to pick another port.") from exc
