"""The demo site `edgeport serve` builds for itself: built once per set of bundles, then reused.

    $EDGEPORT_CACHE (else $XDG_CACHE_HOME/edgeport, else ~/.cache/edgeport)
      sites/KEY/                    a finished site, never rewritten in place
      sites/.KEY.staging-PID-xxxx/  a site being built by process PID (never served)

KEY is a hash over the served bundles' names, versions and manifest sha256s, and
edgeport's version (which pins the page, the JS client and the runtime files).
A site is built in a staging directory and renamed into place in one step, and
the first server to finish wins: a server starting beside another one serves
either nothing yet or a whole site, never half of one. These sites are not
precompressed: that takes seconds, and `edgeport demo` is the command for a
site to publish.

A cached site that fails its check at start-up (a file changed or went missing
since it was built) is discarded and built again, once. Each use touches the
site; past KEEP_SITES sites, the least recently used are removed (a running
server holds its site in memory, so removing one never breaks it). When the cache
can't be written, the site is built in a temporary directory that the caller
removes once the server has read it (`is_temporary`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from . import __version__
from .bundle import MANIFEST
from .errors import BundleError
from .progress import Progress
from .publish import clean_stale
from .site import SITE_JSON, build_site

KEEP_SITES = 8  # about 16 MB each: a few bundles' worth of history without growing forever
TEMPORARY_PREFIX = "edgeport-site-"


def cache_root() -> Path:
    """Where edgeport keeps what it can rebuild: $EDGEPORT_CACHE, else $XDG_CACHE_HOME/edgeport, else ~/.cache/edgeport."""
    if os.environ.get("EDGEPORT_CACHE"):
        return Path(os.environ["EDGEPORT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "edgeport"
    return Path.home() / ".cache" / "edgeport"


def site_key(bundles: Sequence[tuple[str, str, Path]]) -> str:
    """The cache key of the site for (name, version, bundle directory) triples."""
    identity = [[name, version, hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()]
                for name, version, path in sorted(bundles)]
    return hashlib.sha256(json.dumps({"edgeport": __version__, "bundles": identity, "page": _page_hash()}).encode()
                          ).hexdigest()[:32]


def _page_hash() -> str:
    """What the site is built from besides the bundles: the page, the client, and the runtime packages' lockfile.
    A pull or an upgrade that changes any of them gets a new site, not yesterday's client."""
    from .webassets import CLIENT_DIR, WEB_DEMO

    digest = hashlib.sha256()
    for path in sorted([*(WEB_DEMO / "demo").glob("*"), *CLIENT_DIR.glob("*"), WEB_DEMO / "package-lock.json"]):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cached_site(bundles: Sequence[tuple[str, str, Path]], *, allow_unverified: bool = False,
                progress: Progress | None = None, root: Path | None = None) -> Path:
    """The same-origin demo site for (name, version, bundle directory) triples: from the cache, or built into it."""
    progress = progress or (lambda _msg: None)
    sites = (root or cache_root()) / "sites"
    final = sites / site_key(bundles)
    if (final / SITE_JSON).is_file():
        _touch(final)
        progress(f"demo site: {final} (cached)")
        return final
    paths = [path for _name, _version, path in sorted(bundles)]
    try:
        sites.mkdir(parents=True, exist_ok=True)
        clean_stale(final)
        # named as publish names its staging directories, so that a killed build is cleaned up the next time
        private = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-{os.getpid()}-", dir=sites))
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
        progress(f"cannot write the site cache at {sites} ({exc.strerror or exc}); building the demo site in "
                 f"{fallback} for this run (set EDGEPORT_CACHE to a writable directory to keep it)")
        return build_site(paths, fallback / "site", fallback_url="", allow_unverified=allow_unverified,
                          progress=progress, precompress=False).path
    try:
        build_site(paths, private, fallback_url="", allow_unverified=allow_unverified, progress=progress,
                   precompress=False)
        try:
            os.rename(private, final)  # atomic; refused when another server published this site first
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (final / SITE_JSON).is_file():
                raise BundleError(f"cannot publish the demo site to {final}: {exc.strerror or exc}; set "
                                  "EDGEPORT_CACHE to a writable directory") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
    progress(f"demo site: {final} (built, cached for the next start)")
    _evict(sites, keep=final)
    return final


def is_temporary(site: Path) -> bool:
    """Whether `site` was built outside the cache for this run only (the caller removes it once it's read)."""
    return site.parent.name.startswith(TEMPORARY_PREFIX) and site.parent.parent == Path(tempfile.gettempdir())


def discard_site(site: Path) -> None:
    """Remove a cached site that failed its check: renamed aside first, so no reader sees half of it."""
    aside = site.with_name(f".{site.name}.damaged-{os.getpid()}")
    try:
        os.rename(site, aside)
    except OSError:
        return  # another server discarded it first
    shutil.rmtree(aside, ignore_errors=True)


def _touch(site: Path) -> None:
    try:
        os.utime(site)  # the eviction order: last used, not last built
    except OSError:
        pass  # a read-only cache still serves


def _evict(sites: Path, keep: Path) -> None:
    finished = [p for p in sites.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep]
    finished.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in finished[KEEP_SITES - 1:]:
        discard_site(old)
