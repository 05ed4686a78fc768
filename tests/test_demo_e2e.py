"""The demo end to end in real Chromium against a real `edgeport serve`, with screenshots as artifacts."""
from __future__ import annotations

import shutil
import tempfile

import pytest

from conftest import ServerProcess, artifact_dir, need

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
    if block_wasm:
        page.route("**/*.wasm", lambda route: route.abort())
    page.goto(f"{url}/?model={model}")
    page.wait_for_selector("#predict:not([disabled])")


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
