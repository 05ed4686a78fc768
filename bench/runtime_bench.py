"""The runtimes side by side: onnxruntime (Python), onnxruntime-web under Node, and in Chromium.

For each example bundle: load (fetch + sha256 + session create), first inference, steady single-row
latency (mean of 200), a batch of 256 (median of 20); in Chromium also a cold page's time from
navigation to its first prediction and the bytes the page fetched (raw and gzipped), median of 3 cold runs.
Memory: the RSS of a fresh Python process holding the session, Node's RSS, Chromium's JS heap
(onnxruntime-web's WASM memory is not in it).
"""
from __future__ import annotations

import gzip
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request

from common import ROOT, median_ms, save, table


def python_timings(bundle) -> dict:
    import onnxruntime as ort

    from edgeport.decoding import feeds_from_rows

    rows = bundle.golden()["rows"]
    start = time.perf_counter()
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - start) * 1000
    one = feeds_from_rows(bundle.inputs, bundle.manifest.layout, rows[:1])
    batch_rows = (rows * (256 // len(rows) + 1))[:256]
    batch = feeds_from_rows(bundle.inputs, bundle.manifest.layout, batch_rows)
    start = time.perf_counter()
    session.run(None, one)
    first_ms = (time.perf_counter() - start) * 1000
    return {"load_ms": load_ms, "first_inference_ms": first_ms, "single_row_ms": median_ms(lambda: session.run(None, one)),  # median; JS reports a mean (coarse browser clock)
            "batch_256_ms": median_ms(lambda: session.run(None, batch), repeats=20), "memory_mb": _python_rss_mb(bundle)}


def _python_rss_mb(bundle) -> float:
    """RSS of a fresh Python process that loads the session and runs a batch: what a server pays per model."""
    import sys

    code = ("import sys, onnxruntime as ort; from edgeport.bundle import read_bundle; "
            "from edgeport.decoding import feeds_from_rows; b = read_bundle(sys.argv[1]); "
            "s = ort.InferenceSession(str(b.model_path), providers=['CPUExecutionProvider']); "
            "s.run(None, feeds_from_rows(b.inputs, b.manifest.layout, b.golden()['rows'])); "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(bundle.path)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return float(out.stdout.strip())


def node_timings(bundle) -> dict:
    out = subprocess.run(["node", str(ROOT / "web_demo/runner/bench.mjs"), str(bundle.path.resolve())],
                         capture_output=True, text=True, check=True, timeout=300, cwd=ROOT / "web_demo")
    timings = json.loads(out.stdout)
    timings.pop("first_prediction_since_navigation_ms")  # a page measure; under node it's process uptime
    return timings


def browser_timings(bundle, cold_runs: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    from edgeport.loopback import serve
    from edgeport.runtimes.browser import HARNESS_FILES, launch, mounts_for

    runs = []
    with serve(mounts_for(bundle.path), files=HARNESS_FILES) as base, sync_playwright() as pw:
        for _ in range(cold_runs):
            with tempfile.TemporaryDirectory() as profile:  # a fresh profile: a cold cache every time
                context = launch(pw, profile)
                page = context.new_page()
                urls = []
                page.on("requestfinished", lambda r: urls.append(r.url))
                page.goto(f"{base}/harness/bench.html", timeout=120_000)
                page.wait_for_function("() => window.__edgeport && window.__edgeport.status", timeout=120_000)
                result = page.evaluate("() => window.__edgeport")
                context.close()
            if result["status"] != "done":
                raise RuntimeError(result["error"])
            fetched = [urllib.request.urlopen(u).read() for u in dict.fromkeys(urls) if u.startswith(base)]
            result["bytes_raw"] = sum(len(b) for b in fetched)
            result["bytes_gzip"] = sum(len(gzip.compress(b, 6)) for b in fetched)
            runs.append(result)
    keys = [k for k in runs[0] if k != "status"]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main() -> str:
    from edgeport.bundle import read_bundle
    from edgeport.quickstart import run_quickstart

    with tempfile.TemporaryDirectory() as tmp:
        result = run_quickstart(tmp, runtimes=("python",))
        out, data = [], {}
        for model in result.models:
            bundle = read_bundle(model.export.bundle.path)
            if bundle.manifest.format != "onnx":
                continue  # the Keras example has its own bench (keras_bench.py)
            timings = {"python": python_timings(bundle), "node": node_timings(bundle), "browser": browser_timings(bundle)}
            data[model.name] = timings
            for runtime, t in timings.items():
                out.append([model.name, runtime, t["load_ms"], t["first_inference_ms"], t["single_row_ms"], t["batch_256_ms"],
                            t.get("first_prediction_since_navigation_ms", "-"),
                            f"{t['bytes_raw'] / 1e6:.2f}" if "bytes_raw" in t else "-",
                            f"{t['bytes_gzip'] / 1e6:.2f}" if "bytes_gzip" in t else "-", f"{t['memory_mb']:.0f}"])
    save("runtimes", data)
    return table("runtimes side by side (ms; browser: cold page, fresh profile, median of 3)",
                 ["model", "runtime", "load", "first infer", "1 row", "256 rows", "page→1st pred", "MB raw", "MB gzip",
                  "mem MB"], out)


if __name__ == "__main__":
    print(main())
