"""What the server hands out: only files a manifest or site.json lists, from one consistent snapshot, with
security headers. Attacks on disk (symlinks, swaps, deletions, re-exports) don't reach users."""
from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import ServerProcess, need
from edgeport.webassets import ORT_BROWSER_FILES, ORT_DIST


@pytest.fixture(scope="module", autouse=True)
def site_cache(tmp_path_factory):
    """The servers started here keep their demo sites in a cache of this module's own, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPORT_CACHE", str(tmp_path_factory.mktemp("edgeport-cache")))
        yield

SECRET = b"root:x:0:0:the secret outside the bundle\n"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


def app_for(bundles, site=None):
    from edgeport.server.app import create_app
    from edgeport.server.repository import Repository

    return TestClient(create_app(Repository(bundles), site_dir=site))


def test_a_symlinked_variant_beside_a_bundle_file_is_never_served(iris_bundle, secret):
    (iris_bundle.path / "model.onnx.gz").symlink_to(secret)
    (iris_bundle.path / "model.onnx.br").symlink_to(secret)
    client = app_for(iris_bundle.path)
    response = client.get("/bundles/iris/1/model.onnx", headers={"accept-encoding": "br, gzip"})
    assert response.status_code == 200 and SECRET not in response.content
    assert response.content == (iris_bundle.path / "model.onnx").read_bytes()
    assert "content-encoding" not in response.headers
    assert client.get("/bundles/iris/1/model.onnx.gz").status_code == 404


def test_a_site_serves_only_the_variants_its_builder_recorded(iris_bundle, secret, tmp_path):
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    from edgeport.errors import BundleError
    from edgeport.site import build_site

    site = build_site([iris_bundle.path], tmp_path / "site").path
    record = json.loads((site / "site.json").read_text())["files"]
    wasm = _site_file(site, "ort-wasm-simd-threaded.wasm")
    assert record[wasm]["sha256"] == hashlib.sha256((site / wasm).read_bytes()).hexdigest()
    assert set(record[wasm]["variants"]) == {"br", "gz"}

    client = app_for(iris_bundle.path, site)
    response = client.get(f"/{wasm}", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip" and response.content == (site / wasm).read_bytes()

    (site / "index.html.gz").symlink_to(secret)  # not recorded: never served
    response = app_for(iris_bundle.path, site).get("/", headers={"accept-encoding": "gzip"})
    assert response.status_code == 200 and SECRET not in response.content and "content-encoding" not in response.headers

    (site / f"{wasm}.gz").unlink()
    (site / f"{wasm}.gz").symlink_to(secret)  # recorded, but swapped for a symlink: the server refuses to start
    with pytest.raises(BundleError, match="symlink"):
        app_for(iris_bundle.path, site)


def _site_file(site, name):
    """The path of the one file called name in the site (its directory is named by a hash)."""
    [path] = [p for p in site.rglob(name) if p.is_file()]
    return path.relative_to(site).as_posix()


def test_hashed_files_are_cached_for_good_and_the_entry_points_revalidated(iris_bundle, tmp_path):
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    from edgeport.site import build_site

    site = build_site([iris_bundle.path], tmp_path / "site", precompress=False).path
    record = json.loads((site / "site.json").read_text())["files"]
    client = app_for(iris_bundle.path, site)
    immutable = sorted(path for path, entry in record.items() if entry.get("immutable"))
    assert _site_file(site, "ort-wasm-simd-threaded.wasm") in immutable and _site_file(site, "app.js") in immutable
    for path in immutable:
        assert client.get(f"/{path}").headers["cache-control"] == "public, max-age=31536000, immutable", path
    for path in ("/", "/index.html", "/site.json", "/models/iris/manifest.json", "/models/iris/model.onnx"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache", path
        again = client.get(path, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", path  # revalidated: nothing sent twice
    # a site edgeport didn't build has no record of what is hashed: everything is revalidated
    foreign = tmp_path / "foreign"
    shutil.copytree(site, foreign)
    (foreign / "site.json").write_text(json.dumps({"models": []}))
    assert app_for(iris_bundle.path, foreign).get(f"/{immutable[0]}").headers["cache-control"] == "no-cache"


def test_a_foreign_site_gets_no_symlinked_variants(iris_bundle, secret, tmp_path):
    site = tmp_path / "plain-site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello</h1>")
    (site / "index.html.gz").symlink_to(secret)
    (site / "leak.txt").symlink_to(secret)
    client = app_for(iris_bundle.path, site)
    response = client.get("/", headers={"accept-encoding": "gzip"})
    assert response.text == "<h1>hello</h1>" and "content-encoding" not in response.headers
    assert client.get("/leak.txt").status_code == 404


def _onnx_etag_and_body(http, url):
    response = http.get(f"{url}/bundles/iris/1/model.onnx")
    assert response.status_code == 200
    return response.headers["etag"].strip('"'), response.content


def test_after_a_reexport_the_server_keeps_one_consistent_version(iris_bundle, tmp_path):
    """The model it answers with, the files it hands out and their ETags all come from the version it started with."""
    import pandas as pd
    from sklearn.tree import DecisionTreeClassifier

    from conftest import iris_frame, save_model
    from edgeport.export import export_model

    X, y = iris_frame()
    rows = X.head(5).to_numpy().tolist()
    body = {"inputs": [{"name": "input", "shape": [5, 4], "datatype": "FP64", "data": [v for r in rows for v in r]}]}
    server = ServerProcess(iris_bundle.path)
    try:
        with httpx.Client(timeout=30) as http:
            before = http.post(f"{server.url}/v2/models/iris/infer", json=body).json()["outputs"]
            etag, served = _onnx_etag_and_body(http, server.url)
            assert hashlib.sha256(served).hexdigest() == etag

            # a different model, exported over the bundle being served
            other = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)
            model_path, sample = save_model(other, tmp_path, "stump", pd.DataFrame(X))
            export_model(model_path, iris_bundle.path, sample=sample, name="iris", force=True)
            assert (iris_bundle.path / "model.onnx").read_bytes() != served

            etag_after, served_after = _onnx_etag_and_body(http, server.url)
            assert hashlib.sha256(served_after).hexdigest() == etag_after == etag, "files and ETags disagree"
            manifest = http.get(f"{server.url}/bundles/iris/1/manifest.json").json()
            assert {f["path"]: f["sha256"] for f in manifest["files"]}["model.onnx"] == etag
            after = http.post(f"{server.url}/v2/models/iris/infer", json=body).json()["outputs"]
            assert after == before, "the server switched models without a restart"
    finally:
        server.stop()


def test_files_that_vanish_or_change_on_disk_are_served_whole_from_the_snapshot(iris_bundle, tmp_path):
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    from edgeport.site import build_site

    site = build_site([iris_bundle.path], tmp_path / "site").path
    model = (iris_bundle.path / "model.onnx").read_bytes()
    app = _site_file(site, "app.js")
    wasm = _site_file(site, "ort-wasm-simd-threaded.wasm")
    app_js = (site / app).read_bytes()
    client = app_for(iris_bundle.path, site)
    (iris_bundle.path / "model.onnx").unlink()
    (site / app).write_bytes(app_js[: len(app_js) // 2])  # truncated while being served
    shutil.rmtree(site / "vendor")
    assert client.get("/bundles/iris/1/model.onnx").content == model
    assert client.get(f"/{app}").content == app_js
    response = client.get(f"/{wasm}")
    assert response.status_code == 200 and response.content[:4] == b"\0asm"


def test_security_headers(iris_bundle, tmp_path):
    need((ORT_DIST / ORT_BROWSER_FILES[0]).is_file(), "web_demo/node_modules is missing (run make setup)")
    from edgeport.site import build_site

    site = build_site([iris_bundle.path], tmp_path / "site").path
    client = app_for(iris_bundle.path, site)
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    meta = page.text.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    assert csp.startswith(meta), "the header is the page's own policy plus what only a header can say"
    for path in ("/v2/health/ready", "/bundles/iris/1/model.onnx", "/metrics", "/nope"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff", path
    headers_file = (site / "_headers").read_text()
    assert "frame-ancestors 'none'" in headers_file and "X-Content-Type-Options: nosniff" in headers_file


def test_a_hidden_staging_version_is_not_served_beside_the_real_one(iris_bundle):
    staged = iris_bundle.path.with_name(".bundle.staging-4242-xyz")
    shutil.copytree(iris_bundle.path, staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    (staged / "manifest.json").write_text(json.dumps({**manifest, "version": "2"}))
    client = app_for(iris_bundle.path.parent)
    assert client.get("/v2/models/iris").json()["versions"] == ["1"]
    assert client.get("/v2/models/iris/versions/2").status_code == 404
    np.testing.assert_equal(client.get("/v2/health/ready").status_code, 200)
