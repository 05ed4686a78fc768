"""The model repository: bundles read once at start-up, verified, each with an onnxruntime session; or a
registry's versions, loaded on first use (RegistryRepository).

Each version is a snapshot: the session is built from the very bytes the
bundle route hands out, so a re-export on disk while the server runs changes
neither (restart to serve it). Hidden directories (publish's staging
directories among them) are never bundles, and a bundle whose parity check
failed or never finished is refused unless allow_unverified.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..bundle import MANIFEST, Bundle, graph_mismatch, read_bundle, read_files, require_verified
from ..errors import BundleError, EdgeportError, InputFileError, first_line
from .static import Snapshot

logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ServedModel:
    bundle: Bundle
    session: Any  # onnxruntime.InferenceSession
    onnx_file: str
    files: Snapshot  # the bundle's files as read at start-up, what /bundles/NAME/VERSION/ serves
    immutable: bool = False  # from a registry: a published version never changes, so its files may be cached for good
    bytes: int = 0  # the bundle's files, what the registry's LRU cache counts

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version


def version_key(version: str) -> tuple:
    """Sort "2" after "10"? No: numeric parts compare as numbers ("1" < "2" < "10")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", version))


class Repository:
    """Every bundle under a path (a bundle itself, or a folder of bundles up to two levels deep)."""

    def __init__(self, path: str | Path, *, allow_unverified: bool = False):
        self.path = Path(path)
        self.allow_unverified = allow_unverified
        self.models: dict[str, dict[str, ServedModel]] = {}
        for bundle_dir in discover(self.path):
            self.add(read_bundle(bundle_dir, verify=False))  # add() reads and verifies each file once
        if not self.models:
            raise InputFileError(f"no bundles found in {self.path}: expected a directory with a manifest.json, or "
                                 "a folder of such directories (made by `edgeport export`)")

    def add(self, bundle: Bundle) -> None:
        versions = self.models.setdefault(bundle.name, {})
        if bundle.version in versions:
            raise BundleError(f"two bundles are both {bundle.name} version {bundle.version}: "
                              f"{versions[bundle.version].bundle.path} and {bundle.path}")
        versions[bundle.version] = load_served(bundle, allow_unverified=self.allow_unverified)

    def names(self) -> list[str]:
        return sorted(self.models)

    def versions(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=version_key)

    def aliases(self, name: str) -> dict[str, str]:
        return {}  # bundles on disk have versions; a registry (RegistryRepository) has aliases

    def peek(self, name: str, version: str | None = None) -> ServedModel | None:
        return self.get(name, version)  # everything is loaded at start

    def get(self, name: str, version: str | None = None) -> ServedModel | None:
        versions = self.models.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions, key=version_key)]
        return versions.get(version)

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]


