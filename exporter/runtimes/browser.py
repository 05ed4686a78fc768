"""The `browser` runtime: the JS client in headless Chromium (Debian's, from PATH), driven by playwright.

The bundle, the client module and onnxruntime-web's WASM-only build are served
from a loopback port to web_demo/harness/index.html, which imports the same
client the demo ships. Console errors, page errors and failed requests go into
the report. Every wait has a timeout: a broken page fails with a message and
never hangs.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

from ..bundle import Bundle
from ..errors import RuntimeFailedError, RuntimeUnavailableError
from ..extras import require
from ..loopback import Mount, serve
from ..webassets import (CLIENT_DIR, ORT_BROWSER_FILES, ORT_DIST, TFJS_BROWSER_FILES, TFJS_DIST, WEB_DEMO,
                         ort_module, require_chromium, require_js_packages)
from . import RuntimeOutput

CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class PageLog:
    """What the page said while it ran: console errors, uncaught errors, failed requests."""

    lines: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("console", lambda m: self.lines.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.lines.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.lines.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: self.lines.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)


def launch(playwright, user_data_dir: str, extra_args: Sequence[str] = ()):
    """A headless Chromium context with a fresh profile and the flags this closed network needs."""
    try:
        return playwright.chromium.launch_persistent_context(
            user_data_dir, executable_path=require_chromium(), headless=True, args=[*CHROMIUM_ARGS, *extra_args],
        )
    except RuntimeUnavailableError:
        raise
    except Exception as exc:
        raise RuntimeUnavailableError(f"could not start chromium: {str(exc).splitlines()[0]}") from exc


def mounts_for(bundle_dir) -> dict[str, Mount]:
    return {
        "/client/": Mount(CLIENT_DIR),
        "/runner/": Mount(WEB_DEMO / "runner", only=("collect.mjs", "measure.mjs")),
        "/harness/": Mount(WEB_DEMO / "harness"),
        "/vendor/ort/": Mount(ORT_DIST, only=ORT_BROWSER_FILES),
        "/vendor/tfjs/": Mount(TFJS_DIST, only=TFJS_BROWSER_FILES),
        "/bundle/": Mount(bundle_dir),
    }


# served ahead of the mounts: the client's onnxruntime-web, named by URL (see webassets.ort_module)
HARNESS_FILES = {"/client/ort.js": ort_module(f"/vendor/ort/{ORT_BROWSER_FILES[0]}")}


def run(bundle: Bundle, rows: list, *, block: Sequence[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S,
        harness: str = "/harness/index.html") -> RuntimeOutput:
    """Run `rows` through the client in Chromium. `block` lists URL globs to abort (for failure tests)."""
    require("playwright.sync_api", "browser", "the browser runtime (check -r browser)")
    require_js_packages()
    require_chromium()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    log = PageLog()
    rows_json = json.dumps({"rows": rows}, allow_nan=False).encode()
    with serve(mounts_for(bundle.path), files={**HARNESS_FILES, "/rows.json": rows_json}) as base, \
            tempfile.TemporaryDirectory(prefix="edgeport-chromium-") as profile, sync_playwright() as pw:
        context = launch(pw, profile)
        try:
            page = context.new_page()
            log.attach(page)
            for pattern in block:
                page.route(pattern, lambda route: route.abort())
            timeout_ms = timeout_s * 1000
            try:
                page.goto(f"{base}{harness}?manifest=/bundle/manifest.json&rows=/rows.json", timeout=timeout_ms)
                page.wait_for_function("() => window.__edgeport && window.__edgeport.status", timeout=timeout_ms)
                result = page.evaluate("() => window.__edgeport")
            except PlaywrightError as exc:
                reason = "did not finish" if "Timeout" in str(exc) else "failed"
                raise RuntimeFailedError(
                    f"the browser harness {reason} within {timeout_s:g}s: {str(exc).splitlines()[0]}",
                    diagnostics=tuple(log.lines),
                ) from exc
        finally:
            context.close()
    if result.get("status") != "done":
        raise RuntimeFailedError(f"the JS client failed in chromium: {result.get('error')}", diagnostics=tuple(log.lines))
    return RuntimeOutput(result["outputs"], diagnostics=tuple(log.lines), timings=result.get("timings", {}))
