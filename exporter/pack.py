"""Packing a bundle as an npm package: one model, typed, loaded through the JS client.

    pkg/
      package.json   the model as a package: ESM, edgeport-client as its one peer dependency
      index.js       the manifest as an object literal, and load(): loadModel(manifest, {files})
      index.d.ts     Row, Label and Prediction generated from the manifest; predict(rows: Row[])
      README.md      how to install and use it
      bundle/        the bundle's files, verified against its manifest as they are copied

index.js names every file the client fetches with a literal `new URL('./bundle/...', import.meta.url)`:
bundlers (Vite, webpack) emit each such file as an asset and rewrite the URL, and in Node or a plain
static server it resolves beside index.js. The client fetches the manifest's model_file and, for a tfjs
graph model, the weight shards model.json lists; golden.json, parity.json and a tfjs bundle's ONNX twin
for the fallback server stay in bundle/ for whoever wants them, unreferenced.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .bundle import MANIFEST, Bundle, InputSpec, Manifest, check_relative, read_bundle, read_files, require_verified
from .errors import BundleError
from .progress import Progress, quiet
from .publish import publish, staging_dir
from .webassets import CLIENT_DIR, WEB_DEMO

CLIENT_PACKAGE = "edgeport-client"
CLIENT_RANGE = "^0.1.0"
RUNTIME_PACKAGE = {"onnx": "onnxruntime-web", "tfjs-graph": "@tensorflow/tfjs"}
# npm's rules for a new package name: lowercase, URL-safe, no leading . or _, at most 214 characters
_NPM_NAME = re.compile(r"^(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                     r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
# a tuple type past this many values helps nobody read an error message; a plain array type stands in
MAX_TUPLE = 64


@dataclass(frozen=True)
class PackResult:
    path: Path
    name: str  # the npm package name
    version: str  # its semver
    assets: tuple[str, ...]  # the bundle files index.js references (what a bundler emits)
    bytes: int  # every file in the package


def pack(bundle_dir: str | Path, out_dir: str | Path, *, name: str | None = None, version: str | None = None,
         force: bool = False, allow_unverified: bool = False, progress: Progress | None = None) -> PackResult:
    """Write `bundle_dir` as an npm package to `out_dir`, atomically (see publish.py; `force` as there).

    name: the npm package name (default: the model's name, made a valid one). version: its semver (default: the
    bundle's version, "3" becoming "3.0.0"). A bundle whose parity check failed or never finished is refused
    unless allow_unverified; every file is checked against its sha256 before it is copied.
    """
    progress = progress or quiet
    bundle = read_bundle(bundle_dir, verify=False)  # read_files below reads and verifies each file once
    if not allow_unverified:
        require_verified(bundle)
    manifest = bundle.manifest
    name = package_name(manifest.name) if name is None else _checked_name(name)
    version = package_version(version if version is not None else manifest.version, given=version is not None)
    out = Path(out_dir)
    if out.resolve().is_relative_to(bundle.path.resolve()):
        raise BundleError(f"--out {out} is inside the bundle {bundle.path}; choose a directory outside it.")
    files = read_files(bundle)
    assets = fetched_files(manifest, files)
    progress(f"packing {manifest.name} version {manifest.version} as {name}@{version} ({len(files)} files verified)")
    staged = staging_dir(out, force, what="package")
    try:
        for path, data in files.items():
            target = staged / "bundle" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        manifest_text = json.dumps(manifest.to_dict(), indent=2) + "\n"
        (staged / "bundle" / MANIFEST).write_text(manifest_text)
        (staged / "index.js").write_text(index_js(manifest, assets))
        (staged / "index.d.ts").write_text(index_d_ts(manifest))
        (staged / "README.md").write_text(package_readme(manifest, name, version))
        written = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        (staged / "package.json").write_text(package_json(manifest, name, version, written))
        size = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish(staged, out)
    return PackResult(out, name, version, assets, size)


def package_name(model_name: str) -> str:
    """A valid npm package name from a model's name: lowercase, runs of other characters made '-'."""
    derived = re.sub(r"[^a-z0-9._~-]+", "-", model_name.lower()).strip("-._")[:214].rstrip("-._")
    if not derived:
        raise BundleError(f"the model's name {model_name!r} makes no npm package name; give one with --name.")
    return _checked_name(derived, derived_from=model_name)


def _checked_name(name: str, derived_from: str | None = None) -> str:
    why = None
    if not _NPM_NAME.match(name) or len(name) > 214:
        why = ("npm names are lowercase letters, digits and - . _ ~, not starting with . or _, at most 214 "
               "characters, optionally under a @scope/")
    elif name in ("node_modules", "favicon.ico", CLIENT_PACKAGE):
        why = "that name is taken" if name == CLIENT_PACKAGE else "npm reserves that name"
    if why is None:
        return name
    source = f" (from the model's name {derived_from!r})" if derived_from is not None else ""
    raise BundleError(f"--name {name!r}{source} is not a valid npm package name: {why}. Give another with --name.")


def package_version(version: str, *, given: bool = False) -> str:
    """A semver from a bundle's version: "3" → "3.0.0", "1.2" → "1.2.0", "v2.1.0" as "2.1.0"; else refuse."""
    text = version.strip()
    text = text[1:] if text[:1] in ("v", "V") else text
    parts = text.split(".")
    if 1 <= len(parts) <= 3 and all(p.isascii() and p.isdigit() for p in parts):
        return ".".join(str(int(p)) for p in parts + ["0"] * (3 - len(parts)))
    if _SEMVER.match(text):
        return text
    whose = f"--version {version!r}" if given else f"the bundle's version {version!r}"
    raise BundleError(f"{whose} is not a semver (like 1.2.0) and can't be made one; give the package's version "
                      "with --version, e.g. --version 1.0.0.")


def fetched_files(manifest: Manifest, files: dict[str, bytes]) -> tuple[str, ...]:
    """The bundle files the JS client fetches: the model file and, for a tfjs graph model, its weight shards."""
    fetched = [manifest.model_file]
    if manifest.format == "tfjs-graph":
        try:
            model_json = json.loads(files[manifest.model_file])
            shards = [shard for group in model_json.get("weightsManifest") or [] for shard in group["paths"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BundleError(f"{manifest.model_file} in the bundle is not a TF.js graph model's model.json "
                              f"({exc}); re-export the bundle") from exc
        folder = manifest.model_file.rpartition("/")[0]
        for shard in shards:
            path = f"{folder}/{shard}" if folder else str(shard)
            check_relative(path, f"{manifest.model_file}: weightsManifest")
            if path not in files:
                raise BundleError(f"{manifest.model_file} names the weight file {path}, which the manifest doesn't "
                                  "list with its sha256; re-export the bundle")
            fetched.append(path)
    return tuple(dict.fromkeys(fetched))


def index_js(manifest: Manifest, assets: tuple[str, ...]) -> str:
    """The package's module: the manifest inline, and load() fetching each asset from beside this file."""
    urls = "".join(f"  {_js_string(path)}: new URL({_js_string('./bundle/' + path)}, import.meta.url).href,\n"
                   for path in assets)
    tfjs = manifest.format == "tfjs-graph"  # its runtime is an entry point of its own, so ONNX apps never import TF.js
    imports = f'import {{ loadModel }} from "{CLIENT_PACKAGE}";\n' + (
        f'import {{ tfjsRuntime }} from "{CLIENT_PACKAGE}/tfjs";\n' if tfjs else "")
    runtimes = " runtimes: [...(options.runtimes ?? []), tfjsRuntime]," if tfjs else ""
    return (f"// {manifest.name} version {manifest.version}, packed by edgeport: load() runs it with {CLIENT_PACKAGE}.\n"
            f"{imports}\n"
            f"export const manifest = {json.dumps(manifest.to_dict(), indent=2)};\n\n"
            "// one literal URL per file the client fetches: bundlers emit each as an asset and rewrite the URL\n"
            f"const files = {{\n{urls}}};\n\n"
            "/** Load the model: options are loadModel's; options.files overrides where a bundle file is fetched from. */\n"
            "export function load(options = {}) {\n"
            f"  return loadModel(manifest, {{ ...options,{runtimes} files: {{ ...files, ...options.files }} }});\n"
            "}\n")


def index_d_ts(manifest: Manifest) -> str:
    """The package's types: a Row keyed by the model's columns, a Prediction whose label is one of its classes."""
    row, uses_values = _row_type(manifest)
    fields, label = _prediction_fields(manifest)
    lines = [f"// Types for {manifest.name} version {manifest.version}, generated by edgeport from its manifest.",
             f"import type {{ EdgeportModel, LoadOptions, Manifest, Prediction as ClientPrediction }} from "
             f'"{CLIENT_PACKAGE}";', f'export type {{ LoadOptions, Manifest }} from "{CLIENT_PACKAGE}";', ""]
    if uses_values:
        lines += ["/** A row's values flat, or nested like the input's shape after the batch dimension. */",
                  "type Values<V> = ArrayLike<V> | readonly (V | Values<V>)[];", ""]
    lines += ["/** One row, as predict() takes it; null is a missing value where the model accepts one. */",
              f"export type Row = {row};", ""]
    if label is not None:
        lines += [f"export type Label = {label};", ""]
    replaced = " | ".join(json.dumps(f) for f in _RESULT_FIELDS)
    body = "".join(f"  {key}: {value};\n" for key, value in fields)
    lines += [f"export interface Prediction extends Omit<ClientPrediction, {replaced}> {{\n{body}}}", "",
              "export interface Model extends Omit<EdgeportModel, \"predict\"> {",
              "  predict(rows: readonly Row[]): Promise<Prediction[]>;", "}", "",
              "export declare const manifest: Manifest;",
              "/** Load the model: options are loadModel's; options.files overrides where a bundle file is fetched from. */",
              "export declare function load(options?: LoadOptions): Promise<Model>;", ""]
    return "\n".join(lines)


def package_json(manifest: Manifest, name: str, version: str, written: list[str]) -> str:
    """`written` lists the package's other files: with it, a later `pack --force` knows the directory is edgeport's."""
    data = {
        "name": name, "version": version, "description": _description(manifest), "type": "module",
        "main": "./index.js", "types": "./index.d.ts",
        "exports": {".": {"types": "./index.d.ts", "default": "./index.js"}, "./package.json": "./package.json"},
        "sideEffects": False, "files": ["index.js", "index.d.ts", "bundle/"],
        "keywords": ["edgeport", manifest.task, manifest.format],
        "peerDependencies": {CLIENT_PACKAGE: CLIENT_RANGE},
        "edgeport": {"packed_from": f"{manifest.name} version {manifest.version}", "files": written},
    }
    return json.dumps(data, indent=2) + "\n"


def package_readme(manifest: Manifest, name: str, version: str) -> str:
    tarball = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"  # what `npm pack` names it
    client = json.loads((CLIENT_DIR / "package.json").read_text())
    client_tarball = f"{client['name']}-{client['version']}.tgz"
    pins = json.loads((WEB_DEMO / "package.json").read_text())["dependencies"]
    runtime = RUNTIME_PACKAGE[manifest.format]
    return (f"# {name}\n\n{_description(manifest)}. Install the tarball `npm pack` makes here beside the client and "
            f"its runtime, then load it; `predict` takes rows typed by `Row` (index.d.ts):\n\n"
            f"```\nnpm install ./{tarball} ./{client_tarball} {runtime}@{pins[runtime]}\n```\n\n"
            f"`{client_tarball}` is what `npm pack` makes in edgeport's `web_demo/client` ({CLIENT_PACKAGE} is not on "
            f"the npm registry); {runtime} {pins[runtime]} is the version edgeport's parity check ran.\n\n"
            f"```js\nimport {{ load }} from '{name}';\nconst model = await load();  // options as edgeport-client's "
            "loadModel takes them\nconst predictions = await model.predict(rows);\n```\n")


def _description(manifest: Manifest) -> str:
    estimator = manifest.source.get("estimator") or manifest.source.get("framework") or "model"
    return f"{manifest.name} version {manifest.version}: a {manifest.task} model ({estimator}) for the browser, packed by edgeport"


def _js_string(text: str) -> str:
    # not ASCII-escaped: bundlers read a new URL() path as written, without undoing escapes
    return json.dumps(text, ensure_ascii=False)


def _literal(value: object) -> str:
    """A TypeScript literal type for a JSON scalar: strings quoted and escaped, numbers and booleans as written."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


def _union(values: tuple) -> str:
    return " | ".join(dict.fromkeys(_literal(v) for v in values))


def _value_type(spec: InputSpec) -> str:
    base = _union(spec.categories) if spec.categories else "string" if spec.dtype == "string" else "number"
    return f"{base} | null" if spec.nullable else base


def _object_type(fields: list[tuple[str, str]]) -> str:
    return "{\n" + "".join(f"  {json.dumps(key)}: {value};\n" for key, value in fields) + "}"


def _row_type(manifest: Manifest) -> tuple[str, bool]:
    """The Row type's text, and whether it uses the Values helper (flat or nested arrays)."""
    inputs, layout = manifest.inputs, manifest.layout
    if layout == "columns":
        return _object_type([(spec.key, _value_type(spec)) for spec in inputs]), False
    if layout == "tensors":
        return _object_type([(spec.name, f"Values<{_value_type(spec)}>") for spec in inputs]), True
    spec = inputs[0]
    value, inner = _value_type(spec), spec.shape[1:]
    width = len(spec.columns) if spec.columns else inner[0] if len(inner) == 1 else None
    array = f"readonly [{', '.join([value] * width)}]" if isinstance(width, int) and 0 < width <= MAX_TUPLE else None
    if spec.columns and len(inner) == 1:
        record = _object_type([(column, value) for column in spec.columns])
        return (f"{record} | {array}" if array else f"{record} | readonly ({value})[]"), False
    return (array, False) if array else (f"Values<{value}>", True)


# the result fields whose presence and type depend on the model; the rest (served_by, ...) are the client's
_RESULT_FIELDS = ("label", "probabilities", "confidence", "value", "score", "distances")


def _prediction_fields(manifest: Manifest) -> tuple[list[tuple[str, str]], str | None]:
    """The model-specific fields of a prediction (as the client's toResults fills them), and the Label type."""
    roles = {output.role: output for output in manifest.outputs}
    fields: list[tuple[str, str]] = []
    label = None
    if "label" in roles or ("probabilities" in roles and manifest.classes):
        if manifest.task == "classification" and manifest.classes:
            label = _union(manifest.classes)
        elif manifest.task == "multi-output-classification":
            label = "NonNullable<ClientPrediction['label']>"  # an array, or one value for a single target
        elif manifest.task in ("anomaly-detection", "clustering"):
            label = "number"
        else:
            label = "string | number | boolean"
        fields.append(("label", "Label"))
    if "probabilities" in roles:
        fields += [("probabilities", "number[]"), ("confidence", "number")]
    if "value" in roles:
        width = roles["value"].shape[1:]
        one = all(d == 1 for d in width)  # [n] or [n, 1]: one number per row
        fields.append(("value", "number" if one else "number[]" if all(isinstance(d, int) for d in width) else "number | number[]"))
    if "score" in roles:
        fields.append(("score", "number"))
    if "distances" in roles:
        fields.append(("distances", "number[]"))
    return fields, label