def load_served(bundle: Bundle, *, allow_unverified: bool = False, immutable: bool = False) -> ServedModel:
    """A bundle's files read and verified once, its onnxruntime session built from those very bytes and warmed up."""
    import onnxruntime as ort

    onnx_file = bundle.server_model_file
    if not onnx_file.endswith(".onnx"):
        raise BundleError(f"bundle {bundle.path} has no ONNX artifact for the server to run")
    if not allow_unverified:
        require_verified(bundle)
    files = read_files(bundle)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # many small requests: parallelism comes from concurrent requests
    try:
        session = ort.InferenceSession(files[onnx_file], options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types: a damaged or hostile model file
        raise BundleError(f"onnxruntime cannot load {onnx_file} of bundle {bundle.path}: "
                          f"{str(exc).splitlines()[0][:300]}") from exc
    mismatch = graph_mismatch(bundle.manifest, session, onnx_file)
    if mismatch:
        raise BundleError(f"bundle {bundle.path} contradicts its model: {mismatch}. Re-export it.")
    try:
        _warm_up(bundle, session)
    except Exception as exc:  # a golden row the graph refuses: every request would fail the same way
        raise BundleError(f"bundle {bundle.path} fails its warm-up (one golden row through {onnx_file}): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}. "
                          "Re-export it.") from exc
    return ServedModel(bundle, session, onnx_file, Snapshot.of_bundle(files, bundle.manifest), immutable,
                       sum(len(b) for b in files.values()))


class ModelUnavailable(EdgeportError):
    """A registry version that can't be served (damaged, or failing its parity): the server answers 409 for it."""


REFRESH_WAIT_S = 0.05  # how long a request waits for the registry before it uses what was last read


class RegistryRepository:
    """Every model and version of a registry (model_registry.py). A version loads on its first request, in a
    worker thread (`peek` never loads, so the event loop never waits on a model), and stays in an LRU cache of at
    most max_bytes of model files. NAME follows NAME@alias: the registry is read again when older than
    alias_ttl_s, in the background, while requests use what was last read, so a promote or a rollback is served
    within a second, without a restart, and a registry that is slow or locked (MLflow's database) never stalls
    a request. An alias that isn't set, or names a version the registry hasn't got, is a 409 saying so; a version
    that fails to load is logged once and answered 409, and the others keep serving."""

    def __init__(self, registry, *, alias: str = "production", allow_unverified: bool = False,
                 max_bytes: int = 512 * 2**20, alias_ttl_s: float = 0.25):
        self.registry = registry
        self.alias = alias
        self.allow_unverified = allow_unverified
        self.max_bytes = max_bytes
        self.alias_ttl_s = alias_ttl_s
        self.path = getattr(registry, "root", None) or getattr(registry, "uri", None) or "the registry"
        self.loaded: OrderedDict[tuple[str, str], ServedModel] = OrderedDict()
        self.failed: dict[tuple[str, str], str] = {}
        self._fresh: dict[tuple, tuple[float, Any]] = {}  # (what, name) -> (when read, value or the error it raised)
        self._refreshing: set[tuple] = set()
        self._lock = threading.RLock()
        if not self.names():
            raise InputFileError(f"the registry {self.path} has no models yet: edgeport publish BUNDLE first")

    def _recent(self, key: tuple, read: Callable[[], Any]) -> Any:
        """read(), remembered: once older than alias_ttl_s it is read again in a background thread while callers get
        the last value. Only the very first read waits. A registry that can't be read (a damaged _aliases.json, a
        store that is down) is a ModelUnavailable, which the server answers 409, never a 5xx."""
        cached = self._fresh.get(key)
        if cached is None:
            self._refresh(key, read)
        elif time.monotonic() - cached[0] > self.alias_ttl_s and key not in self._refreshing:
            self._refreshing.add(key)
            reader = threading.Thread(target=self._refresh, args=(key, read), daemon=True, name="edgeport-registry")
            reader.start()
            reader.join(REFRESH_WAIT_S)  # a quick registry (files) answers fresh; a slow one answers what it had
        cached = self._fresh[key]
        if isinstance(cached[1], ModelUnavailable):
            raise cached[1]
        return cached[1]

    def _refresh(self, key: tuple, read: Callable[[], Any]) -> None:
        try:
            value = read()
        except (EdgeportError, OSError) as exc:
            value = ModelUnavailable(f"{self.path} can't be read: {first_line(exc)}")
        except Exception as exc:  # a registry backend's own error (MLflow's, SQLAlchemy's): the same 409
            value = ModelUnavailable(f"{self.path} can't be read: {type(exc).__name__}: {first_line(exc)}")
        finally:
            self._refreshing.discard(key)
        self._fresh[key] = (time.monotonic(), value)

    def names(self) -> list[str]:
        return self._recent(("names",), self.registry.names)

    def versions(self, name: str) -> list[str]:
        if name not in self.names():  # any name in a URL: only the registry's own are looked up and remembered
            return []
        return self._recent(("versions", name), lambda: self.registry.version_names(name))

    def aliases(self, name: str) -> dict[str, str]:
        if name not in self.names():
            return {}
        return self._recent(("aliases", name), lambda: self.registry.aliases(name))

    def _key(self, name: str, version: str | None) -> tuple[str, str] | None:
        versions = self.versions(name)
        if not versions:
            return None
        if version is None:
            version = self.aliases(name).get(self.alias)
            if version is None:
                raise ModelUnavailable(f"{name}@{self.alias} is not set: promote a version (edgeport promote {name} "
                                       f"VERSION), or ask for one: /v2/models/{name}/versions/{versions[-1]}")
            if version not in versions:
                raise ModelUnavailable(f"{name}@{self.alias} points at version {version}, which the registry hasn't got "
                                       f"(it has {', '.join(versions)}): promote or roll back")
        return (name, version) if version in versions else None

    def peek(self, name: str, version: str | None = None) -> ServedModel | None:
        """The model if it is loaded already (for the event loop: never loads, never waits on the registry's lock)."""
        key = self._key(name, version)
        return self.loaded.get(key) if key else None

    def get(self, name: str, version: str | None = None) -> ServedModel | None:
        """The model, loaded now if it isn't (call it off the event loop)."""
        key = self._key(name, version)
        if key is None:
            return None
        with self._lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            if key in self.failed:
                raise ModelUnavailable(self.failed[key])
            name, version = key
            try:
                bundle = read_bundle(self.registry.bundle_dir(name, version), verify=False)
                served = load_served(bundle, allow_unverified=self.allow_unverified, immutable=True)
            except EdgeportError as exc:
                self.failed[key] = f"{name} version {version} can't be served: {exc}"
                logger.error("%s", self.failed[key])
                raise ModelUnavailable(self.failed[key]) from exc
            self.loaded[key] = served
            while len(self.loaded) > 1 and sum(m.bytes for m in self.loaded.values()) > self.max_bytes:
                self.loaded.popitem(last=False)  # the least recently used version: loaded again when asked for
            return served

    def all(self) -> list[ServedModel]:
        return list(self.loaded.values())


def discover(path: Path) -> list[Path]:
    """PATH itself if it is a bundle, else the bundles one or two levels below it, skipping hidden directories."""
    if not path.is_dir():
        raise InputFileError(f"bundle directory not found: {path}")
    if (path / MANIFEST).is_file():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST}")) + sorted(p.parent for p in path.glob(f"*/*/{MANIFEST}"))
    # hidden: publish's staging directories (an unpublished or half-written version), .git and the like
    return [p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)]


def _warm_up(bundle: Bundle, session: Any) -> None:
    """One golden row through the decoder and the session at start-up, so the first user doesn't pay for lazy
    init."""
    from ..decoding import feeds_from_rows

    rows = bundle.golden()["rows"][:1]
    if rows:
        session.run(None, feeds_from_rows(bundle.inputs, bundle.manifest.layout, rows))
