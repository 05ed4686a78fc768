"""Building the static demo site: client-side inference that works on any static host.

    site/
      index.html            the page: a Content-Security-Policy, an import map, and preloads for what the
                            page will fetch anyway (client modules, the runtime, the default model)
      page-HASH/            the page script and style (web_demo/demo/app.js, app.css)
      client-HASH/*.js      the JS client (edgeport-client; its ort.js names the vendored runtime)
      vendor/ort-HASH/...   only the runtime files the bundles need (onnxruntime-web's WASM-only build)
      models/NAME/...       each bundle, verified against its manifest before it is copied
      site.json             the models on the page, the fallback URL, the response headers, and every
                            file with its size and sha256 (and those of its .gz/.br variants)
      _headers              the same response headers for static hosts that read this file (Netlify,
                            Cloudflare Pages); other hosts should be configured to send them
      *.gz, *.br            precompressed copies of the big files (edgeport demo; .br needs the brotli
                            module, from the browser extra)

Caching: HASH is the first 12 hex digits of a sha256 over the directory's files, so a directory's name
changes whenever its content does; everything in one is served IMMUTABLE (site.json marks those files
"immutable", _headers says so for static hosts). index.html, site.json and the bundles keep stable names
(a bundle's manifest is its public URL) and are served no-cache: revalidated, a 304 when unchanged.

No CDN: everything the page loads comes from the site itself (and the
fallback server, if one is set). A server (edgeport serve, or any other)
should serve a .gz/.br variant only when site.json lists it with its hash.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from .bundle import GOLDEN, MANIFEST, Bundle, read_bundle, require_verified
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
IMMUTABLE = "public, max-age=31536000, immutable"  # for files whose URL names their content
REVALIDATE = "no-cache"
HASH_DIGITS = 12


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
        formats = {b.manifest.format for b in bundles}
        vendor = _copy_vendor(staged, formats)
        client = _write_hashed(staged, "client", _client_files(vendor["ort"]))
        page = _write_hashed(staged, "page", {item.name: item.read_bytes() for item in sorted(DEMO_DIR.iterdir())
                                               if item.is_file() and item.name != "index.html"})
        for bundle in bundles:
            _copy_bundle(bundle, staged / "models" / bundle.name)
        imports = import_map(formats, client, vendor)
        csp = content_security_policy(fallback_url, [imports])
        headers = response_headers(csp)
        hashed = [client, page, *(vendor[f] for f in ("ort", "tfjs") if (staged / vendor[f]).is_dir())]
        preloads = _preloads(staged, client, vendor, bundles[0])
        (staged / "index.html").write_text(_index_html(imports, csp, page, preloads))
        (staged / HEADERS_FILE).write_text(_netlify_headers(headers, hashed))
        raw, gz = _precompress(staged, progress) if precompress else (_total_bytes(staged),) * 2
        site = {
            "fallback_url": fallback_url,
            "models": [{"name": b.name, "version": b.version, "task": b.manifest.task, "format": b.manifest.format,
                        "manifest": f"models/{b.name}/{MANIFEST}", "description": ""}
                       for b in bundles],
            "headers": headers,
            "files": _file_record(staged, hashed),
        }
        (staged / SITE_JSON).write_text(json.dumps(site, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish(staged, out)
    return SiteResult(out, tuple(names), raw, gz)


def hashed_name(base: str, files: dict[str, bytes]) -> str:
    """base-HASH: HASH from the files' names and contents, so the name changes whenever a file does."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return f"{base}-{digest.hexdigest()[:HASH_DIGITS]}"


def _write_hashed(site: Path, base: str, files: dict[str, bytes]) -> str:
    """Write files into site/base-HASH/; returns that directory's path relative to site."""
    relative = hashed_name(base, files)
    (site / relative).mkdir(parents=True)
    for name, data in files.items():
        (site / relative / name).write_bytes(data)
    return relative


def _client_files(ort_dir: str) -> dict[str, bytes]:
    """The client's modules, with ort.js naming the vendored onnxruntime-web (a worker has no import map).
    client-HASH/ and vendor/ sit side by side at the site's root, so ort.js names it by a relative URL."""
    files = {module.name: module.read_bytes() for module in sorted(CLIENT_DIR.glob("*.js"))}
    files["ort.js"] = ort_module(f"../{ort_dir}/{ORT_BROWSER_FILES[0]}")
    return files


def _copy_vendor(site: Path, formats: set[str]) -> dict[str, str]:
    """The runtime files the bundles need, each runtime in vendor/NAME-HASH/; returns those directories by
    runtime (named even where not copied: the client's ort.js names one in a TF.js-only site, never loaded)."""
    ort = {name: (ORT_DIST / name).read_bytes() for name in ORT_BROWSER_FILES}
    vendor = {"ort": f"vendor/{hashed_name('ort', ort)}", "tfjs": "vendor/tfjs"}
    if "onnx" in formats:
        vendor["ort"] = _write_hashed(site, "vendor/ort", ort)
    if "tfjs-graph" in formats:
        if not (TFJS_DIST / TFJS_BROWSER_FILES[0]).is_file():
            raise RuntimeUnavailableError("@tensorflow/tfjs is not installed in web_demo: run `make setup`")
        vendor["tfjs"] = _write_hashed(site, "vendor/tfjs", {name: (TFJS_DIST / name).read_bytes()
                                                             for name in TFJS_BROWSER_FILES})
    return vendor


