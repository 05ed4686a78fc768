"""Versioned bundles and their aliases: publish, promote, roll back, list. The embedded default is a
registry on the file system; `mlflow:TRACKING_URI` selects MLflow's Model Registry (mlflow_registry.py).

    registry/
      registry.json          marks the directory as a registry (what `edgeport serve` looks for)
      NAME/
        VERSION/             an immutable copy of a published bundle (files and directories read-only)
        _aliases.json        {"aliases": {"production": "3"}, "history": {"production": ["1", "3"]}, "events": [...]}
        .lock                flock()ed around every change to the model's aliases or versions

A version name starts with a letter or digit (the manifest's rule), so `_aliases.json` is never one.
Aliases change by writing a temporary file and renaming it over `_aliases.json` under the lock: a reader
(the server, a browser) sees the old document or the new one, never half of one. Promoting is refused
for a version that fails its schema, a file's hash, or its recorded parity, unless forced; a rollback
moves the alias back to the version it pointed at before.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Protocol

from .bundle import MANIFEST, Bundle, read_bundle, read_files, require_verified
from .errors import BundleError, EdgeportError, InputFileError
from .progress import Progress, quiet

REGISTRY_MARK = "registry.json"
ALIASES = "_aliases.json"
DEFAULT_ALIAS = "production"
DEFAULT_ROOT = "registry"


class RegistryError(EdgeportError):
    """A registry operation that can't be done as asked: one paragraph, exit 1."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    parity: str  # passed, failed or pending: what the bundle recorded at export
    created: str  # when the bundle was exported (the manifest's `created`)
    published: str  # when it entered the registry
    bytes: int
    aliases: tuple[str, ...]
    problem: str | None = None  # why it can't be promoted (a hash, the schema, its parity), if anything


@dataclass(frozen=True)
class AliasMove:
    name: str
    alias: str
    previous: str | None
    version: str


class Registry(Protocol):
    """What the CLI and the server use: the file-system registry and the MLflow one both provide it."""

    def publish(self, bundle_dir: str | Path, *, allow_unverified: bool = False, progress: Progress = quiet) -> VersionInfo: ...
    def promote(self, name: str, version: str, *, alias: str = DEFAULT_ALIAS, force: bool = False) -> AliasMove: ...
    def rollback(self, name: str, *, alias: str = DEFAULT_ALIAS) -> AliasMove: ...
    def versions(self, name: str) -> list[VersionInfo]: ...
    def resolve(self, name: str, alias: str = DEFAULT_ALIAS) -> str | None: ...
    def bundle_dir(self, name: str, version: str) -> Path: ...
    def names(self) -> list[str]: ...
    def version_names(self, name: str) -> list[str]: ...  # oldest first, without checking them (cheap)
    def aliases(self, name: str) -> dict[str, str]: ...  # alias -> version


def open_registry(location: str | Path | None = None) -> Registry:
    """`--registry`, else EDGEPORT_REGISTRY, else ./registry; `mlflow:URI` is MLflow's registry."""
    location = str(location or os.environ.get("EDGEPORT_REGISTRY") or DEFAULT_ROOT)
    if location.startswith("mlflow:"):
        from .mlflow_registry import MlflowRegistry

        return MlflowRegistry(location[len("mlflow:"):])
    return FileRegistry(location)


def is_registry(path: str | Path) -> bool:
    return (Path(path) / REGISTRY_MARK).is_file()


def version_problem(bundle_dir: Path) -> str | None:
    """Why this version may not be promoted: its schema, a file's hash or size, its recorded parity, or that the
    server could not serve it (onnxruntime can't open it, or a golden row fails its warm-up); else None."""
    from .server.repository import load_served

    try:
        load_served(read_bundle(bundle_dir, verify=False))  # every file's hash, parity, a session and its warm-up
    except EdgeportError as exc:
        return str(exc)
    return None


class FileRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"--registry {self.root} is a file; a registry is a directory (or mlflow:TRACKING_URI)")

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def bundle_dir(self, name: str, version: str) -> Path:
        path = self._model_dir(name) / _checked_part(version, "version")
        if not (path / MANIFEST).is_file():
            raise RegistryError(f"{name} has no version {version!r} in {self.root}; "
                                f"it has {', '.join(self.version_names(name)) or 'none'}")
        return path

    def resolve(self, name: str, alias: str = DEFAULT_ALIAS) -> str | None:
        return self.aliases(name).get(alias)

    def aliases(self, name: str) -> dict[str, str]:
        return self._aliases(name)["aliases"]

    def versions(self, name: str) -> list[VersionInfo]:
        names = self.version_names(name)
        if not names:
            raise RegistryError(f"no model {name!r} in the registry {self.root}; it has {', '.join(self.names()) or 'nothing yet'} "
                                "(publish one with edgeport publish BUNDLE)")
        aliases = self._aliases(name)["aliases"]
        return [self._info(name, v, aliases) for v in names]

    # ------------------------------------------------------------------ changing

    def publish(self, bundle_dir: str | Path, *, allow_unverified: bool = False, progress: Progress = quiet) -> VersionInfo:
        bundle = read_bundle(bundle_dir, verify=False)
        files = read_files(bundle)  # every hash checked before anything is copied
        if not allow_unverified:
            require_verified(bundle)
        name, version = bundle.name, bundle.version
        self._mark()
        with self._locked(name) as model_dir:
            target = model_dir / version
            if target.exists():
                if _same_content(target, bundle):
                    progress(f"{name} version {version} is already in the registry, with the same files")
                    return self._info(name, version, self._aliases(name)["aliases"])
                raise RegistryError(
                    f"{name} version {version} is already in the registry with different files; a published version "
                    "never changes: export this bundle with another --version and publish that.")
            progress(f"publishing {name} version {version} ({len(files)} files verified) to {self.root}")
            for stale in model_dir.glob(".*.staging-*"):  # a publish killed before its rename (we hold the lock)
                _make_writable(stale)
                shutil.rmtree(stale, ignore_errors=True)
            staged = model_dir / f".{version}.staging-{os.getpid()}"
            shutil.rmtree(staged, ignore_errors=True)
            try:
                staged.mkdir()
                shutil.copy2(bundle.path / MANIFEST, staged / MANIFEST)
                for path, data in files.items():
                    (staged / path).parent.mkdir(parents=True, exist_ok=True)
                    (staged / path).write_bytes(data)
                (staged / ".published").write_text(_now() + "\n")
                _make_read_only(staged)
                os.rename(staged, target)  # atomic; the lock keeps two publishers of one version apart
            except BaseException:
                _make_writable(staged)
                shutil.rmtree(staged, ignore_errors=True)
                raise
            return self._info(name, version, self._aliases(name)["aliases"])

    def promote(self, name: str, version: str, *, alias: str = DEFAULT_ALIAS, force: bool = False) -> AliasMove:
        alias = _checked_part(alias, "alias")
        with self._locked(name):
            bundle_dir = self.bundle_dir(name, version)
            problem = version_problem(bundle_dir)
            if problem and not force:
                raise RegistryError(f"{name} version {version} can't be promoted: {problem} "
                                    "(--force promotes it anyway; the server then answers 4xx for it and keeps serving the others)")
            document = self._aliases(name)
            previous = document["aliases"].get(alias)
            if previous != version:
                document["aliases"][alias] = version
                document["history"].setdefault(alias, []).append(version)
            document["events"].append({"at": _now(), "action": "promote", "alias": alias, "from": previous, "to": version,
                                       **({"forced": problem} if problem else {})})
            self._write_aliases(name, document)
            return AliasMove(name, alias, previous, version)

    def rollback(self, name: str, *, alias: str = DEFAULT_ALIAS) -> AliasMove:
        alias = _checked_part(alias, "alias")
        with self._locked(name):
            document = self._aliases(name)
            history = document["history"].get(alias, [])
            current = document["aliases"].get(alias)
            if current is None or len(history) < 2:
                raise RegistryError(f"{name}'s alias {alias!r} has no earlier version to roll back to"
                                    + (f" (it points at {current}, its first)" if current else " (it was never set)"))
            history.pop()
            document["aliases"][alias] = history[-1]
            document["events"].append({"at": _now(), "action": "rollback", "alias": alias, "from": current, "to": history[-1]})
            self._write_aliases(name, document)
            return AliasMove(name, alias, current, history[-1])

    # ------------------------------------------------------------------ internals

    def _model_dir(self, name: str) -> Path:
        return self.root / _checked_part(name, "model name")

    def version_names(self, name: str) -> list[str]:
        from .server.repository import version_key  # the server's order: "2" before "10"

        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
        return sorted(found, key=version_key)

    def _info(self, name: str, version: str, aliases: dict[str, str]) -> VersionInfo:
        path = self._model_dir(name) / version
        problem = version_problem(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        status = parity_status(manifest.get("parity", {}) if isinstance(manifest, dict) else {})
        published = (path / ".published").read_text().strip() if (path / ".published").is_file() else ""
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != ".published")
        return VersionInfo(name, version, status, str(manifest.get("created", "")), published, size,
                           tuple(sorted(a for a, v in aliases.items() if v == version)), problem)

    def _aliases(self, name: str) -> dict:
        path = self._model_dir(name) / ALIASES
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            document = {}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path} is damaged ({exc}); restore it from its events or delete it to start the "
                                "aliases afresh") from exc
        aliases, history = (document.get("aliases", {}), document.get("history", {})) if isinstance(document, dict) else (None, None)
        if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())
                and isinstance(history, dict) and all(isinstance(v, list) for v in history.values())
                and isinstance(document.get("events", []), list)):
            raise RegistryError(f"{path} is damaged (aliases must map names to version strings); restore it from its "
                                "events or delete it to start the aliases afresh")
        return {"name": name, "aliases": dict(aliases), "history": dict(history), "events": list(document.get("events", []))}

    def _write_aliases(self, name: str, document: dict) -> None:
        path = self._model_dir(name) / ALIASES
        temporary = path.with_name(f".{ALIASES}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)  # readers see the old document or the new one

    def _mark(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        mark = self.root / REGISTRY_MARK
        if not mark.exists():
            mark.write_text(json.dumps({"edgeport_registry": 1}) + "\n")

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        model_dir = self._model_dir(name)
        if not model_dir.is_dir() and not self.root.is_dir():
            raise InputFileError(f"no registry at {self.root}: publish a bundle first (edgeport publish BUNDLE "
                                 f"--registry {self.root})")
        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent CLI calls queue here; released when the file closes
            yield model_dir


def parity_status(parity: dict) -> str:
    """A manifest's recorded parity as one word: passed, failed, or pending (never checked, or not finished)."""
    return "passed" if parity.get("passed") is True else "failed" if parity.get("passed") is False else "pending"


def _checked_part(value: str, what: str) -> str:
    """A model name, version or alias that is one safe path component (the manifest's pattern)."""
    import re

    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise RegistryError(f"{what} {value!r} is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit")
    return value


def _same_content(target: Path, bundle: Bundle) -> bool:
    try:
        published = read_bundle(target, verify=False)
    except EdgeportError:
        return False
    return {f.path: f.sha256 for f in published.manifest.files} == {f.path: f.sha256 for f in bundle.manifest.files}


def _make_read_only(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    directory.chmod(stat.S_IMODE(directory.stat().st_mode) & ~0o222)


def _make_writable(directory: Path) -> None:
    if directory.exists():
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | 0o200)
        for path in directory.rglob("*"):
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
