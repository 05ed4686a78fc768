"""The model repository: bundles read once at start-up, verified, each with an onnxruntime session.

Each version is a snapshot: the session is built from the very bytes the
bundle route hands out, so a re-export on disk while the server runs changes
neither (restart to serve it). Hidden directories (publish's staging
directories among them) are never bundles, and a bundle whose parity check
failed or never finished is refused unless allow_unverified.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import MANIFEST, Bundle, graph_mismatch, read_bundle, read_files, require_verified
from ..errors import BundleError, InputFileError
from .static import Snapshot


@dataclass(frozen=True)
class ServedModel:
    bundle: Bundle
    session: Any  # onnxruntime.InferenceSession
    onnx_file: str
    files: Snapshot  # the bundle's files as read at start-up, what /bundles/NAME/VERSION/ serves

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
        import onnxruntime as ort

        onnx_file = bundle.server_model_file
        if not onnx_file.endswith(".onnx"):
            raise BundleError(f"bundle {bundle.path} has no ONNX artifact for the server to run")
        if not self.allow_unverified:
            require_verified(bundle)
        versions = self.models.setdefault(bundle.name, {})
        if bundle.version in versions:
            raise BundleError(f"two bundles are both {bundle.name} version {bundle.version}: "
                              f"{versions[bundle.version].bundle.path} and {bundle.path}")
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
        versions[bundle.version] = ServedModel(bundle, session, onnx_file, Snapshot.of_bundle(files, bundle.manifest))

    def get(self, name: str, version: str | None = None) -> ServedModel | None:
        versions = self.models.get(name)
        if not versions:
            return None
        if version is None:
            return versions[max(versions, key=version_key)]
        return versions.get(version)

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]


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
