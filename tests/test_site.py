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
    assert {"index.html", "site.json", "models/iris/manifest.json", "models/iris/model.onnx"} <= files
    assert {f"{hashed(site, 'page')}/app.js", f"{hashed(site, 'page')}/app.css", f"{hashed(site, 'client')}/edgeport.js"} <= files
    ort = hashed(site, "vendor/ort")
    vendor = {f for f in files if f.startswith("vendor/") and not f.endswith((".gz", ".br"))}
    assert vendor == {f"{ort}/{name}" for name in ORT_BROWSER_FILES}  # the WASM-only build, and no TF.js
    wasm = site / ort / "ort-wasm-simd-threaded.wasm"
    assert gzip.decompress(wasm.with_name(wasm.name + ".gz").read_bytes()) == wasm.read_bytes()
    assert wasm.with_name(wasm.name + ".br").stat().st_size < wasm.stat().st_size / 3
    html = (site / "index.html").read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'self'" in csp and "'wasm-unsafe-eval'" in csp and "'unsafe-inline'" not in csp
    assert "connect-src 'self' https://api.example.com" in csp
    assert not re.search(r'(src|href)="https?://', html), "no CDN: the page loads everything from the site"
    config = json.loads((site / "site.json").read_text())
    assert config["fallback_url"] == "https://api.example.com/ml"
    assert config["models"][0]["manifest"] == "models/iris/manifest.json"


def hashed(site, base):
    """The one directory base-HASH of the site (HASH: 12 hex digits)."""
    [found] = [p for p in site.glob(f"{base}-*") if re.fullmatch(r"[0-9a-f]{12}", p.name.rsplit("-", 1)[1])]
    return found.relative_to(site).as_posix()


def _links(html):
    return re.findall(r'<link rel="([^"]+)"([^>]*) href="\./([^"]+)">', html)


def test_the_page_preloads_what_it_needs_from_the_site_itself(iris_bundle, tmp_path):
    from edgeport.site import build_site

    site = build_site([iris_bundle.path], tmp_path / "site", precompress=False).path
    html = (site / "index.html").read_text()
    links = _links(html)
    assert all((site / href).is_file() for _rel, _attrs, href in links), links
    client, ort = hashed(site, "client"), hashed(site, "vendor/ort")
    by_rel = {rel: {href for r, _a, href in links if r == rel} for rel, _a, _h in links}
    # the page's own module graph
    assert by_rel["modulepreload"] == {f"{client}/{m}" for m in ("edgeport.js", "tfjs.js", "bundle.js", "decoding.js",
                                                                 "errors.js", "onnx.js", "session.js", "telemetry.js")}
    assert set(by_rel) == {"modulepreload", "preload", "stylesheet"}  # nothing for the worker: it can't use them
    assert by_rel["preload"] == {"site.json", "models/iris/manifest.json", "models/iris/model.onnx", "models/iris/golden.json"}
    assert all("crossorigin" in attrs for rel, attrs, _h in links if rel == "preload")  # the request fetch() makes
    # the import map names the client by its package name; its ort.js names the hashed runtime directory
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html).group(1))["imports"]
    assert imports == {"edgeport-client": f"./{client}/edgeport.js", "edgeport-client/tfjs": f"./{client}/tfjs.js"}
    assert (site / client / "ort.js").read_text() == f'export * from "../{ort}/ort.wasm.min.mjs";\n'
    assert f'src="./{hashed(site, "page")}/app.js"' in html


