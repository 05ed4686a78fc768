"""The demo end to end in real Chromium against a real `edgeport serve`, with screenshots as artifacts."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ServerProcess, artifact_dir, need, wait_for_browser_runtime, wait_for_mark

pytestmark = [pytest.mark.browser]
SHOTS = "demo"


@pytest.fixture(autouse=True)
def chromium_available():
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(example_bundles):
    process = ServerProcess(example_bundles.bundles_dir)
    yield process
    process.stop()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    from edgeport.runtimes.browser import PageLog, launch

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = launch(pw, profile)
        page = context.new_page()
        page.set_viewport_size({"width": 1100, "height": 720})
        page.log = PageLog()
        page.log.attach(page)
        page.set_default_timeout(30_000)
        yield page
        context.close()


def open_model(page, url, model, block_wasm=False):
    """Open a model and wait until its runtime has loaded (or failed to): the next answer is not a hedged one."""
    if block_wasm:
        page.route("**/*.wasm", lambda route: route.abort())
    page.goto(f"{url}/?model={model}")
    wait_for_browser_runtime(page)


def marks(page):
    """The page's edgeport:* marks by name: (ms since navigation, detail)."""
    return {name: (at, detail) for name, at, detail in page.evaluate(
        "() => performance.getEntriesByType('mark').filter((m) => m.name.startsWith('edgeport:'))"
        ".map((m) => [m.name, m.startTime, m.detail])")}


def predict(page):
    page.click("#predict")
    page.wait_for_selector("#result:not([hidden]), #error-state:not([hidden])")


def shot(page, name):
    path = artifact_dir(SHOTS) / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def csp_violations(page):
    return [line for line in page.log.lines if "Content Security Policy" in line]


def test_the_demo_predicts_in_the_browser(page, server, example_bundles):
    import pandas as pd

    open_model(page, server.url, "iris")
    inputs = page.locator("#form input")
    assert inputs.count() == 4  # one field per column of the manifest
    values = {"sepal length (cm)": 6.7, "sepal width (cm)": 3.0, "petal length (cm)": 5.2, "petal width (cm)": 2.3}
    for name, value in values.items():
        page.fill(f"input[name='{name}']", str(value))
    predict(page)
    assert page.text_content("#served-by") == "browser"
    assert page.is_hidden("#notice")
    from edgeport.examples.iris import train

    expected = train().model.predict(pd.DataFrame([values]))[0]
    assert page.text_content("#label") == expected
    assert page.locator("#bars .prob").count() == 3
    assert "confident" in page.text_content("#confidence")
    assert not csp_violations(page), page.log.lines
    shot(page, "1-browser-prediction")


def test_churn_form_has_dropdowns_for_categories(page, server):
    open_model(page, server.url, "churn")
    options = page.locator("select[name='plan'] option").all_text_contents()
    assert sorted(options) == ["basic", "premium", "standard"]
    predict(page)
    assert page.text_content("#served-by") == "browser"


def test_blocked_wasm_falls_back_to_the_server_and_says_why(page, server):
    open_model(page, server.url, "iris", block_wasm=True)
    predict(page)
    assert page.text_content("#served-by") == "server"
    assert page.get_attribute("#notice", "data-reason") == "load-error"
    assert "server answered instead" in page.text_content("#notice")
    assert page.text_content("#label") in ("setosa", "versicolor", "virginica")
    shot(page, "2-wasm-blocked-server-fallback")
    import httpx

    metrics = httpx.get(f"{server.url}/metrics").text  # the server sees why browsers come to it
    assert 'edgeport_fallback_requests_total{model="iris",reason="load-error"}' in metrics


def test_low_confidence_goes_to_the_server(page, server, example_bundles):
    bundle = next(m for m in example_bundles.models if m.name == "churn").export.bundle
    threshold = bundle.manifest.fallback["confidence_threshold"]
    assert bundle.manifest.fallback["on_low_confidence"] == "server"
    golden = bundle.golden()
    unsure = [row for row, p in zip(golden["rows"], golden["outputs"]["probabilities"])
              if max(p) < threshold - 0.02 and all(v is not None for v in row.values())]
    assert unsure, "the churn sample should have rows the model is unsure about"
    open_model(page, server.url, "churn")
    for name, value in unsure[0].items():
        if isinstance(value, str):
            page.select_option(f"select[name='{name}']", value)
        else:
            page.fill(f"input[name='{name}']", repr(value))
    predict(page)
    assert page.text_content("#served-by") == "server"
    assert page.get_attribute("#notice", "data-reason") == "low-confidence"
    assert "confident" in page.text_content("#notice")
    shot(page, "3-low-confidence-server")


