"""Static files, served from a snapshot taken at start-up.

The server reads every file it will hand out once, when it starts: each bundle's
listed files (verified against the manifest) and the demo site (verified against
site.json when edgeport built it). What a browser downloads, its ETag, and the
model the server answers with therefore always come from one consistent version,
whatever happens on disk afterwards: a re-export, a deleted file, a symlink
swapped in. To serve a new version, restart the server.

Caching: a file site.json marks "immutable" (it lives in a directory named by its
content's hash, see site.py) is served cacheable for good; every other file gets
the caller's Cache-Control (no-cache for the site) and is revalidated by ETag.

Precompressed variants (.br, .gz) are served only when site.json lists them with
their hash, or, for a site edgeport didn't build, when they are regular files
inside the site (never symlinks). Bundle files have no variants: only what the
manifest lists is served.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from ..bundle import Manifest
from ..errors import SiteError
from ..media_types import content_type as media_type
from ..site import IMMUTABLE

ENCODINGS = (("br", "br"), ("gzip", "gz"))  # (Content-Encoding, file suffix), in order of preference
DEFAULT_MAX_SITE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    etag: str
    media_type: str
    variants: dict[str, bytes] = field(default_factory=dict)  # Content-Encoding -> body
    immutable: bool = False  # its URL changes whenever its content does


class Snapshot:
    """Files in memory by relative path, each with a strong ETag from its content."""

    def __init__(self, files: dict[str, StaticFile], headers: dict[str, str] | None = None):
        self.files = files
        self.headers = headers or {}

    @classmethod
    def of_bundle(cls, files: dict[str, bytes], manifest: Manifest) -> "Snapshot":
        """A bundle's verified files, and its manifest as JSON (the version pins the content)."""
        listed = {f.path: f.sha256 for f in manifest.files}
        out = {path: StaticFile(data, f'"{listed[path]}"', media_type(path)) for path, data in files.items()}
        body = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
        out["manifest.json"] = StaticFile(body, etag_of(body), media_type("manifest.json"))
        return cls(out)

    @classmethod
    def of_site(cls, root: str | Path, max_bytes: int = DEFAULT_MAX_SITE_BYTES) -> "Snapshot":
        """The demo site under root: what site.json lists (verified), or every regular file if it lists nothing."""
        root = Path(root).resolve()
        if not root.is_dir():
            raise SiteError(f"site directory not found: {root}")
        record = _site_record(root)
        total = 0
        files: dict[str, StaticFile] = {}
        listing = record["files"] if record else {p: {} for p in _walk(root)}
        for relative, entry in listing.items():
            body = _read_regular(root, relative, entry, "site file")
            variants = {}
            for encoding, suffix in ENCODINGS:
                recorded = (entry.get("variants") or {}).get(suffix)
                if record and recorded is None:
                    continue  # edgeport built this site: a variant it didn't record is not served
                variant = _read_regular(root, f"{relative}.{suffix}", recorded or {}, "site file", optional=not record)
                if variant is not None:
                    variants[encoding] = variant
            total += len(body) + sum(map(len, variants.values()))
            if total > max_bytes:
                raise SiteError(f"the site at {root} is over {max_bytes // 2**20} MB; the server holds the site in "
                                  "memory, so serve a site this large from a static host or CDN instead")
            # a body checked against site.json's sha256 has it for an ETag: no second pass over a 14 MB wasm
            etag = f'"{entry["sha256"]}"' if entry.get("sha256") else etag_of(body)
            files[relative] = StaticFile(body, etag, media_type(relative), variants, entry.get("immutable") is True)
        headers = dict(record.get("headers") or {}) if record else {}
        return cls(files, headers)

    def response(self, relative: str, request: Request, cache: str) -> Response | None:
        """The file (or its best accepted variant), a 304, or None if this snapshot has no such file."""
        item = self.files.get(relative)
        if item is None:
            return None
        headers = {**self.headers, "Cache-Control": IMMUTABLE if item.immutable else cache, "ETag": item.etag}
        if item.variants:
            headers["Vary"] = "Accept-Encoding"
        if request.headers.get("if-none-match") == item.etag:
            return Response(status_code=304, headers=headers)
        accepted = request.headers.get("accept-encoding", "")
        for encoding, _ in ENCODINGS:
            if encoding in item.variants and encoding in accepted:
                return Response(item.variants[encoding], media_type=item.media_type,
                                headers={**headers, "Content-Encoding": encoding})
        return Response(item.body, media_type=item.media_type, headers=headers)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def _site_record(root: Path) -> dict | None:
    path = root / "site.json"
    if not path.is_file() or path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path} is not valid JSON ({exc}); rebuild the site with edgeport demo") from exc
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None  # a site from before sites listed their files: served like any other static site
    record["files"].setdefault("site.json", {})
    return record


def _walk(root: Path) -> list[str]:
    """Regular files under root, not hidden, not variants (they are found beside their file)."""
    found = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith((".gz", ".br")):
                continue
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if os.path.isfile(root / relative) and not os.path.islink(root / relative):
                found.append(relative)
    return found


def _read_regular(root: Path, relative: str, entry: dict, what: str, optional: bool = False) -> bytes | None:
    """Read root/relative if it is a regular file (not a symlink) inside root, checked against entry's hash."""
    path = root / relative
    try:
        info = os.lstat(path)
    except OSError:
        if optional:
            return None
        raise SiteError(f"{what} {relative} is listed in site.json but missing; rebuild the site with edgeport demo")
    # realpath equals the path only when no component is a symlink (root itself is already resolved)
    if not stat.S_ISREG(info.st_mode) or os.path.realpath(path) != str(path):
        if optional:
            return None
        raise SiteError(f"{what} {relative} is not a regular file inside {root} (a symlink?); refusing to serve it")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        body = handle.read()
    if entry.get("sha256") and (len(body) != entry.get("bytes") or hashlib.sha256(body).hexdigest() != entry["sha256"]):
        raise SiteError(f"{what} {relative} does not match the sha256 in site.json: it changed after the site was "
                          "built. Rebuild the site with edgeport demo rather than serving it.")
    return body
