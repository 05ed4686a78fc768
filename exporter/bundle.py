"""The bundle: one directory that holds all a front end or a server needs.

    bundle/
      manifest.json   the contract, validated against manifest.schema.json on write and read
      model.onnx      (or tfjs/model.json + tfjs/*.bin)
      golden.json     sample rows and the ORIGINAL model's outputs on them
      parity.json     the parity report written at export

Every file but the manifest is listed in `manifest.files` with its size and
sha256; `read_bundle` refuses a bundle whose files don't match.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import BundleError, InputFileError, IntegrityError

MANIFEST = "manifest.json"
GOLDEN = "golden.json"
PARITY = "parity.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
GOLDEN_ROWS = 256


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk and its validated manifest."""

    path: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def server_model_file(self) -> str:
        """The ONNX file the fallback server runs: model_file itself unless the manifest names another."""
        return self.manifest.get("server_model_file") or self.manifest["model_file"]

    @property
    def parity_verified(self) -> bool:
        """The parity check at export ran and passed (not failed, not pending)."""
        parity = self.manifest.get("parity") or {}
        return parity.get("passed") is True and not parity.get("pending")

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def classes(self) -> list | None:
        return self.manifest.get("classes")

    def golden(self) -> dict:
        return _read_json(self.path / GOLDEN, "golden outputs")


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest(manifest: Any, where: str = MANIFEST) -> None:
    """Raise BundleError naming the first field that breaks manifest.schema.json."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{where} is not a valid edgeport manifest: field {field}: {error.message}")


def file_entry(root: Path, relative: str) -> dict:
    data = (root / relative).read_bytes()
    return {"path": relative, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(directory: Path, manifest: dict) -> dict:
    """List every file in `directory` with its hash, validate, and write manifest.json."""
    files = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    manifest = {**manifest, "files": [file_entry(directory, f) for f in files]}
    validate_manifest(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_json(path: Path, data: Any) -> None:
    # allow_nan=False: JSON with NaN breaks browsers' JSON.parse; callers turn NaN into null first
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle; with verify, check every file's size and sha256."""
    path = Path(path)
    if not path.is_dir():
        raise InputFileError(f"bundle directory not found: {path}")
    manifest = _read_json(path / MANIFEST, "manifest")
    validate_manifest(manifest, str(path / MANIFEST))
    root = path.resolve()
    listed = {entry["path"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        check_relative(entry["path"], f"{path / MANIFEST}: files")
    for field in ("model_file", "server_model_file"):
        if field in manifest:
            check_relative(manifest[field], f"{path / MANIFEST}: {field}")
            if manifest[field] not in listed:
                raise BundleError(f"{path / MANIFEST}: {field} {manifest[field]!r} is not listed in files with its "
                                  "sha256, so nothing vouches for it; re-export the bundle")
    if verify:
        for entry in manifest["files"]:
            verify_file(root, entry)
    return Bundle(path=path, manifest=manifest)


def require_verified(bundle: Bundle) -> None:
    """Refuse a bundle whose parity check at export failed or never finished."""
    if bundle.parity_verified:
        return
    parity = bundle.manifest.get("parity") or {}
    why = "never finished (the export was interrupted)" if parity.get("pending") else "failed: the exported model does not give the original's outputs"
    raise BundleError(f"bundle {bundle.path} ({bundle.name} version {bundle.version}) did not pass its parity check, "
                      f"which {why}. Fix the model and re-export, or pass --allow-unverified to use it anyway.")


def check_relative(relative: str, where: str) -> None:
    """Refuse a manifest path that is absolute, climbs out with '..', or is otherwise not a plain relative path."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative or ":" in relative
            or any(part in ("", ".", "..") for part in parts)):
        raise BundleError(f"{where}: path {relative!r} is not a plain relative path inside the bundle; refusing it")


def read_files(bundle: Bundle) -> dict[str, bytes]:
    """Every file the manifest lists, read once and verified: a consistent snapshot of one bundle version."""
    root = bundle.path.resolve()
    return {entry["path"]: verify_file(root, entry) for entry in bundle.manifest["files"]}


def verify_file(root: Path, entry: dict) -> bytes:
    """Raise IntegrityError unless root/entry.path exists, stays inside root, and matches."""
    target = (root / entry["path"]).resolve()
    if not target.is_relative_to(root):
        raise IntegrityError(f"bundle file {entry['path']} points outside the bundle; refusing it")
    if not target.is_file():
        raise IntegrityError(f"bundle file {entry['path']} is listed in manifest.json but missing from {root}")
    if target.stat().st_size != entry["bytes"]:  # before reading: a swapped-in huge file is never read
        raise IntegrityError(f"bundle file {entry['path']} does not match manifest.json ({target.stat().st_size} bytes, "
                             f"expected {entry['bytes']}): it was changed after export. Re-export the bundle rather "
                             "than trusting it.")
    data = target.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise IntegrityError(
            f"bundle file {entry['path']} does not match manifest.json (sha256 {digest[:12]}…, expected "
            f"{entry['sha256'][:12]}…): it was changed after export. Re-export the bundle rather than trusting it."
        )
    return data


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an edgeport bundle: {path.name} ({what}) is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from exc
