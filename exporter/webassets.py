"""Where the JS side lives (web_demo/) and what a fresh machine must install for it.

From a checkout, web_demo/ sits beside exporter/; from a wheel, it is package data inside the `edgeport`
package (node_modules is not: `edgeport install-js` runs `npm ci` there). EDGEPORT_WEB_DEMO points elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .errors import InputFileError, RuntimeUnavailableError
from .progress import Progress, quiet

_PACKAGE = Path(__file__).resolve().parent
WEB_DEMO = Path(os.path.expanduser(os.environ.get("EDGEPORT_WEB_DEMO", "")) or next(
    (p for p in (_PACKAGE / "web_demo", _PACKAGE.parent / "web_demo") if (p / "package.json").is_file()),
    _PACKAGE / "web_demo"))
CLIENT_DIR = WEB_DEMO / "client"
NODE_MODULES = WEB_DEMO / "node_modules"
# a checkout installs everything with `make setup`; an installed wheel has only `edgeport install-js`
IN_CHECKOUT = (_PACKAGE.parent / "pyproject.toml").is_file() and WEB_DEMO == _PACKAGE.parent / "web_demo"
INSTALL_JS = "make setup" if IN_CHECKOUT else "edgeport install-js"
# what package.json's dependencies become; `install-js --dir` copies these into an empty directory
WEB_DEMO_FILES = ("package.json", "package-lock.json", "client", "demo", "runner", "harness")
ORT_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
# the WASM-only build: 14 MB (3.7 MB gzipped) instead of the 28 MB JSEP/WebGPU default
ORT_BROWSER_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def ort_module(url: str) -> bytes:
    """client/ort.js for a page served without a bundler: the client's worker imports onnxruntime-web
    through it, and a worker has no import map, so it names the hosted WASM-only build by URL."""
    return f"export * from {json.dumps(url)};\n".encode()


def require_node() -> str:
    node = shutil.which("node")
    if not node:
        raise RuntimeUnavailableError(
            "the node runtime needs Node.js 20 or newer on PATH, and none was found. Install it "
            f"(e.g. `apt-get install -y nodejs npm`), then run `{INSTALL_JS}`."
        )
    return node


def require_js_packages() -> None:
    """Raise, naming the command that installs them, unless web_demo's npm packages are installed."""
    if not (ORT_DIST / ORT_BROWSER_FILES[0]).is_file():
        raise RuntimeUnavailableError(
            f"onnxruntime-web is not installed in {WEB_DEMO}: run `{INSTALL_JS}` (it runs npm ci there)."
        )


def require_tfjs_packages() -> None:
    """Like require_js_packages, for @tensorflow/tfjs (tfjs bundles)."""
    if not (TFJS_DIST / TFJS_BROWSER_FILES[0]).is_file():
        raise RuntimeUnavailableError(
            f"@tensorflow/tfjs is not installed in {WEB_DEMO}: run `{INSTALL_JS}` (it runs npm ci there)."
        )


def require_chromium() -> str:
    browser = os.environ.get("EDGEPORT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise RuntimeUnavailableError(
            "the browser runtime needs Chromium on PATH, and none was found. On Debian/Ubuntu: "
            f"`sudo apt-get install -y chromium`{' (make setup does this when run as root)' if IN_CHECKOUT else ''}. "
            "Don't let playwright download a browser: edgeport drives the system chromium."
        )
    return browser


TFJS_DIST = NODE_MODULES / "@tensorflow" / "tfjs" / "dist"
# the ES-module build (1.1 MB, cpu + webgl backends), imported through the page's import map
TFJS_BROWSER_FILES = ("tf.fesm.min.js",)


@dataclass(frozen=True)
class JsInstallResult:
    """What `install_js_packages` did: where node_modules now is, and how long npm ci took."""

    directory: Path
    seconds: float
    copied: bool  # the web_demo files were copied into an empty --dir first
    default: bool  # directory is the one edgeport uses (else EDGEPORT_WEB_DEMO must point at it)


def install_js_packages(directory: str | Path | None = None, *, progress: Progress | None = None,
                        timeout_s: float = 900) -> JsInstallResult:
    """Run `npm ci` for the JS runtime packages (onnxruntime-web, TF.js) in web_demo, or in `directory`.

    A `directory` without a package.json (missing or empty) first gets a copy of web_demo's files, so an
    install whose package directory is read-only can keep its JS side elsewhere (EDGEPORT_WEB_DEMO=directory).
    npm's output goes to `progress` line by line; a failure raises with its last lines.
    """
    progress = progress or quiet
    target = Path(directory).expanduser().resolve() if directory else WEB_DEMO
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        raise RuntimeUnavailableError(
            "installing the JS runtime packages needs Node.js 20 or newer and npm on PATH, and "
            f"{'npm' if shutil.which('node') else 'node'} was not found. Install both (e.g. `apt-get install -y nodejs npm` "
            "on Debian/Ubuntu), then run `edgeport install-js` again."
        )
    copied = False
    if directory and not (target / "package.json").is_file():
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise InputFileError(f"--dir {target} is neither a web_demo directory (no package.json) nor empty: "
                                 "name an empty or new directory and edgeport copies its web_demo files there")
        _writable_or_raise(target if target.exists() else _existing_parent(target))
        progress(f"copying the web_demo files from {WEB_DEMO} to {target}")
        try:
            _copy_web_demo(WEB_DEMO, target)
        except OSError as exc:
            raise InputFileError(f"could not copy the web_demo files to {target}: {exc.strerror or exc}") from exc
        copied = True
    if not (target / "package.json").is_file() or not (target / "package-lock.json").is_file():
        raise InputFileError(f"{target} has no package.json and package-lock.json: it is not edgeport's web_demo "
                             "directory (reinstall edgeport, or name an empty --dir to copy it there)")
    _writable_or_raise(target)
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", "--omit=dev"]
    progress(f"npm ci in {target} (onnxruntime-web, @tensorflow/tfjs; about 450 MB, a minute or two)")
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=15)
    try:
        proc = subprocess.Popen(command, cwd=target, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as exc:
        raise RuntimeUnavailableError(f"could not start npm ({npm}): {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    for line in proc.stdout:  # npm prints little at --loglevel=error; pass on what it does say
        if line.strip():
            tail.append(line.rstrip())
            progress(f"npm: {line.rstrip()}")
    try:
        code = proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeUnavailableError(f"npm ci in {target} did not finish within {timeout_s:g}s") from None
    if code != 0:
        raise RuntimeUnavailableError(
            f"npm ci failed in {target} (exit {code}): {' | '.join(tail) or 'no output'}. npm needs its registry "
            "(or a filled npm cache) and about 450 MB of disk; fix that and run `edgeport install-js` again."
        )
    seconds = time.monotonic() - started
    progress(f"npm ci finished in {seconds:.0f}s")
    return JsInstallResult(target, seconds, copied, default=target == WEB_DEMO.resolve())


def _writable_or_raise(directory: Path) -> None:
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RuntimeUnavailableError(
            f"{directory} is not writable by this user, so npm ci can't create node_modules there (edgeport is "
            "probably installed system-wide). Either install edgeport in a virtualenv you own, or keep the JS side "
            "elsewhere: `edgeport install-js --dir ~/.cache/edgeport/web_demo` and set "
            "EDGEPORT_WEB_DEMO=~/.cache/edgeport/web_demo."
        )


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _copy_web_demo(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in WEB_DEMO_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source / name, target / name)