def test_hashed_directories_change_with_their_content_and_only_they_are_immutable(iris_bundle, tmp_path, monkeypatch):
    import shutil

    import edgeport.site as site_module

    first = site_module.build_site([iris_bundle.path], tmp_path / "a", precompress=False).path
    again = site_module.build_site([iris_bundle.path], tmp_path / "b", precompress=False).path
    names = lambda s: sorted(p.relative_to(s).as_posix() for p in [*s.glob("*-*"), *s.glob("vendor/*")])  # noqa: E731
    assert names(first) == names(again)  # the same content, the same names
    client = tmp_path / "client"
    shutil.copytree(site_module.CLIENT_DIR, client)
    (client / "errors.js").write_text((client / "errors.js").read_text() + "\n// a newer client\n")
    monkeypatch.setattr(site_module, "CLIENT_DIR", client)
    changed = site_module.build_site([iris_bundle.path], tmp_path / "c", precompress=False).path
    assert hashed(changed, "client") != hashed(first, "client")
    assert hashed(changed, "page") == hashed(first, "page") and hashed(changed, "vendor/ort") == hashed(first, "vendor/ort")

    record = json.loads((first / "site.json").read_text())["files"]
    immutable = {path for path, entry in record.items() if entry.get("immutable")}
    hashed_dirs = [hashed(first, b) for b in ("client", "page", "vendor/ort")]
    assert immutable == {path for path in record if path.split("/")[0] in hashed_dirs or path.rsplit("/", 1)[0] in hashed_dirs}
    assert immutable and not {"index.html", "site.json", "models/iris/manifest.json", "models/iris/model.onnx"} & immutable
    # static hosts: the same policy in _headers, one rule per hashed directory, the entry points revalidated
    rules = dict(re.findall(r"^(\S+)\n((?:  .+\n)+)", (first / "_headers").read_text(), re.M))
    for directory in hashed_dirs:
        assert rules[f"/{directory}/*"] == "  Cache-Control: public, max-age=31536000, immutable\n"
    for path in ("/", "/index.html", "/site.json", "/models/*"):
        assert rules[path] == "  Cache-Control: no-cache\n"
    assert "Cache-Control" not in rules["/*"]  # a path matching two rules gets both: no header is said twice


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
    tfjs = hashed(site, "vendor/tfjs")
    assert (site / tfjs / "tf.fesm.min.js").is_file() and not list(site.glob("vendor/ort*"))
    html = (site / "index.html").read_text()
    assert f'"@tensorflow/tfjs": "./{tfjs}/tf.fesm.min.js"' in html
    assert f'<link rel="modulepreload" href="./{tfjs}/tf.fesm.min.js">' in html and ".wasm" not in html
    assert json.loads((site / "site.json").read_text())["fallback_url"] is None


def _variants(site):
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.name.endswith((".gz", ".br")))


def test_a_site_built_without_precompression_has_no_variants(iris_bundle, tmp_path):
    from edgeport.site import build_site

    result = build_site([iris_bundle.path], tmp_path / "site", precompress=False)
    assert _variants(result.path) == []
    assert all("variants" not in entry for entry in json.loads((result.path / "site.json").read_text())["files"].values())
    assert result.bytes_gzip == result.bytes_raw  # nothing compressed, and no claim that it was


def test_without_brotli_a_demo_site_gets_gz_variants_and_says_so(iris_bundle, tmp_path, monkeypatch):
    import sys

    from edgeport.site import build_site

    monkeypatch.setitem(sys.modules, "brotli", None)  # import brotli raises ImportError
    said = []
    site = build_site([iris_bundle.path], tmp_path / "site", progress=said.append).path
    variants = _variants(site)
    assert f"{hashed(site, 'vendor/ort')}/ort-wasm-simd-threaded.wasm.gz" in variants
    assert not [v for v in variants if v.endswith(".br")]
    assert any("brotli is not installed" in message for message in said), said


