"""Where the JS side lives (web_demo/) and what a fresh machine must install for it.

From a checkout, web_demo/ sits beside exporter/; from a wheel, it is package data inside the `edgeport`
package (node_modules is not: `edgeport install-js` runs `npm ci` there). EDGEPORT_WEB_DEMO points elsewhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import RuntimeUnavailableError

_PACKAGE = Path(__file__).resolve().parent
WEB_DEMO = Path(os.environ.get("EDGEPORT_WEB_DEMO") or next(
    (p for p in (_PACKAGE / "web_demo", _PACKAGE.parent / "web_demo") if (p / "package.json").is_file()),
    _PACKAGE / "web_demo"))
CLIENT_DIR = WEB_DEMO / "client"
NODE_MODULES = WEB_DEMO / "node_modules"
ORT_DIST = NODE_MODULES / "onnxruntime-web" / "dist"
# the WASM-only build: 14 MB (3.7 MB gzipped) instead of the 28 MB JSEP/WebGPU default
ORT_BROWSER_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def require_node() -> str:
    node = shutil.which("node")
    if not node:
        raise RuntimeUnavailableError(
            "the node runtime needs Node.js 20 or newer on PATH, and none was found. Install it "
            "(e.g. `apt-get install -y nodejs npm`), then run `make setup`."
        )
    return node


def require_js_packages() -> None:
    if not (ORT_DIST / ORT_BROWSER_FILES[0]).is_file():
        raise RuntimeUnavailableError(
            f"onnxruntime-web is not installed in {WEB_DEMO}: run `make setup` (or `cd web_demo && npm ci`)."
        )


def require_chromium() -> str:
    browser = os.environ.get("EDGEPORT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise RuntimeUnavailableError(
            "the browser runtime needs Chromium on PATH, and none was found. On Debian/Ubuntu: "
            "`sudo apt-get install -y chromium` (make setup does this when run as root). "
            "Don't let playwright download a browser: edgeport drives the system chromium."
        )
    return browser


TFJS_DIST = NODE_MODULES / "@tensorflow" / "tfjs" / "dist"
# the ES-module build (1.1 MB, cpu + webgl backends), imported through the page's import map
TFJS_BROWSER_FILES = ("tf.fesm.min.js",)
