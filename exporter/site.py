"""Building the static demo site: client-side inference that works on any static host.

    site/
      index.html            the page, with a Content-Security-Policy and an import map
      app.js, app.css       the page script and style (web_demo/demo/)
      client/*.js           the JS client (edgeport-client; its ort.js names the vendored runtime)
      vendor/ort/...        only the runtime files the bundles need (onnxruntime-web's WASM-only build)
      models/NAME/...       each bundle, verified against its manifest before it is copied
      site.json             the models on the page, the fallback URL, the response headers, and every
                            file with its size and sha256 (and those of its .gz/.br variants)
      _headers              the same response headers for static hosts that read this file (Netlify,
                            Cloudflare Pages); other hosts should be configured to send them
      *.gz, *.br            precompressed copies of the big files (edgeport demo; .br needs the brotli
                            module, from the browser extra)

No CDN: everything the page loads comes from the site itself (and the
fallback server, if one is set). A server (edgeport serve, or any other)
should serve a .gz/.br variant only when site.json lists it with its hash.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from .bundle import MANIFEST, Bundle, read_bundle, require_verified
from .publish import publish, staging_dir
from .errors import BundleError, RuntimeUnavailableError
from .webassets import (CLIENT_DIR, ORT_BROWSER_FILES, ORT_DIST, TFJS_BROWSER_FILES, TFJS_DIST, WEB_DEMO, ort_module,
                        require_js_packages)
from .progress import Progress

DEMO_DIR = WEB_DEMO / "demo"
SITE_JSON = "site.json"
HEADERS_FILE = "_headers"
COMPRESS_MIN_BYTES = 10_000
COMPRESS_SUFFIXES = (".js", ".mjs", ".wasm", ".onnx", ".json", ".css", ".html", ".bin")



@dataclass(frozen=True)
class SiteResult:
    path: Path
    models: tuple[str, ...]
    bytes_raw: int
    bytes_gzip: int


def build_site(bundle_paths: Sequence[str | Path], out: str | Path, *, fallback_url: str | None = None,
               force: bool = False, allow_unverified: bool = False, progress: Progress | None = None,
               precompress: bool = True) -> SiteResult:
    """Write the demo site for `bundle_paths` to `out`.

    fallback_url: None for no server fallback on a static host (served by `edgeport serve --site`, the page
    falls back to that server: it marks site.json with an Edgeport-Fallback header), "" for the server that
    serves the site (same origin, whoever it is), or an absolute http(s) URL of an OIP v2 server. A bundle whose parity check failed or never finished
    is refused unless allow_unverified. precompress writes .gz (and, with brotli installed, .br) copies of the
    big files: seconds of work, worth it for a site published once, not for one a server builds for itself.
    """
    progress = progress or (lambda _msg: None)
    require_js_packages()
    if fallback_url:
        parts = urlsplit(fallback_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BundleError(f"--fallback-url {fallback_url!r} is not an http(s) URL")
    bundles = [read_bundle(p) for p in bundle_paths]
    if not bundles:
        raise BundleError("no bundles to put on the site")
    if not allow_unverified:
        for bundle in bundles:
            require_verified(bundle)
    names = [b.name for b in bundles]
    if len(set(names)) != len(names):
        raise BundleError(f"two bundles share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                          "a site shows one version of each model")
    out = Path(out)
    if out.is_dir() and (out / SITE_JSON).is_file():
        force = True  # rebuilding a site we made is safe
    staged = staging_dir(out, force, what="site")
    try:
        progress(f"building the demo site for {', '.join(names)}")
        for item in DEMO_DIR.iterdir():
            if item.is_file() and item.name != "index.html":
                shutil.copy2(item, staged / item.name)
        _copy_client(staged / "client")
        formats = {b.manifest.format for b in bundles}
        _copy_vendor(staged, formats)
        for bundle in bundles:
            _copy_bundle(bundle, staged / "models" / bundle.name)
        imports = import_map(formats)
        csp = content_security_policy(fallback_url, [imports])
        headers = response_headers(csp)
        (staged / "index.html").write_text(_index_html(imports, csp))
        (staged / HEADERS_FILE).write_text(_netlify_headers(headers))
        raw, gz = _precompress(staged, progress) if precompress else (_total_bytes(staged),) * 2
        site = {
            "fallback_url": fallback_url,
            "models": [{"name": b.name, "version": b.version, "task": b.manifest.task, "format": b.manifest.format,
                        "manifest": f"models/{b.name}/{MANIFEST}", "description": ""}
                       for b in bundles],
            "headers": headers,
            "files": _file_record(staged),
        }
        (staged / SITE_JSON).write_text(json.dumps(site, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish(staged, out)
    return SiteResult(out, tuple(names), raw, gz)


def _copy_client(target: Path) -> None:
    """The client's modules, with ort.js naming the vendored onnxruntime-web (a worker has no import map)."""
    target.mkdir()
    for module in sorted(CLIENT_DIR.glob("*.js")):
        shutil.copy2(module, target / module.name)
    (target / "ort.js").write_bytes(ort_module(f"../vendor/ort/{ORT_BROWSER_FILES[0]}"))