def test_the_site_cache_builds_once_per_set_of_bundles(iris_bundle, tmp_path, monkeypatch):
    import edgeport.site_cache as site_cache

    triple = (iris_bundle.name, iris_bundle.version, iris_bundle.path)
    said = []
    first = site_cache.cached_site([triple], root=tmp_path / "cache", progress=said.append)
    assert (first / "site.json").is_file() and _variants(first) == []  # serve's sites are never precompressed
    assert [p.name for p in (tmp_path / "cache" / "sites").iterdir()] == [first.name]  # no staging left behind

    def no_build(*args, **kwargs):
        raise AssertionError("a cached site was built again")

    monkeypatch.setattr(site_cache, "build_site", no_build)
    assert site_cache.cached_site([triple], root=tmp_path / "cache", progress=said.append) == first
    assert "(cached)" in said[-1]
    # another manifest is another site
    manifest = json.loads((iris_bundle.path / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00+00:00"
    (iris_bundle.path / "manifest.json").write_text(json.dumps(manifest))
    assert site_cache.site_key([triple]) != first.name


def test_a_changed_client_or_page_is_another_cached_site(iris_bundle, tmp_path, monkeypatch):
    """After a pull or an upgrade that changes the JS client, serve must not keep serving yesterday's."""
    import shutil

    import edgeport.site_cache as site_cache
    import edgeport.webassets as webassets

    client = tmp_path / "client"
    shutil.copytree(webassets.CLIENT_DIR, client)
    monkeypatch.setattr(webassets, "CLIENT_DIR", client)
    triple = (iris_bundle.name, iris_bundle.version, iris_bundle.path)
    before = site_cache.site_key([triple])
    assert site_cache.site_key([triple]) == before
    (client / "edgeport.js").write_text((client / "edgeport.js").read_text() + "\n// a newer client\n")
    assert site_cache.site_key([triple]) != before


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    from edgeport.site_cache import cache_root

    monkeypatch.setenv("EDGEPORT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("EDGEPORT_CACHE")
    assert cache_root() == tmp_path / "b" / "edgeport"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "edgeport"


def test_serve_reuses_its_cached_site_and_never_precompresses(iris_bundle, tmp_path, monkeypatch):
    import httpx

    from conftest import ServerProcess

    monkeypatch.setenv("EDGEPORT_CACHE", str(tmp_path / "cache"))
    outputs, sites = [], []
    for _ in range(2):
        server = ServerProcess(iris_bundle.path)
        try:
            assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
            outputs.append(server.output())
        finally:
            server.stop()
        sites.append({p.name: p.stat().st_ino for p in (tmp_path / "cache" / "sites").iterdir()})
    assert "(built, cached for the next start)" in outputs[0], outputs[0]
    assert "(cached)" in outputs[1] and "built" not in outputs[1], outputs[1]
    assert len(sites[0]) == 1 and sites[1] == sites[0]  # the same directory, not a rebuilt one
    site = tmp_path / "cache" / "sites" / next(iter(sites[0]))
    assert _variants(site) == [] and "precompress" not in outputs[0] + outputs[1]


def test_a_damaged_cached_site_is_built_again_not_served_or_fatal(iris_bundle, tmp_path):
    """A cached site changed after it was built fails its check; serve rebuilds it once and starts."""
    from edgeport.serving import build_app
    from edgeport.site_cache import site_key

    said = []
    build_app(iris_bundle.path, site_cache=tmp_path / "cache", progress=said.append)
    site = tmp_path / "cache" / "sites" / site_key([(iris_bundle.name, iris_bundle.version, iris_bundle.path)])
    (site / "index.html").write_text("<p>changed by someone else</p>")
    app = build_app(iris_bundle.path, site_cache=tmp_path / "cache", progress=said.append)
    assert any("failed its check" in m and "building it again" in m for m in said), said
    assert "changed by someone else" not in (site / "index.html").read_text()
    assert app is not None and [p.name for p in (tmp_path / "cache" / "sites").iterdir()] == [site.name]


def test_the_site_cache_keeps_the_most_recently_used_sites(iris_bundle, tmp_path, monkeypatch):
    import os

    import edgeport.site_cache as site_cache

    monkeypatch.setattr(site_cache, "KEEP_SITES", 2)
    sites = tmp_path / "cache" / "sites"
    sites.mkdir(parents=True)
    for age, name in enumerate(["newest", "older", "oldest"]):
        (sites / name).mkdir()
        os.utime(sites / name, (1e9 - age * 1000, 1e9 - age * 1000))
    triple = (iris_bundle.name, iris_bundle.version, iris_bundle.path)
    built = site_cache.cached_site([triple], root=tmp_path / "cache")
    assert sorted(p.name for p in sites.iterdir()) == sorted([built.name, "newest"])


def test_an_unwritable_cache_builds_a_site_for_this_run_and_leaves_nothing_behind(iris_bundle, tmp_path, monkeypatch):
    import tempfile

    from edgeport.serving import build_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # this test's own temporary directory
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache should be")
    said = []
    build_app(iris_bundle.path, site_cache=blocker, progress=said.append)
    assert any("cannot write the site cache" in m for m in said), said
    assert list((tmp_path / "tmp").iterdir()) == []  # the run's site was read into memory, then removed
