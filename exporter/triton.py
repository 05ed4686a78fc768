"""A bundle as a Triton model repository entry, for Triton's onnxruntime backend (and KServe, which runs Triton).

    REPO/
      NAME/
        config.pbtxt   platform onnxruntime_onnx; every input and output with its name, type and dims
        1/model.onnx   the bundle's server_model_file, verified against its sha256 first

The config comes from the manifest, the one contract: names, data types and dims (max_batch_size 0, so a
batch dimension is spelled -1 like any other free one). The graph's own input and output names are checked
against the manifest before anything is written: a config Triton would refuse at load is refused here.
REPO/NAME is written atomically (publish.py), so a Triton polling the repository never sees half of it.
The JS client's fallback can then point at Triton or KServe: the same OIP v2 protocol, the same names. Triton's
versions are whole numbers, so a bundle versioned 3 is Triton's version 3 (a client pinned to its version finds
it); any other version string is Triton's version 1, for a client exported with --fallback-version default.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .bundle import Manifest, read_bundle, require_verified, verify_file
from .errors import BundleError
from .progress import Progress, quiet
from .publish import publish, staging_dir

CONFIG = "config.pbtxt"
DEFAULT_VERSION = "1"
MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
DATA_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
              "string": "TYPE_STRING"}


@dataclass(frozen=True)
class TritonResult:
    path: Path  # REPO/NAME
    name: str
    version: str  # the bundle's version
    triton_version: str  # its version directory: the bundle's version where that is a whole number, else 1
    config: str  # config.pbtxt's text


def write_triton_repository(bundle_dir: str | Path, repository: str | Path, *, allow_unverified: bool = False,
                            progress: Progress | None = None) -> TritonResult:
    """Write `bundle_dir` as REPOSITORY/NAME (config.pbtxt and VERSION/model.onnx) for Triton's onnxruntime backend.

    The server model file is verified against its sha256, and its graph's input and output names against the
    manifest; a bundle whose parity check failed or never finished is refused unless allow_unverified. An
    existing REPOSITORY/NAME is never replaced: remove it first (Triton unloads a model whose directory goes).
    """
    progress = progress or quiet
    bundle = read_bundle(bundle_dir, verify=False)  # only the server model is read, verified below
    if not allow_unverified:
        require_verified(bundle)
    manifest = bundle.manifest
    entry = manifest.file(manifest.server_model_file)
    model = verify_file(bundle.path.resolve(), entry)  # read_bundle made sure the manifest lists it
    check_graph_names(manifest, model)
    config = model_config(manifest)
    out = Path(repository) / _directory_name(manifest.name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists; edgeport triton never replaces a model a Triton may be serving. "
                          f"Remove it first, or give another --out.")
    version = triton_version(manifest.version)
    progress(f"writing {manifest.name} version {manifest.version} to {out} for Triton ({PLATFORM}, version {version})")
    staged = staging_dir(out, force=False, what="Triton model")
    try:
        (staged / CONFIG).write_text(config)
        (staged / version).mkdir()
        (staged / version / MODEL_FILE).write_bytes(model)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    publish(staged, out)
    return TritonResult(out, manifest.name, manifest.version, version, config)


def triton_version(version: str) -> str:
    """Triton's version directory for a bundle version: itself if a whole number above 0, else 1."""
    return str(int(version)) if version.isascii() and version.isdigit() and int(version) > 0 else DEFAULT_VERSION


def model_config(manifest: Manifest) -> str:
    """config.pbtxt for `manifest`: Triton's ModelConfig in protobuf text format."""
    def tensor(spec) -> str:
        if spec.dtype not in DATA_TYPES:
            raise BundleError(f"{manifest.name}'s {spec.name!r} is {spec.dtype}, which has no Triton data type here "
                              f"(supported: {', '.join(DATA_TYPES)})")
        dims = ", ".join(str(d) if isinstance(d, int) and d >= 0 else "-1" for d in spec.shape)
        return (f"  {{\n    name: {_quoted(spec.name)}\n    data_type: {DATA_TYPES[spec.dtype]}\n"
                f"    dims: [ {dims} ]\n  }}")

    joined = ",\n".join
    return (f"# written by edgeport triton from {_comment(manifest.name)} version {_comment(manifest.version)}; "
            "its manifest.json is the contract\n"
            f"name: {_quoted(manifest.name)}\nplatform: {_quoted(PLATFORM)}\n"
            "max_batch_size: 0  # the batch dimension is in dims, as -1\n"
            f"input [\n{joined(tensor(i) for i in manifest.inputs)}\n]\n"
            f"output [\n{joined(tensor(o) for o in manifest.outputs)}\n]\n")


def check_graph_names(manifest: Manifest, model: bytes) -> None:
    """Refuse a server model whose graph lacks an input or output the manifest names (Triton would not load it)."""
    import onnx

    try:
        graph = onnx.load_model_from_string(model).graph
    except Exception as exc:  # DecodeError and friends: the file is not an ONNX model
        raise BundleError(f"{manifest.server_model_file} is not a readable ONNX model ({exc}); re-export the bundle") from exc
    initializers = {i.name for i in graph.initializer}
    has = {"input": [i.name for i in graph.input if i.name not in initializers], "output": [o.name for o in graph.output]}
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        missing = [s.name for s in specs if s.name not in has[kind]]
        if missing:
            raise BundleError(f"{manifest.server_model_file} has no {kind} named {', '.join(map(repr, missing))} "
                              f"(its {kind}s: {', '.join(map(repr, has[kind])) or 'none'}), which the manifest "
                              "names; Triton matches them by name. Re-export the bundle.")


def _directory_name(name: str) -> str:
    # Triton's model name is its directory's name
    if not name or name in (".", "..") or any(c in name for c in "/\\:\0"):
        raise BundleError(f"the model's name {name!r} can't be a Triton model directory; re-export with --name")
    return name


def _quoted(text: str) -> str:
    """A protobuf text-format string literal: C escapes, non-ASCII as octal UTF-8 bytes (as protobuf's CEscape)."""
    def escape(byte: int) -> str:
        if byte in (0x22, 0x27, 0x5C):
            return "\\" + chr(byte)
        return chr(byte) if 0x20 <= byte < 0x7F else f"\\{byte:03o}"

    return '"' + "".join(escape(b) for b in text.encode()) + '"'


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
