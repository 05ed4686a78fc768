"""`edgeport demo`: a static site with only what the bundles need, a CSP, no CDN, precompressed files."""
import gzip
import json
import re

import pytest
from typer.testing import CliRunner

from cli import app
from conftest import need
from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST

runner = CliRunner()


@pytest.fixture(autouse=True)
def js_packages():
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")


def test_site_for_onnx_bundles(iris_bundle, tmp_path):
    site = tmp_path / "site"
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(site), "--fallback-url", "https://api.example.com/ml"])
    assert result.exit_code == 0, result.output
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "app.css", "client/edgeport.js", "site.json", "models/iris/manifest.json",
            "models/iris/model.onnx"} <= files
    vendor = {f for f in files if f.startswith("vendor/") and not f.endswith((".gz", ".br"))}
    assert vendor == {f"vendor/ort/{name}" for name in ORT_BROWSER_FILES}  # the WASM-only build, and no TF.js
    wasm = site / "vendor/ort/ort-wasm-simd-threaded.wasm"
    assert gzip.decompress((site / "vendor/ort/ort-wasm-simd-threaded.wasm.gz").read_bytes()) == wasm.read_bytes()
    assert (site / "vendor/ort/ort-wasm-simd-threaded.wasm.br").stat().st_size < wasm.stat().st_size / 3
    html = (site / "index.html").read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'self'" in csp and "'wasm-unsafe-eval'" in csp and "'unsafe-inline'" not in csp
    assert "connect-src 'self' https://api.example.com" in csp
    assert not re.search(r'(src|href)="https?://', html), "no CDN: the page loads everything from the site"
    config = json.loads((site / "site.json").read_text())
    assert config["fallback_url"] == "https://api.example.com/ml"
    assert config["models"][0]["manifest"] == "models/iris/manifest.json"


def test_a_tampered_bundle_is_not_published(iris_bundle, tmp_path):
    (iris_bundle.path / "model.onnx").write_bytes(b"not the model")
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(tmp_path / "site")])
    assert result.exit_code == 1 and "model.onnx" in result.output
    assert not (tmp_path / "site").exists()


def test_a_bad_fallback_url_is_refused(iris_bundle, tmp_path):
    result = runner.invoke(app, ["demo", str(iris_bundle.path), "--out", str(tmp_path / "s"), "--fallback-url", "ftp://x"])
    assert result.exit_code == 1 and "--fallback-url" in result.output


def test_site_for_a_tfjs_bundle_ships_tfjs(example_bundles, tmp_path):
    digits = next((m for m in example_bundles.models if m.name == "digits-cnn"), None)
    need(digits is not None, "the tensorflow extra is not installed, so there is no tfjs example bundle")
    site = tmp_path / "site"
    assert runner.invoke(app, ["demo", str(digits.export.bundle.path), "--out", str(site)]).exit_code == 0
    assert (site / "vendor/tfjs/tf.fesm.min.js").is_file() and not (site / "vendor/ort").exists()
    assert '"@tensorflow/tfjs": "./vendor/tfjs/tf.fesm.min.js"' in (site / "index.html").read_text()
    assert json.loads((site / "site.json").read_text())["fallback_url"] is None