def _copy_vendor(site: Path, formats: set[str]) -> None:
    if "onnx" in formats:
        (site / "vendor" / "ort").mkdir(parents=True)
        for name in ORT_BROWSER_FILES:
            shutil.copy2(ORT_DIST / name, site / "vendor" / "ort" / name)
    if "tfjs-graph" in formats:
        if not (TFJS_DIST / TFJS_BROWSER_FILES[0]).is_file():
            raise RuntimeUnavailableError("@tensorflow/tfjs is not installed in web_demo: run `make setup`")
        (site / "vendor" / "tfjs").mkdir(parents=True)
        for name in TFJS_BROWSER_FILES:
            shutil.copy2(TFJS_DIST / name, site / "vendor" / "tfjs" / name)


def _copy_bundle(bundle: Bundle, target: Path) -> None:
    target.mkdir(parents=True)
    shutil.copy2(bundle.path / MANIFEST, target / MANIFEST)
    for entry in bundle.manifest.files:
        destination = target / entry.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.path / entry.path, destination)


def import_map(formats: set[str]) -> str:
    imports = {}  # onnxruntime-web is named by URL in client/ort.js
    if "tfjs-graph" in formats:
        imports["@tensorflow/tfjs"] = "./vendor/tfjs/tf.fesm.min.js"
    return json.dumps({"imports": imports})


def content_security_policy(fallback_url: str | None, inline_scripts: Sequence[str]) -> str:
    connect = ["'self'"]
    if fallback_url:
        parts = urlsplit(fallback_url)
        connect.append(f"{parts.scheme}://{parts.netloc}")
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline_scripts)
    # wasm-unsafe-eval lets WebAssembly compile without allowing JS eval
    return (f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval' {hashes}; connect-src {' '.join(connect)}; "
            "style-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
            "form-action 'none'")


def response_headers(csp: str) -> dict[str, str]:
    """The headers every response of the site should carry, whoever serves it.

    A <meta> CSP can't say frame-ancestors (clickjacking), so the header adds it.
    """
    return {"Content-Security-Policy": f"{csp}; frame-ancestors 'none'", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cross-Origin-Opener-Policy": "same-origin"}


def _index_html(imports: str, csp: str) -> str:
    template = (DEMO_DIR / "index.html").read_text()
    return template.replace("{{IMPORT_MAP}}", imports).replace("{{CSP}}", csp)


def _netlify_headers(headers: dict[str, str]) -> str:
    return "/*\n" + "".join(f"  {key}: {value}\n" for key, value in headers.items())


def _file_record(site: Path) -> dict[str, dict]:
    """Every file of the site with its size and sha256, and its precompressed variants under "variants"."""
    record: dict[str, dict] = {}
    for path in sorted(p for p in site.rglob("*") if p.is_file() and not p.name.endswith((".gz", ".br"))):
        entry = _hash_entry(path)
        variants = {suffix: _hash_entry(path.with_name(f"{path.name}.{suffix}")) for suffix in ("br", "gz")
                    if path.with_name(f"{path.name}.{suffix}").is_file()}
        if variants:
            entry["variants"] = variants
        record[path.relative_to(site).as_posix()] = entry
    return record


def _hash_entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _total_bytes(site: Path) -> int:
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def _precompress(site: Path, progress: Progress) -> tuple[int, int]:
    try:
        import brotli
    except ImportError:
        brotli = None
        progress("precompressing the big files (.gz only: brotli is not installed; for .br too, "
                 "pip install -e '.[browser]')")
    else:
        progress("precompressing the big files (.gz, .br)")
    raw = gz = 0
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        data = path.read_bytes()
        raw += len(data)
        if len(data) < COMPRESS_MIN_BYTES or path.suffix not in COMPRESS_SUFFIXES:
            gz += len(data)
            continue
        packed = gzip.compress(data, 9, mtime=0)
        gz += len(packed)
        path.with_name(path.name + ".gz").write_bytes(packed)
        # quality 9: within a few % of 11 for wasm, and seconds instead of a minute
        if brotli is not None:
            path.with_name(path.name + ".br").write_bytes(brotli.compress(data, quality=9))
    return raw, gz