def test_server_down_too_shows_the_designed_error_state(page, example_bundles):
    own = ServerProcess(example_bundles.bundles_dir)
    try:
        open_model(page, own.url, "iris", block_wasm=True)
    finally:
        own.stop()
    predict(page)
    assert page.is_visible("#error-state")
    assert "No prediction right now" in page.text_content("#error-state")
    assert "can't be reached" in page.text_content("#error-text")
    assert page.is_visible("#retry")
    assert not [line for line in page.log.lines if line.startswith("page error")], page.log.lines
    shot(page, "4-server-down-error-state")


def test_an_insecure_page_never_skips_the_hash_check(server):
    """Off https and localhost there is no WebCrypto: the client refuses to run the model unverified."""
    from playwright.sync_api import sync_playwright

    from edgeport.runtimes.browser import PageLog, launch

    port = server.url.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        # demo.test resolves to loopback, but for the browser it is a plain-http site: not a secure context
        context = launch(pw, profile, extra_args=["--host-resolver-rules=MAP demo.test 127.0.0.1"])
        try:
            page = context.new_page()
            page.log = PageLog()
            page.log.attach(page)
            page.set_default_timeout(30_000)
            open_model(page, f"http://demo.test:{port}", "iris")
            assert page.evaluate("() => window.isSecureContext") is False
            predict(page)
            assert page.text_content("#served-by") == "server"
            assert page.get_attribute("#notice", "data-reason") == "integrity"
            assert "not served over https" in page.text_content("#notice")
            shot(page, "6-insecure-context-server")
        finally:
            context.close()


@pytest.mark.tensorflow
def test_the_keras_digits_model_predicts_from_the_canvas_in_the_browser(page, server, example_bundles):
    import numpy as np

    model = next((m for m in example_bundles.models if m.name == "digits-cnn"), None)
    need(model is not None, "the tensorflow extra is not installed, so the Keras example is not built")
    golden = model.export.bundle.golden()
    probabilities = np.asarray(golden["outputs"]["probabilities"])
    row = int(np.argmax(probabilities.max(axis=1)))  # the sample the model is surest about
    open_model(page, server.url, "digits-cnn")
    assert page.is_visible("#canvas")
    page.evaluate("(pixels) => document.getElementById('canvas').paintPixels(pixels)",
                  np.asarray(golden["rows"][row]).ravel().tolist())
    predict(page)
    assert page.text_content("#served-by") == "browser"
    assert page.text_content("#label") == str(golden["outputs"]["label"][row])
    assert not csp_violations(page), page.log.lines
    shot(page, "5-keras-digits-tfjs")


def finished(page):
    page.wait_for_selector("#result:not([hidden]), #error-state:not([hidden])")


def test_predict_on_load_sets_the_timing_marks(page, server):
    """?predict predicts the sample's first row as soon as the page can answer; the marks let anyone time the page.
    With a fallback server the first answer is hedged: whoever answered first is the one shown, and says so."""
    page.goto(f"{server.url}/?model=iris&predict")
    finished(page)
    wait_for_mark(page, "edgeport:runtime-ready")
    seen = marks(page)
    assert set(seen) == {"edgeport:ready", "edgeport:runtime-ready", "edgeport:first-prediction"}, seen
    ready, runtime, first = (seen[f"edgeport:{m}"][0] for m in ("ready", "runtime-ready", "first-prediction"))
    served_by = page.text_content("#served-by")
    assert seen["edgeport:first-prediction"][1] == {"served_by": served_by}
    assert seen["edgeport:runtime-ready"][1] == {"model": "iris", "error": None}
    assert 0 < ready <= first and ready <= runtime
    if served_by == "server":  # the server won the race, before the runtime was ready
        assert first <= runtime and page.get_attribute("#notice", "data-reason") == "loading"
    else:
        assert served_by == "browser" and runtime <= first
    page.click("#predict")  # a second prediction marks nothing more, and the runtime is ready for it
    page.wait_for_function("() => document.getElementById('served-by').textContent === 'browser'")
    assert page.evaluate("() => performance.getEntriesByName('edgeport:first-prediction').length") == 1


def test_a_hedged_first_answer_comes_from_the_server_while_the_runtime_loads(page, server):
    held = []
    page.route("**/*.wasm", lambda route: held.append(route))  # the runtime can't be ready until the test lets its wasm through
    page.goto(f"{server.url}/?model=iris&predict")
    finished(page)
    assert page.text_content("#served-by") == "server"
    assert page.get_attribute("#notice", "data-reason") == "loading"
    assert "still loading" in page.text_content("#notice")
    assert page.text_content("#label") in ("setosa", "versicolor", "virginica")
    assert page.is_visible("#progress")  # still showing the runtime's progress
    assert set(marks(page)) == {"edgeport:ready", "edgeport:first-prediction"}
    for _ in range(300):  # the worker asks for the wasm once the model is fetched and verified
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the wasm was never requested"
    for route in held:
        route.continue_()
    page.unroute("**/*.wasm")
    wait_for_mark(page, "edgeport:runtime-ready")
    assert page.is_hidden("#progress")
    predict(page)
    page.wait_for_function("() => document.getElementById('served-by').textContent === 'browser'")
    assert page.is_hidden("#notice")
    assert not csp_violations(page), page.log.lines


