"""Publishing a directory (a bundle, a demo site) so that readers never see half of one.

A new version is built in a hidden staging directory beside its destination,
then swapped into place in one step:

    bundles/.iris.staging-4242-k3j9/   being written by process 4242 (never served)
    bundles/iris/                      the published bundle, old or new, never neither

On Linux the swap is `renameat2(RENAME_EXCHANGE)`, one atomic rename that
exchanges the two directories; the old version then sits in the staging
directory and is removed. Where that call is missing (macOS, some filesystems)
the old directory is renamed aside first, and a later run puts it back if the
process was killed in between.

`--force` replaces only what edgeport wrote: an empty directory, a bundle whose
every file its manifest lists, or a site whose every file site.json lists.
Staging directories left by a killed process (its pid is gone) are removed by
the next publish to the same destination.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import BundleError

# the file that lists what an edgeport directory holds: a bundle's, a demo site's, a packed model's (its "edgeport" key)
OWNER_FILES = ("manifest.json", "site.json", "package.json")
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def staging_dir(out: str | Path, force: bool, what: str = "bundle") -> Path:
    """A fresh hidden directory beside `out` to build the next version in; refuses to clobber user files."""
    out = Path(out)
    if out.is_symlink():
        raise BundleError(f"--out {out} is a symlink; edgeport publishes by renaming a finished directory into "
                          "place, which would replace the link, not what it points to. Give the real directory.")
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} exists and is not a directory; choose another path.")
    if out.is_dir() and any(out.iterdir()):
        owned = _owned_by_edgeport(out)
        if not force:
            kind = "an edgeport bundle" if (out / "manifest.json").exists() else "a non-empty directory"
            raise BundleError(f"--out {out} is {kind}; pass --force to replace it, or choose another path.")
        if owned is not True:
            raise BundleError(
                f"--out {out} holds files edgeport did not write ({owned}); --force only replaces an edgeport bundle, "
                "demo site or packed model, or an empty directory, so nothing of yours is deleted. Move those files or choose "
                "another --out.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
        os.chmod(staged, 0o777 & ~current_umask())  # mkdtemp makes 0700; a bundle is for a web server to read
        return staged
    except OSError as exc:
        raise BundleError(f"cannot write the {what} to {out}: {exc.strerror or exc}. Choose a writable --out.") from exc


def publish(staged: Path, out: str | Path) -> Path:
    """Swap the finished `staged` directory into `out` atomically, then remove the old version."""
    out = Path(out)
    if not out.exists():
        os.replace(staged, out)
        return out
    if _exchange(staged, out):
        shutil.rmtree(staged, ignore_errors=True)  # it now holds the old version
        return out
    # no atomic exchange here: rename aside, then into place; clean_stale undoes a kill in between
    aside = staged.with_name(staged.name.replace(".staging-", ".old-", 1))
    os.replace(out, aside)
    os.replace(staged, out)
    shutil.rmtree(aside, ignore_errors=True)
    return out


def is_staging_name(name: str) -> bool:
    """A directory name publish uses while writing: never a published bundle."""
    return _STAGING.match(name) is not None


def clean_stale(out: Path) -> None:
    """Remove staging directories of `out` whose process is gone; restore an old version left aside."""
    if not out.parent.is_dir():
        return
    for candidate in out.parent.iterdir():
        match = _STAGING.match(candidate.name)
        if not match or match["name"] != out.name or not candidate.is_dir() or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            os.replace(candidate, out)  # killed between the two renames: the old version goes back
        else:
            shutil.rmtree(candidate, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a file so that it is either the old content or the whole new content, even on a full disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owned_by_edgeport(directory: Path) -> bool | str:
    """True if every file in `directory` is listed by its manifest.json or site.json; else what isn't."""
    listed: set[str] | None = None
    for owner in OWNER_FILES:
        path = directory / owner
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                return f"{owner} is not valid JSON"
            if owner == "site.json" and isinstance(record, dict) and "files" not in record and "models" in record:
                return True  # a site built before sites listed their files: every file in it is edgeport's
            listed = _listed(record, owner)
            if listed is not None:
                break
    if listed is None:
        first = next(iter(sorted(p.name for p in directory.iterdir())), "")
        return f"for example {first}; it has no edgeport manifest.json, site.json or packed package.json"
    extra = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p.relative_to(directory).as_posix() not in listed)
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        return ", ".join(extra[:3]) + more + " not listed in its manifest"
    return True


def _listed(record: object, owner: str) -> set[str] | None:
    if not isinstance(record, dict):
        return None
    files = record.get("files")
    if owner == "manifest.json" and isinstance(files, list):
        return {owner} | {f["path"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)}
    packed = record.get("edgeport")
    if owner == "package.json" and isinstance(packed, dict) and isinstance(packed.get("files"), list):
        return {owner} | {p for p in packed["files"] if isinstance(p, str)}
    if owner == "site.json" and isinstance(files, dict):
        names = {owner}
        for path, entry in files.items():
            names.add(path)
            names.update(f"{path}.{suffix}" for suffix in (entry.get("variants") or {}) if isinstance(entry, dict))
        return names
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE): swap two paths atomically. False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