def _copy_bundle(bundle: Bundle, target: Path) -> None:
    target.mkdir(parents=True)
    shutil.copy2(bundle.path / MANIFEST, target / MANIFEST)
    for entry in bundle.manifest.files:
        destination = target / entry.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.path / entry.path, destination)


def import_map(formats: set[str], client: str, vendor: dict[str, str]) -> str:
    """The page imports the client by its package name, as an app would; onnxruntime-web is named by URL
    in client-HASH/ort.js (workers have no import map)."""
    imports = {"edgeport-client": f"./{client}/edgeport.js", "edgeport-client/tfjs": f"./{client}/tfjs.js"}
    if "tfjs-graph" in formats:
        imports["@tensorflow/tfjs"] = f"./{vendor['tfjs']}/{TFJS_BROWSER_FILES[0]}"
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


def _preloads(site: Path, client: str, vendor: dict[str, str], default: Bundle) -> list[str]:
    """<link>s that start, with the page, what it would otherwise find one import or fetch after another:
    site.json, the page's client modules, and the default model's manifest, model file and sample rows.
    crossorigin on a preload makes its request the one fetch() makes, so fetch() is handed the preload.

    Not the ONNX runtime: it runs in the client's worker, which has a module map and a preload cache of its
    own, so a page's preload of it is never used (and warns in the console, once per file). Measured in
    Chromium on localhost, prefetching the worker's modules and wasm into the HTTP cache instead (where the
    worker found them: transferSize 0) gained nothing cold and delayed a warm page, which read the 14 MB wasm
    from the cache for nothing. The runtime's files are immutable: a warm page doesn't ask for them at all."""
    page = _module_graph(site / client, ("edgeport.js", "tfjs.js"))
    links = [f'<link rel="modulepreload" href="./{client}/{name}">' for name in page]
    if default.manifest.format == "tfjs-graph":  # TF.js runs on the page: its module is the page's to preload
        links.append(f'<link rel="modulepreload" href="./{vendor["tfjs"]}/{TFJS_BROWSER_FILES[0]}">')
    # (site.json is written last: it lists every file, this page included)
    data = [f"models/{default.name}/{name}" for name in (MANIFEST, default.manifest.model_file, GOLDEN)]
    links += [f'<link rel="preload" as="fetch" crossorigin href="./{path}">'
              for path in [SITE_JSON, *(p for p in data if (site / p).is_file())]]
    return links


_STATIC_IMPORT = re.compile(r"""^(?:import|export)\b[^'"]*?['"](\./[\w.-]+\.js)['"]""", re.M)


def _module_graph(directory: Path, entries: Sequence[str]) -> list[str]:
    """The modules of `directory` that `entries` import statically (relative imports), entries first."""
    found: list[str] = []
    pending = list(entries)
    while pending:
        name = pending.pop(0)
        if name in found or not (directory / name).is_file():
            continue
        found.append(name)
        pending += [m[2:] for m in _STATIC_IMPORT.findall((directory / name).read_text())]
    return found


def _index_html(imports: str, csp: str, page: str, preloads: Sequence[str]) -> str:
    template = (DEMO_DIR / "index.html").read_text()
    return (template.replace("{{IMPORT_MAP}}", imports).replace("{{CSP}}", csp).replace("{{PAGE}}", page)
            .replace("{{PRELOADS}}", "\n  ".join(preloads)))


def _netlify_headers(headers: dict[str, str], immutable: Sequence[str]) -> str:
    """Every file gets `headers`; the content-hashed directories are cached for good, the rest revalidated.
    A path matching two rules gets both rules' headers, so no header is set by two rules."""
    rules = ["/*\n" + "".join(f"  {key}: {value}\n" for key, value in headers.items())]
    rules += [f"/{directory}/*\n  Cache-Control: {IMMUTABLE}\n" for directory in immutable]
    rules += [f"{path}\n  Cache-Control: {REVALIDATE}\n" for path in ("/", "/index.html", f"/{SITE_JSON}", "/models/*")]
    return "".join(rules)


def _file_record(site: Path, immutable: Sequence[str]) -> dict[str, dict]:
    """Every file of the site with its size and sha256, its precompressed variants under "variants", and
    "immutable": true for files in a content-hashed directory (a server may cache those for good)."""
    record: dict[str, dict] = {}
    for path in sorted(p for p in site.rglob("*") if p.is_file() and not p.name.endswith((".gz", ".br"))):
        entry = _hash_entry(path)
        relative = path.relative_to(site).as_posix()
        if any(relative.startswith(f"{directory}/") for directory in immutable):
            entry["immutable"] = True
        variants = {suffix: _hash_entry(path.with_name(f"{path.name}.{suffix}")) for suffix in ("br", "gz")
                    if path.with_name(f"{path.name}.{suffix}").is_file()}
        if variants:
            entry["variants"] = variants
        record[relative] = entry
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

