"""The front-end examples (web_demo/examples/) built and run as a front-end developer would run them.

Each example is copied out of the checkout, installs its own dependencies from its lockfile (`npm ci`),
then edgeport-client and a model packed by `edgeport pack` from local tarballs (`npm pack`), builds for
production (Vite, or webpack; TypeScript type checks included) with no TF.js installed, is served as
static files, and predicts in headless Chromium. Each test asserts the prediction the Python original
made, no long task (> 50 ms) on the main thread while the model loads and makes 100 predictions (from
DOMContentLoaded on: the app's own bundle is parsed and run before it, and is not edgeport's to answer for),
and that the runtime fetched was onnxruntime-web's WASM-only build. A screenshot of each is kept in test-artifacts/examples/.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, artifact_dir, need
from edgeport.bundle import GOLDEN
from edgeport.loopback import Mount, serve
from edgeport.pack import pack
from edgeport.runtimes import python_ort
from edgeport.webassets import ORT_DIST

pytestmark = pytest.mark.browser

EXAMPLES = REPO / "web_demo" / "examples"
CLIENT = REPO / "web_demo" / "client"
# every long task, with when it started; the app's own bundle (React's 250 KB) is parsed and run before
# DOMContentLoaded, the model's load and the predictions come after it: that is what the test holds to 0
LONG_TASKS = ("window.__longTasks = [];"
              "new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push([e.startTime, e.duration]); })"
              ".observe({ type: 'longtask', buffered: true });")


def npm(*args: str, cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run(["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"npm {' '.join(args)} in {cwd.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def npm_pack(directory: Path, destination: Path) -> Path:
    name = npm("pack", "--pack-destination", str(destination), cwd=directory).strip().splitlines()[-1]
    return destination / name


@pytest.fixture(scope="module")
def tarballs(bundles, tmp_path_factory):
    """edgeport-client and the packed iris and churn models, as the tarballs `npm pack` makes."""
    need(shutil.which("npm") is not None, "npm is not installed (the examples install packages with it)")
    root = tmp_path_factory.mktemp("tarballs")
    made = {"edgeport-client": npm_pack(CLIENT, root)}
    for name, bundle in bundles.items():
        made[name] = npm_pack(pack(bundle.path, root / f"{name}-package").path, root)
    return made


def build(example: str, packages: list[Path], workdir: Path) -> Path:
    """Copy the example out, install it as its README says, and build it for production; the served root."""
    app = workdir / example
    shutil.copytree(EXAMPLES / example, app, ignore=shutil.ignore_patterns("node_modules", "dist"))
    npm("ci", cwd=app)
    npm("install", "--no-save", *map(str, packages), cwd=app)
    assert not (app / "node_modules" / "@tensorflow").exists(), "an ONNX-only app must build without TF.js"
    npm("run", "build", cwd=app)
    return app / "dist" if (app / "dist" / "index.html").is_file() else app


def development_build(app: Path) -> Path:
    """The same app built with React's development build, where StrictMode mounts every component twice."""
    done = subprocess.run(["npx", "vite", "build", "--mode", "development", "--outDir", "dist-dev"], cwd=app,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NODE_ENV": "development"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return app / "dist-dev"


def wasm_only_digest() -> str:
    return hashlib.sha256((ORT_DIST / "ort-wasm-simd-threaded.wasm").read_bytes()).hexdigest()


def run_in_chromium(root: Path, name: str, interact) -> dict:
    """Serve `root`, open it, let `interact(page)` drive it; report long tasks and the .wasm files fetched.

    Long tasks are timings, and this machine is shared: a page that shows one is opened once more in a fresh
    profile, and only a long task seen again counts (a synchronous WASM compile or model run on the main thread
    shows every time; the structural check below catches that too)."""
    first = _open_in_chromium(root, name, interact)
    if not first["long_tasks"]:
        return first
    again = _open_in_chromium(root, name, interact)
    return {**again, "long_tasks_first_try": first["long_tasks"]}


def _open_in_chromium(root: Path, name: str, interact) -> dict:
    from playwright.sync_api import sync_playwright

    from edgeport.runtimes.browser import PageLog, launch

    log, wasm = PageLog(), []
    with serve({"/": Mount(root)}) as base, tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = launch(pw, profile)
        try:
            context.on("response", lambda r: wasm.append(hashlib.sha256(r.body()).hexdigest()) if r.url.endswith(".wasm") else None)
            page = context.new_page()
            log.attach(page)
            page.add_init_script(LONG_TASKS)
            page.goto(f"{base}/index.html")
            page.wait_for_function("document.getElementById('status')?.textContent.startsWith('Ready')", timeout=60_000)
            result = interact(page)
            page.click("#many")  # 100 predictions, one row at a time
            page.wait_for_function("document.getElementById('many-result').textContent !== ''", timeout=60_000)
            tasks, ready, page_wasm = page.evaluate(
                "[window.__longTasks, performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
                " performance.getEntriesByType('resource').filter((e) => e.name.endsWith('.wasm')).map((e) => e.name)]")
            result["long_tasks"] = [round(duration) for start, duration in tasks if start >= ready]
            result["long_tasks_while_the_page_started"] = [round(duration) for start, duration in tasks if start < ready]
            result["wasm_on_the_main_thread"] = page_wasm  # the page's own fetches; a worker's are in its own timeline
            page.screenshot(path=str(artifact_dir("examples") / f"{name}.png"), full_page=True)
        finally:
            context.close()
    # a request Chromium itself aborted (ERR_ABORTED: no console error, nothing the user sees) is not a page error.
    # CI saw the webpack build's model file aborted once while the page still loaded it and predicted right (the
    # label checks below); where it comes from is not understood yet: see the closing note of stop 18
    errors = [line for line in log.lines if not (line.startswith("request failed: ") and "net::ERR_ABORTED" in line)]
    assert not errors, f"{name}: the page reported errors:\n" + "\n".join(errors)
    return {**result, "wasm": wasm}


def golden(bundle) -> tuple[list, list]:
    data = json.loads((bundle.path / GOLDEN).read_text())
    return data["rows"], data["outputs"]["label"]


def differing_row(rows: list, labels: list, shown: str, columns: list[str]) -> tuple[dict, str]:
    """A golden row whose label differs from the one the page shows, with every value present, keyed by column."""
    for row, label in zip(rows, labels):
        values = row if isinstance(row, dict) else dict(zip(columns, row))
        if label != shown and all(v is not None for v in values.values()):
            return values, label
    raise AssertionError(f"no golden row predicts anything but {shown!r}")


def check_common(report: dict, name: str) -> None:
    assert report["wasm_on_the_main_thread"] == [], f"{name}: onnxruntime-web's WASM was fetched by the page itself"
    assert report["long_tasks"] == [], (f"{name}: long tasks on the main thread while the model loaded and predicted "
                                        f"(ms): {report['long_tasks']}, and on a first try {report.get('long_tasks_first_try')}")
    assert report["wasm"] == [wasm_only_digest()], \
        f"{name}: expected one fetch of onnxruntime-web's WASM-only build, got {len(report['wasm'])} .wasm fetches"


def test_vite_typescript_example_builds_types_and_predicts(tarballs, bundles, tmp_path):
    root = build("vite-ts", [tarballs["edgeport-client"], tarballs["iris"]], tmp_path)
    rows, labels = golden(bundles["iris"])
    columns = bundles["iris"].manifest.inputs[0].columns

    def interact(page):
        shown = page.text_content("#label")
        row, expected = differing_row(rows, labels, shown, columns)
        for column, value in row.items():  # each change predicts again
            page.fill(f'input[name="{column}"]', repr(value))
        page.wait_for_function(f"document.getElementById('label').textContent === {json.dumps(expected)}", timeout=30_000)
        return {"served_by": page.text_content("#served-by")}

    report = run_in_chromium(root, "vite-ts", interact)
    assert report["served_by"].startswith("served by browser")
    check_common(report, "vite-ts")


def test_react_example_loads_once_and_predicts_on_input_change(tarballs, bundles, tmp_path):
    root = build("react", [tarballs["edgeport-client"], tarballs["churn"]], tmp_path)
    rows, labels = golden(bundles["churn"])

    def interact(page):
        page.wait_for_selector("#label", timeout=30_000)
        shown = page.text_content("#label")
        row, expected = differing_row(rows, labels, shown, [])
        for column, value in row.items():
            if isinstance(value, str):
                page.select_option(f'select[name="{column}"]', value)
            else:
                page.fill(f'input[name="{column}"]', repr(value))
        page.wait_for_function(f"document.getElementById('label').textContent === {json.dumps(expected)}", timeout=30_000)
        return {"served_by": page.text_content("#served-by")}

    report = run_in_chromium(root, "react", interact)
    assert report["served_by"] == "served by browser"
    check_common(report, "react")
    # StrictMode's mount, unmount, mount: useModel still loads the model (one worker, one .wasm) once
    strict = run_in_chromium(development_build(root.parent), "react-strict-mode", interact)
    assert strict["served_by"] == "served by browser"
    assert len(strict["wasm"]) == 1, f"the development build loaded the model {len(strict['wasm'])} times"


def test_webpack_example_builds_without_tfjs_and_predicts(tarballs, bundles, tmp_path):
    root = build("webpack", [tarballs["edgeport-client"], tarballs["iris"]], tmp_path)
    columns = bundles["iris"].manifest.inputs[0].columns
    row = json.loads((EXAMPLES / "webpack" / "src" / "row.json").read_text())
    # the page's row is the example's own, not a golden row: the bundle's model run by onnxruntime in Python
    # (which passed parity against the original at export) says what the answer is
    [label] = python_ort.run(bundles["iris"], [[row[c] for c in columns]]).outputs["label"]
    report = run_in_chromium(root, "webpack", lambda page: {"label": page.text_content("#label")})
    assert report["label"] == label
    check_common(report, "webpack")
