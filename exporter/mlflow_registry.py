"""MLflow's Model Registry as edgeport's registry: `--registry mlflow:TRACKING_URI` (the mlflow extra).

How edgeport's words map onto MLflow's:

    edgeport                      MLflow
    model NAME                    registered model NAME, tagged edgeport=bundle (names() lists only these)
    version "2" (the bundle's)    a model version, numbered by MLflow (1, 2, ...) and tagged edgeport.version=2,
                                  edgeport.parity, edgeport.files_sha256 (over the manifest's file hashes),
                                  edgeport.created and edgeport.bytes; its source is the bundle's verified files,
                                  logged as the artifacts of a run in the experiment "edgeport"
    alias production              MLflow's model alias production, on that model version
    an alias's history            the registered model's tag edgeport.aliases (JSON), which rollback walks back

Users name versions by the bundle's version string everywhere; MLflow's numbers never show. A version's files
are downloaded into $EDGEPORT_CACHE/mlflow/<hash of the URI>/NAME/VERSION: to a temporary directory, checked
(schema, every hash, recorded parity, and the files_sha256 tag, so what is served is what was published), then
renamed into place. That directory is what `bundle_dir` hands the server.

Concurrency: MLflow has no lock and no compare-and-set on aliases or tags. Against a local SQLite store, a flock
on a file beside the database serializes edgeport's own calls, as the file-system registry's lock does. Against a
tracking server, two racing promotes are last-writer-wins, on the alias and on the history tag separately: each
write is whole, but a history entry can be lost. The alias is written before the history, and every promote or
rollback first appends the alias's actual version to the history when it isn't the last entry there (after a
lost write, or a move made in MLflow's UI), so the history never disagrees with the alias for long.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .bundle import MANIFEST, FileEntry, read_bundle, read_files, require_verified
from .errors import EdgeportError
from .model_registry import (DEFAULT_ALIAS, AliasMove, RegistryError, VersionInfo, _checked_part, _make_read_only, parity_status,
                             _make_writable, _now, version_problem)
from .progress import Progress, quiet

EXPERIMENT = "edgeport"
MODEL_TAG = "edgeport"
VERSION_TAG = "edgeport.version"
PARITY_TAG = "edgeport.parity"
FILES_TAG = "edgeport.files_sha256"
CREATED_TAG = "edgeport.created"
BYTES_TAG = "edgeport.bytes"
ALIASES_TAG = "edgeport.aliases"
ARTIFACT_PATH = "bundle"
# older tracking servers cap a tag's value at 5000 characters: the history tag keeps the recent past only
KEEP_HISTORY = 50
KEEP_EVENTS = 20


class MlflowRegistry:
    def __init__(self, tracking_uri: str):
        if not tracking_uri:
            raise RegistryError("--registry mlflow: needs a tracking URI after the colon, for example "
                                "mlflow:sqlite:///mlflow.db or mlflow:http://mlflow.example:5000")
        self.uri = tracking_uri
        # MLflow retries an unreachable tracking server with backoff for minutes: a CLI call says so in seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._client = None
        self._numbers: dict[tuple[str, str], str | None] = {}  # (name, MLflow's number) -> bundle version; immutable

    @property
    def client(self):
        if self._client is None:
            _require_mlflow()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        with self._calls():
            models = _pages(self.client.search_registered_models, filter_string=f"tags.{MODEL_TAG} = 'bundle'")
            return sorted(model.name for model in models)

    def resolve(self, name: str, alias: str = DEFAULT_ALIAS) -> str | None:
        _checked_part(name, "model name")
        with self._calls():
            model = self._model(name)
            return self._bundle_version(name, model.aliases.get(alias)) if model else None

    def version_names(self, name: str) -> list[str]:
        with self._calls():
            return list(self._versions(name)) if self._model(_checked_part(name, "model name")) else []

    def aliases(self, name: str) -> dict[str, str]:
        with self._calls():
            model = self._model(_checked_part(name, "model name"))
            aliases = {alias: self._bundle_version(name, number) for alias, number in (model.aliases if model else {}).items()}
            return {alias: version for alias, version in aliases.items() if version is not None}

    def versions(self, name: str) -> list[VersionInfo]:
        with self._calls():
            found = self._versions(name)
            if not found:
                raise RegistryError(f"no model {name!r} in the MLflow registry at {self.uri}; it has "
                                    f"{', '.join(self.names()) or 'nothing from edgeport yet'} (publish one with edgeport "
                                    f"publish BUNDLE --registry mlflow:{self.uri})")
            aliases = self._model(name).aliases
            return [self._info(mv, aliases, self._fetch(name, mv)[1]) for mv in found.values()]

    def bundle_dir(self, name: str, version: str) -> Path:
        """A local directory holding the version's files, downloaded once and checked."""
        with self._calls():
            path, problem = self._fetch(name, self._version(name, version))
        if problem:
            raise RegistryError(f"{name} version {version} in MLflow ({self.uri}) fails its check: {problem}")
        return path

    # ------------------------------------------------------------------ changing

    def publish(self, bundle_dir: str | Path, *, allow_unverified: bool = False, progress: Progress = quiet) -> VersionInfo:
        bundle = read_bundle(bundle_dir, verify=False)
        files = read_files(bundle)  # every hash checked before anything is logged
        if not allow_unverified:
            require_verified(bundle)
        name, version = _checked_part(bundle.name, "model name"), _checked_part(bundle.version, "version")
        digest = files_digest(bundle.manifest.files)
        with self._locked(), self._calls():
            existing = self._versions(name).get(version)
            if existing is not None:
                if existing.tags.get(FILES_TAG) == digest:
                    progress(f"{name} version {version} is already in MLflow (model version {existing.version}), with the same files")
                    return self._info(existing, self._model(name).aliases, version_problem(bundle.path))
                raise RegistryError(
                    f"{name} version {version} is already in MLflow (model version {existing.version}) with different files; "
                    "a published version never changes: export this bundle with another --version and publish that.")
            progress(f"publishing {name} version {version} ({len(files)} files verified) to MLflow at {self.uri}")
            client = self.client
            run = client.create_run(self._experiment_id(), run_name=f"{name}-{version}",
                                    tags={"edgeport.name": name, VERSION_TAG: version})
            try:
                with tempfile.TemporaryDirectory(prefix="edgeport-publish-") as staged:
                    shutil.copy2(bundle.path / MANIFEST, Path(staged) / MANIFEST)
                    for path, data in files.items():  # the bytes that were verified, not a second read
                        (Path(staged) / path).parent.mkdir(parents=True, exist_ok=True)
                        (Path(staged) / path).write_bytes(data)
                    client.log_artifacts(run.info.run_id, staged, ARTIFACT_PATH)
            except BaseException:
                client.set_terminated(run.info.run_id, "FAILED")
                raise
            client.set_terminated(run.info.run_id)
            if self._model(name) is None:
                client.create_registered_model(name, tags={MODEL_TAG: "bundle"})
            else:
                client.set_registered_model_tag(name, MODEL_TAG, "bundle")
            tags = {VERSION_TAG: version, PARITY_TAG: parity_status(bundle.manifest.parity), FILES_TAG: digest,
                    CREATED_TAG: bundle.manifest.created or "", BYTES_TAG: str(sum(f.bytes for f in bundle.manifest.files))}
            mv = client.create_model_version(name, f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id=run.info.run_id, tags=tags)
            return self._info(mv, {}, version_problem(bundle.path))

    def promote(self, name: str, version: str, *, alias: str = DEFAULT_ALIAS, force: bool = False) -> AliasMove:
        alias = _checked_part(alias, "alias")
        with self._locked(), self._calls():
            mv = self._version(name, version)
            problem = self._fetch(name, mv, fresh=True)[1]  # the files in MLflow now, not a copy cached earlier
            if problem and not force:
                raise RegistryError(f"{name} version {version} can't be promoted: {problem} "
                                    "(--force promotes it anyway; the server then answers 4xx for it and keeps serving the others)")
            model = self._model(name)
            current = self._bundle_version(name, model.aliases.get(alias))
            document = _history(model)
            history = _reconciled(document, alias, current)
            if current != version:
                history.append(version)
            self.client.set_registered_model_alias(name, alias, mv.version)
            document["events"].append({"at": _now(), "action": "promote", "alias": alias, "from": current, "to": version,
                                       **({"forced": problem} if problem else {})})
            self._write_history(name, document)
            return AliasMove(name, alias, current, version)

    def rollback(self, name: str, *, alias: str = DEFAULT_ALIAS) -> AliasMove:
        alias = _checked_part(alias, "alias")
        with self._locked(), self._calls():
            model = self._model(_checked_part(name, "model name"))
            if model is None:
                raise RegistryError(f"no model {name!r} in the MLflow registry at {self.uri}")
            current = self._bundle_version(name, model.aliases.get(alias))
            document = _history(model)
            history = _reconciled(document, alias, current)
            if current is None or len(history) < 2:
                raise RegistryError(f"{name}'s alias {alias!r} has no earlier version to roll back to"
                                    + (f" (it points at {current}, its first)" if current else " (it was never set)"))
            history.pop()
            self.client.set_registered_model_alias(name, alias, self._version(name, history[-1]).version)
            document["events"].append({"at": _now(), "action": "rollback", "alias": alias, "from": current, "to": history[-1]})
            self._write_history(name, document)
            return AliasMove(name, alias, current, history[-1])

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """MLflow's errors (a missing model, a bad alias, an unreachable server) as RegistryError, one paragraph."""
        _require_mlflow()
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise RegistryError(f"MLflow at {self.uri}: {exc.message}") from exc

    def _model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _versions(self, name: str) -> dict:
        """The model's edgeport versions, bundle version -> ModelVersion, in version order."""
        from .server.repository import version_key

        _checked_part(name, "model name")  # also what makes it safe inside the filter string
        found: dict = {}
        for mv in sorted(_pages(self.client.search_model_versions, filter_string=f"name = '{name}'"), key=lambda m: int(m.version)):
            if VERSION_TAG in mv.tags:
                found.setdefault(mv.tags[VERSION_TAG], mv)  # two racing publishers of one version: the first one counts
        return {version: found[version] for version in sorted(found, key=version_key)}

    def _version(self, name: str, version: str):
        _checked_part(version, "version")
        found = self._versions(name)
        if version not in found:
            raise RegistryError(f"{name} has no version {version!r} in MLflow at {self.uri}; it has {', '.join(found) or 'none'}")
        return found[version]

    def _bundle_version(self, name: str, number) -> str | None:
        if number is None:
            return None
        key = (name, str(number))
        if key not in self._numbers:
            self._numbers[key] = self.client.get_model_version(name, str(number)).tags.get(VERSION_TAG)
        return self._numbers[key]

    def _info(self, mv, aliases: dict, problem: str | None) -> VersionInfo:
        published = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
        return VersionInfo(mv.name, mv.tags[VERSION_TAG], mv.tags.get(PARITY_TAG, "pending"), mv.tags.get(CREATED_TAG, ""),
                           published, int(mv.tags.get(BYTES_TAG, 0)),
                           tuple(sorted(a for a, number in aliases.items() if str(number) == str(mv.version))), problem)

    def _fetch(self, name: str, mv, *, fresh: bool = False) -> tuple[Path | None, str | None]:
        """The cached copy of a version and None, or None and why its files in MLflow fail their check.

        A cached copy was checked when it was downloaded; `fresh` checks the files in MLflow again.
        """
        version, digest = mv.tags[VERSION_TAG], mv.tags.get(FILES_TAG)
        target = self._cache() / name / version
        if not fresh and _digest_of(target) == digest:
            return target, None
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.download-", dir=target.parent))
        try:
            from mlflow.artifacts import download_artifacts

            uri = self.client.get_model_version_download_uri(name, mv.version)
            downloaded = Path(download_artifacts(artifact_uri=uri, dst_path=str(staging), tracking_uri=self.uri))
            problem = version_problem(downloaded)
            if problem is None and _digest_of(downloaded) != digest:
                problem = (f"its manifest lists other files than were published (their sha256s differ from the model "
                           f"version's {FILES_TAG} tag)")
            if problem:
                return None, problem
            if _digest_of(target) != digest:  # absent, or stale: MLflow's version was deleted and published anew
                _make_read_only(downloaded)
                _replace(downloaded, target)
            return target, None
        finally:
            _make_writable(staging)
            shutil.rmtree(staging, ignore_errors=True)

    def _cache(self) -> Path:
        from .site_cache import cache_root

        return cache_root() / "mlflow" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=self._artifact_location())
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id  # another publisher made it first

    def _artifact_location(self) -> str | None:
        """Beside a local SQLite database, so the two move together (MLflow's default is ./mlruns under the
        current directory, wherever the first publish ran); a tracking server uses its own artifact root."""
        database = _sqlite_file(self.uri)
        return (database.parent / "mlartifacts").as_uri() if database else None

    def _write_history(self, name: str, document: dict) -> None:
        document["history"] = {alias: versions[-KEEP_HISTORY:] for alias, versions in document["history"].items()}
        document["events"] = document["events"][-KEEP_EVENTS:]
        self.client.set_registered_model_tag(name, ALIASES_TAG, json.dumps(document, separators=(",", ":")))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        database = _sqlite_file(self.uri)
        if database is None:  # a tracking server: last writer wins (see the module docstring)
            yield
            return
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database.with_name(database.name + ".edgeport-lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield


def _require_mlflow() -> None:
    from .extras import require

    require("mlflow", "mlflow", "the MLflow registry (--registry mlflow:TRACKING_URI)")


def files_digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """One sha256 over a manifest's file list (paths and their sha256s): equal digests, the same files."""
    lines = sorted(f"{f.path} {f.sha256}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _digest_of(bundle_dir: Path) -> str | None:
    try:
        return files_digest(read_bundle(bundle_dir, verify=False).manifest.files)
    except (EdgeportError, OSError):
        return None


def _replace(directory: Path, target: Path) -> None:
    """Rename a directory into place; an older copy at `target` is moved aside first, then deleted."""
    try:
        directory.rename(target)
        return
    except OSError:
        pass
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    directory.rename(target)
    _make_writable(old)
    shutil.rmtree(old, ignore_errors=True)


def _history(model) -> dict:
    try:
        document = json.loads(model.tags.get(ALIASES_TAG) or "{}")
    except ValueError as exc:
        raise RegistryError(f"{model.name}'s tag {ALIASES_TAG} in MLflow is damaged ({exc}); delete the tag to start "
                            "the alias history afresh") from exc
    return {"history": dict(document.get("history", {})), "events": list(document.get("events", []))}


def _reconciled(document: dict, alias: str, current: str | None) -> list[str]:
    """The alias's history, ending with the version it points at now (after a lost write, or a move in MLflow's UI)."""
    history = document["history"].setdefault(alias, [])
    if current is not None and (not history or history[-1] != current):
        history.append(current)
    return history


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _pages(search, **kwargs) -> list:
    results, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        results.extend(page)
        token = page.token
        if not token:
            return results
