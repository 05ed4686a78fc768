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
import os
import shutil
import tempfile
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


def staging_dir(out: Path, force: bool) -> Path:
    """A fresh directory beside `out`, so a failed export never leaves half a bundle at `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        kind = "an edgeport bundle" if (out / MANIFEST).exists() else "a non-empty directory"
        raise BundleError(f"--out {out} is {kind}; pass --force to replace it, or choose another path.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise BundleError(f"cannot write the bundle to {out}: {exc.strerror or exc}. Choose a writable --out.") from exc


def publish(staged: Path, out: Path) -> Path:
    """Move a finished staging directory to `out`, replacing an older bundle there."""
    out = Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)
    return out


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle; with verify, check every file's size and sha256."""
    path = Path(path)
    if not path.is_dir():
        raise InputFileError(f"bundle directory not found: {path}")
    manifest = _read_json(path / MANIFEST, "manifest")
    validate_manifest(manifest, str(path / MANIFEST))
    root = path.resolve()
    listed = {entry["path"] for entry in manifest["files"]}
    if manifest.get("model_file") not in listed:
        raise BundleError(f"{path / MANIFEST}: model_file {manifest.get('model_file')!r} is not listed in files")
    if verify:
        for entry in manifest["files"]:
            verify_file(root, entry)
    return Bundle(path=path, manifest=manifest)


def verify_file(root: Path, entry: dict) -> None:
    """Raise IntegrityError unless root/entry.path exists, stays inside root, and matches."""
    target = (root / entry["path"]).resolve()
    if not target.is_relative_to(root):
        raise IntegrityError(f"bundle file {entry['path']} points outside the bundle; refusing it")
    if not target.is_file():
        raise IntegrityError(f"bundle file {entry['path']} is listed in manifest.json but missing from {root}")
    data = target.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        raise IntegrityError(
            f"bundle file {entry['path']} does not match manifest.json (sha256 {digest[:12]}…, expected "
            f"{entry['sha256'][:12]}…): it was changed after export. Re-export the bundle rather than trusting it."
        )


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an edgeport bundle: {path.name} ({what}) is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from exc