def test_a_hedged_first_answer_comes_from_the_browser_when_the_server_is_slower(page, server):
    held = []
    page.route("**/v2/models/**", lambda route: held.append(route))  # the server's answer is held back until the test releases it
    page.goto(f"{server.url}/?model=iris&predict")
    finished(page)
    assert page.text_content("#served-by") == "browser"
    assert page.is_hidden("#notice")
    seen = marks(page)
    assert seen["edgeport:first-prediction"][1] == {"served_by": "browser"}
    assert seen["edgeport:runtime-ready"][0] <= seen["edgeport:first-prediction"][0]
    assert held, "the page did not ask the server while the runtime loaded"
    for route in held:
        route.continue_()


def _resources(page):
    """Every resource the page and its workers loaded: (path, transferSize, encodedBodySize). transferSize 0 means
    the browser's cache answered without asking the server."""
    script = ("() => performance.getEntriesByType('resource').map((e) => "
              "[new URL(e.name).pathname, e.transferSize, e.encodedBodySize])")
    return [tuple(r) for target in [page, *page.workers] for r in target.evaluate(script)]


def test_the_page_fetches_each_file_once_and_a_warm_reload_asks_only_for_the_entry_points(page, server):
    import httpx

    record = httpx.get(f"{server.url}/site.json").json()["files"]
    immutable = {f"/{path}" for path, entry in record.items() if entry.get("immutable")}
    page.goto(f"{server.url}/?model=iris&predict")
    finished(page)
    wait_for_mark(page, "edgeport:runtime-ready")
    cold = _resources(page)
    fetched = [path for path, transfer, _ in cold if transfer > 0 and not path.startswith("/v2/")]
    assert len(fetched) == len(set(fetched)), f"fetched twice: {sorted(p for p in fetched if fetched.count(p) > 1)}"
    wasm = next(path for path in immutable if path.endswith(".wasm"))
    assert fetched.count(wasm) == 1

    page.reload()
    finished(page)
    wait_for_mark(page, "edgeport:runtime-ready")
    warm = _resources(page)
    asked = {path for path, transfer, _ in warm if transfer > 0}
    assert {p for p, _t, _b in warm} & immutable and not asked & immutable, sorted(asked & immutable)
    for path in ("/site.json", "/models/iris/manifest.json"):
        [(transfer, body)] = [(t, b) for p, t, b in warm if p == path]
        assert 0 < transfer < body, (path, transfer, body)  # asked the server, which answered 304 without a body
    assert not page.log.lines, page.log.lines  # every preload used, no CSP violation


def test_the_page_fits_a_phone(page, server):
    for width in (390, 360):
        page.set_viewport_size({"width": width, "height": 844})
        page.goto(f"{server.url}/?model=churn&predict")
        finished(page)
        assert page.text_content("#served-by") in ("browser", "server")  # hedged: whoever answered first
        scroll, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner == width, f"the page scrolls sideways at {width} px: {scroll} px wide"
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "9-phone")


@pytest.fixture(scope="module")
def plain_site(example_bundles, tmp_path_factory):
    """A site from `edgeport demo` without --fallback-url, in a real process."""
    out = tmp_path_factory.mktemp("plain-site") / "site"
    iris = next(m for m in example_bundles.models if m.name == "iris").export.bundle.path
    edgeport = Path(sys.executable).with_name("edgeport")
    done = subprocess.run([str(edgeport), "demo", str(iris), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_a_site_served_by_edgeport_serve_falls_back_to_that_server(page, plain_site, example_bundles):
    own = ServerProcess(example_bundles.bundles_dir, "--site", plain_site)
    try:
        open_model(page, own.url, "iris", block_wasm=True)
        assert page.text_content("#footer").startswith(f"Fallback server: {own.url}")
        predict(page)
        assert page.text_content("#served-by") == "server"
        assert page.get_attribute("#notice", "data-reason") == "load-error"
    finally:
        own.stop()


def test_the_same_site_on_a_static_host_has_no_fallback_and_no_errors(page, plain_site):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    static = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(plain_site)))
    threading.Thread(target=static.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{static.server_address[1]}/?model=iris&predict")
        finished(page)
        assert page.text_content("#served-by") == "browser"
        assert page.text_content("#footer").startswith("No fallback server")
        assert not page.log.lines, page.log.lines  # no probe of a server that isn't there
    finally:
        static.shutdown()
        static.server_close()
