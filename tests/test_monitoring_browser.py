"""Browser telemetry end to end: the demo page in real Chromium reports what it predicted to a real `edgeport serve`,
and the server's drift endpoint sees the one feature the page's rows shifted."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest

from conftest import ServerProcess, need, wait_for_browser_runtime

pytestmark = [pytest.mark.browser]
SHIFTED = "sepal width (cm)"


@pytest.fixture(autouse=True)
def chromium_available():
    need(shutil.which("chromium") is not None, "chromium is not on PATH (apt-get install -y chromium)")


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    from edgeport.runtimes.browser import PageLog, launch

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = launch(pw, profile)
        page = context.new_page()
        page.log = PageLog()
        page.log.attach(page)
        page.set_default_timeout(30_000)
        yield page
        context.close()


# the demo's own form and button, row after row: each value set by field name, then Predict, then its answer
DRIVE = """async (rows) => {
  const button = document.getElementById('predict');
  const form = document.getElementById('form');
  for (const row of rows) {
    for (const [name, value] of Object.entries(row)) form.elements.namedItem(name).value = String(value);
    button.click();
    while (button.disabled) await new Promise((resolve) => setTimeout(resolve, 2));
  }
}"""


def test_browser_telemetry_shows_a_shifted_feature_in_the_servers_drift(page, example_bundles):
    import httpx

    bundle = next(m for m in example_bundles.models if m.name == "iris").export.bundle
    columns = bundle.manifest.inputs[0].columns  # iris is one matrix input with named columns
    rows = [dict(zip(columns, row)) for row in bundle.golden()["rows"]]  # the export sample: training's own distribution
    assert len(rows) >= 50
    for row in rows:
        row[SHIFTED] = row[SHIFTED] + 5.0  # past every training bin
    server = ServerProcess(example_bundles.bundles_dir)
    try:
        drift_url = f"{server.url}/v2/models/iris/versions/{bundle.manifest.version}/drift"
        assert httpx.get(drift_url).json()["sources"] == {"server": 0, "browser": 0}
        page.goto(f"{server.url}/?model=iris&telemetryms=500")
        wait_for_browser_runtime(page)
        page.evaluate(DRIVE, rows)
        assert page.text_content("#served-by") in ("browser", "server")
        page.goto("about:blank")  # pagehide: the page sends what it has left with sendBeacon

        deadline = time.monotonic() + 20
        report = httpx.get(drift_url).json()
        while sum(report["sources"].values()) < len(rows) and time.monotonic() < deadline:
            time.sleep(0.2)
            report = httpx.get(drift_url).json()
        sources = report["sources"]
        assert sum(sources.values()) == len(rows), report  # every row counted once: the browser's or the server's
        assert sources["browser"] >= len(rows) * 0.8, sources  # most answered in the page, and reported from there
        verdicts = {f["name"]: f["verdict"] for f in report["features"]}
        assert verdicts[SHIFTED] == "drift", report
        assert all(v == "ok" for name, v in verdicts.items() if name != SHIFTED), verdicts
        assert SHIFTED in report["drifted"]
        assert not [line for line in page.log.lines if "telemetry" in line], page.log.lines  # every report taken
    finally:
        server.stop()
    # the same rows offline: edgeport drift gives the server's verdict
    import pandas as pd
    from typer.testing import CliRunner

    from edgeport.cli import app

    data = bundle.path.parent.parent / "shifted-iris.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    offline = CliRunner().invoke(app, ["drift", str(bundle.path), "--data", str(data)])
    assert offline.exit_code == 4, offline.output
    drifted_line = next(line for line in offline.output.splitlines() if "drifted" in line.lower())
    assert SHIFTED in drifted_line and all(c not in drifted_line for c in columns if c != SHIFTED), offline.output


# 200 single-row predictions through the page's own client, with telemetry on and off, interleaved in rounds
TIMING = """async ({ manifest, server }) => {
  const { loadModel } = await import('edgeport-client');
  const row = [[5.1, 3.5, 1.4, 0.2]];
  const on = await loadModel(manifest, { fallbackUrl: '', telemetry: { url: server, flushMs: 60000 } });
  const off = await loadModel(manifest, { fallbackUrl: '' });
  const times = { on: [], off: [] };
  for (let round = 0; round < 10; round++) {
    for (const [name, model] of [['on', on], ['off', off]]) {
      for (let i = 0; i < 20; i++) {
        const started = performance.now();
        await model.predict(row);
        times[name].push(performance.now() - started);
      }
    }
  }
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
  return { on: median(times.on), off: median(times.off) };
}"""


def test_telemetry_adds_under_a_millisecond_to_a_browser_prediction(page, example_bundles):
    """The issue's bound, measured in Chromium (median of 200 predictions each way): telemetry only enqueues
    counts after predict() has its answer. The numbers go to test-artifacts/telemetry-cost.json."""
    import json

    from conftest import artifact_dir

    server = ServerProcess(example_bundles.bundles_dir)
    try:
        page.goto(f"{server.url}/?model=iris&notelemetry")
        wait_for_browser_runtime(page)
        medians = page.evaluate(TIMING, {"manifest": f"{server.url}/models/iris/manifest.json", "server": server.url})
    finally:
        server.stop()
    (artifact_dir("monitoring") / "telemetry-cost.json").write_text(json.dumps(medians))
    assert medians["on"] - medians["off"] < 1.0, medians
