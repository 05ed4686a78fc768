"""The bundle: one directory that holds all a front end or a server needs.

    bundle/
      manifest.json   the contract, validated against manifest.schema.json on write and read
      model.onnx      (or tfjs/model.json + tfjs/*.bin)
      golden.json     sample rows and the ORIGINAL model's outputs on them
      parity.json     the parity report written at export

Every file but the manifest is listed in `manifest.files` with its size and
sha256; `read_bundle` refuses a bundle whose files don't match.

`Manifest` is manifest.json as a typed value: `Manifest.from_dict` is the one
reader (it upgrades version 1 and validates against the schema) and
`Manifest.to_dict` the one writer. Version 2 made three things explicit that
version 1 left to each reader: the `layout` (how rows map to inputs), every
input's `nullable`, and `server_model_file`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from .errors import BundleError, InputFileError, IntegrityError

MANIFEST = "manifest.json"
GOLDEN = "golden.json"
PARITY = "parity.json"
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
GOLDEN_ROWS = 256
MANIFEST_VERSION = 2


LAYOUTS = ("matrix", "columns", "tensors")
# which parity runtimes can run a bundle of each format, and which `check` runs when none are named
RUNTIMES_FOR_FORMAT = {
    "onnx": ("python", "server", "node", "browser"),
    "tfjs-graph": ("server", "node", "browser"),  # server: the ONNX twin the fallback server runs
}
DEFAULT_RUNTIMES = {"onnx": ("python",), "tfjs-graph": ("server", "node")}


@dataclass(frozen=True)
class InputSpec:
    """One graph input. `key` is what a row names it by: its column, or the input name."""

    name: str
    dtype: str  # float32, float64, int32, int64, string
    shape: tuple[int | None, ...]
    nullable: bool = False  # the original model accepts a missing value (null/NaN) here
    column: str | None = None
    columns: tuple[str, ...] | None = None  # a matrix input's column names, in order
    categories: tuple | None = None
    kind: str | None = None  # what an input holds, for forms: "sequence" (steps x features), "image" or "text" (free text)

    @property
    def key(self) -> str:
        return self.column if self.column is not None else self.name

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]),
                   nullable=bool(data.get("nullable", False)), column=data.get("column"),
                   columns=tuple(data["columns"]) if data.get("columns") is not None else None,
                   categories=tuple(data["categories"]) if data.get("categories") is not None else None,
                   kind=data.get("kind"))

    def to_dict(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "nullable": self.nullable}
        if self.column is not None:
            out["column"] = self.column
        if self.columns is not None:
            out["columns"] = list(self.columns)
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.kind is not None:
            out["kind"] = self.kind
        return out


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str
    shape: tuple[int | None, ...]
    role: str  # label, probabilities, value, score (anomaly detection), distances (clustering)

    @classmethod
    def from_dict(cls, data: dict) -> OutputSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]), data["role"])

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "role": self.role}


@dataclass(frozen=True)
class FileEntry:
    path: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. Read with `Manifest.from_dict` (which upgrades version 1 and validates against
    manifest.schema.json) and written with `to_dict`; nothing else parses or builds the JSON form."""

    name: str
    version: str
    format: str  # onnx, tfjs-graph
    task: str  # classification, regression, multi-output-classification, anomaly-detection, clustering, transformation
    layout: str  # matrix, columns, tensors: how rows map to inputs (see decoding.py)
    model_file: str
    server_model_file: str  # the ONNX file the fallback server runs; model_file itself for ONNX bundles
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    source: dict
    tolerance: dict
    parity: dict
    fallback: dict
    feature_stats: dict = field(default_factory=dict)
    files: tuple[FileEntry, ...] = ()
    classes: tuple | None = None
    created: str | None = None
    quantization: dict | None = None
    pii: tuple[str, ...] = ()  # input columns the server's prediction log drops or hashes
    manifest_version: int = MANIFEST_VERSION

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        data = upgrade(data, where)
        validate_manifest(data, where)
        _check_consistency(data, where)
        return cls(
            name=data["name"], version=data["version"], format=data["format"], task=data["task"],
            layout=data["layout"], model_file=data["model_file"], server_model_file=data["server_model_file"],
            inputs=tuple(InputSpec.from_dict(i) for i in data["inputs"]),
            outputs=tuple(OutputSpec.from_dict(o) for o in data["outputs"]),
            source=data["source"], tolerance=data["tolerance"], parity=data["parity"], fallback=data["fallback"],
            feature_stats=data["feature_stats"],
            files=tuple(FileEntry(f["path"], f["bytes"], f["sha256"]) for f in data["files"]),
            classes=tuple(data["classes"]) if data.get("classes") is not None else None,
            created=data.get("created"), quantization=data.get("quantization"), pii=tuple(data.get("pii", ())),
        )

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION, "name": self.name, "version": self.version, "format": self.format,
            "task": self.task, "layout": self.layout,
        }
        if self.created is not None:
            out["created"] = self.created
        out.update({"source": self.source, "model_file": self.model_file, "server_model_file": self.server_model_file,
                    "inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs]})
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.quantization is not None:
            out["quantization"] = self.quantization
        if self.pii:
            out["pii"] = list(self.pii)
        out.update({"files": [f.to_dict() for f in self.files], "feature_stats": self.feature_stats,
                    "tolerance": self.tolerance, "parity": self.parity, "fallback": self.fallback})
        return out

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The parity runtimes that can run this bundle."""
        return RUNTIMES_FOR_FORMAT[self.format]

    @property
    def default_runtimes(self) -> tuple[str, ...]:
        return DEFAULT_RUNTIMES[self.format]

    @property
    def parity_verified(self) -> bool:
        """The parity check at export ran and passed (not failed, not pending)."""
        return self.parity.get("passed") is True and not self.parity.get("pending")


def layout_of(inputs: Sequence[dict] | Sequence[InputSpec]) -> str:
    """The layout that manifest version 1 left implicit: the one place it is still inferred (old bundles)."""
    has_column = [(i.column if isinstance(i, InputSpec) else i.get("column")) is not None for i in inputs]
    if any(has_column):
        return "columns"
    return "matrix" if len(inputs) == 1 else "tensors"


def upgrade(data: Any, where: str = MANIFEST) -> Any:
    """A version-1 manifest in today's form: its layout made explicit, `nullable` false where it was left out
    (the server's reading; the JS client's differed), server_model_file defaulting to model_file."""
    version = data.get("manifest_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (type(version) is int and version == MANIFEST_VERSION):
        return data
    if not (type(version) is int and version == 1):  # true == 1 in Python, not in a manifest
        raise BundleError(f"{where} has manifest_version {data.get('manifest_version')!r}; this edgeport reads "
                          f"versions 1 and {MANIFEST_VERSION}. Re-export the bundle with this edgeport "
                          "(edgeport export MODEL --sample DATA --out DIR --force).")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs) or not inputs:
        return {**data, "manifest_version": MANIFEST_VERSION}  # the schema names what is wrong
    return {**data, "manifest_version": MANIFEST_VERSION, "layout": layout_of(inputs),
            "inputs": [{"nullable": False, **i} for i in inputs],
            "server_model_file": data.get("server_model_file") or data.get("model_file")}


# The output roles each task may have; a model needs at least one of them (a Keras classifier has only
# probabilities, a bring-your-own ONNX classifier may have only a label). The JS client holds the same table.
TASK_ROLES = {
    "classification": ("label", "probabilities"),
    "regression": ("value",),
    "multi-output-classification": ("label",),
    "anomaly-detection": ("label", "score"),
    "clustering": ("label", "distances"),
    "transformation": ("value",),
}


def input_columns(inputs: list) -> set[str]:
    """The column names of a manifest's inputs (their dict form): a column, a matrix's columns, else the name."""
    known: set[str] = set()
    for spec in inputs:
        known.update(spec.get("columns") or ())
        known.add(spec.get("column") or spec["name"])
    return known


def _check_consistency(data: dict, where: str) -> None:
    """What the schema can't say: the layout fits the inputs, names are unique, the output roles fit the task
    (the JS client checks the same)."""
    inputs, layout = data["inputs"], data["layout"]
    allowed = TASK_ROLES[data["task"]]
    roles = [o["role"] for o in data["outputs"]]
    stray = [r for r in roles if r not in allowed]
    if stray or not roles:
        raise BundleError(f"{where} is not a valid edgeport manifest: field outputs: a {data['task']} model's outputs "
                          f"have the roles {', '.join(allowed)}" + (f", not {stray[0]!r}" if stray else ", and it has none"))
    if layout == "matrix" and len(inputs) != 1:
        raise BundleError(f"{where} is not a valid edgeport manifest: field layout: matrix takes one input, "
                          f"and there are {len(inputs)}")
    if layout == "columns" and any("column" not in i for i in inputs):
        name = next(i["name"] for i in inputs if "column" not in i)
        raise BundleError(f"{where} is not a valid edgeport manifest: field layout: columns, but input {name!r} "
                          "names no column")
    known = input_columns(inputs)
    unknown = [c for c in data.get("pii", ()) if c not in known]
    if unknown:
        raise BundleError(f"{where} is not a valid edgeport manifest: field pii: {unknown[0]!r} is not an input's "
                          f"column; the columns are {', '.join(sorted(known))}")
    for field_name in ("inputs", "outputs"):
        names = [item["name"] for item in data[field_name]]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise BundleError(f"{where} is not a valid edgeport manifest: field {field_name}: {repeated[0]!r} "
                              "appears more than once")


ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)",
             "int32": "tensor(int32)", "string": "tensor(string)"}


def graph_mismatch(manifest: "Manifest", session: Any, model_file: str) -> str | None:
    """How the manifest's inputs and outputs contradict the ONNX graph an onnxruntime `session` holds, or None.
    A manifest edited (or damaged) after export would otherwise fail every request with onnxruntime's words."""
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for spec in manifest.inputs:
        node = graph_inputs.get(spec.name)
        if node is None:
            return f"input {spec.name!r} is not an input of {model_file} (it has {', '.join(map(repr, graph_inputs))})"
        if ORT_TYPES.get(spec.dtype) != node.type:
            return f"input {spec.name!r} is {spec.dtype} in the manifest but {node.type} in {model_file}"
        if isinstance(node.shape, list) and len(node.shape) != len(spec.shape):
            return (f"input {spec.name!r} has rank {len(spec.shape)} in the manifest but {len(node.shape)} in "
                    f"{model_file}")
    unfed = sorted(set(graph_inputs) - {spec.name for spec in manifest.inputs})
    if unfed:
        return f"{model_file} needs the input {unfed[0]!r}, which the manifest doesn't list"
    for out in manifest.outputs:
        node = graph_outputs.get(out.name)
        if node is None:
            return f"output {out.name!r} is not an output of {model_file} (it has {', '.join(map(repr, graph_outputs))})"
        if out.dtype in ORT_TYPES and ORT_TYPES[out.dtype] != node.type:
            return f"output {out.name!r} is {out.dtype} in the manifest but {node.type} in {model_file}"
    return None


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk and its validated manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def server_model_file(self) -> str:
        return self.manifest.server_model_file

    @property
    def parity_verified(self) -> bool:
        return self.manifest.parity_verified

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        return self.manifest.outputs

    @property
    def classes(self) -> tuple | None:
        return self.manifest.classes

    def golden(self) -> dict:
        return _read_json(self.path / GOLDEN, "golden outputs")


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(manifest_schema())


def validate_manifest(manifest: Any, where: str = MANIFEST) -> None:
    """Raise BundleError naming the first field that breaks manifest.schema.json."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field_name = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{where} is not a valid edgeport manifest: field {field_name}: {error.message}")


def file_entry(root: Path, relative: str) -> FileEntry:
    data = (root / relative).read_bytes()
    return FileEntry(relative, len(data), hashlib.sha256(data).hexdigest())


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """List every file in `directory` with its hash, validate, and write manifest.json."""
    files = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    manifest = replace(manifest, files=tuple(file_entry(directory, f) for f in files))
    data = manifest.to_dict()
    validate_manifest(data)
    (directory / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return manifest


def write_json(path: Path, data: Any) -> None:
    # allow_nan=False: JSON with NaN breaks browsers' JSON.parse; callers turn NaN into null first
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle; with verify, check every file's size and sha256."""
    path = Path(path)
    if not path.is_dir():
        raise InputFileError(f"bundle directory not found: {path}")
    manifest = Manifest.from_dict(_read_json(path / MANIFEST, "manifest"), str(path / MANIFEST))
    root = path.resolve()
    listed = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        check_relative(entry.path, f"{path / MANIFEST}: files")
    for field_name in ("model_file", "server_model_file"):
        value = getattr(manifest, field_name)
        check_relative(value, f"{path / MANIFEST}: {field_name}")
        if value not in listed:
            raise BundleError(f"{path / MANIFEST}: {field_name} {value!r} is not listed in files with its "
                              "sha256, so nothing vouches for it; re-export the bundle")
    if verify:
        for entry in manifest.files:
            verify_file(root, entry)
    return Bundle(path=path, manifest=manifest)


def require_verified(bundle: Bundle) -> None:
    """Refuse a bundle whose parity check at export failed or never finished."""
    if bundle.parity_verified:
        return
    parity = bundle.manifest.parity
    why = "never finished (the export was interrupted)" if parity.get("pending") else "failed: the exported model does not give the original's outputs"
    raise BundleError(f"bundle {bundle.path} ({bundle.name} version {bundle.version}) did not pass its parity check, "
                      f"which {why}. Fix the model and re-export, or pass --allow-unverified to use it anyway.")


def check_relative(relative: str, where: str) -> None:
    """Refuse a manifest path that is absolute, climbs out with '..', or is otherwise not a plain relative path."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative or ":" in relative
            or any(part in ("", ".", "..") for part in parts)):
        raise BundleError(f"{where}: path {relative!r} is not a plain relative path inside the bundle; refusing it")


def read_files(bundle: Bundle) -> dict[str, bytes]:
    """Every file the manifest lists, read once and verified: a consistent snapshot of one bundle version."""
    root = bundle.path.resolve()
    return {entry.path: verify_file(root, entry) for entry in bundle.manifest.files}


def verify_file(root: Path, entry: FileEntry) -> bytes:
    """Raise IntegrityError unless root/entry.path exists, stays inside root, and matches."""
    target = (root / entry.path).resolve()
    if not target.is_relative_to(root):
        raise IntegrityError(f"bundle file {entry.path} points outside the bundle; refusing it")
    if not target.is_file():
        raise IntegrityError(f"bundle file {entry.path} is listed in manifest.json but missing from {root}")
    if target.stat().st_size != entry.bytes:  # before reading: a swapped-in huge file is never read
        raise IntegrityError(f"bundle file {entry.path} does not match manifest.json ({target.stat().st_size} bytes, "
                             f"expected {entry.bytes}): it was changed after export. Re-export the bundle rather "
                             "than trusting it.")
    data = target.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.bytes or digest != entry.sha256:
        raise IntegrityError(
            f"bundle file {entry.path} does not match manifest.json (sha256 {digest[:12]}…, expected "
            f"{entry.sha256[:12]}…): it was changed after export. Re-export the bundle rather than trusting it."
        )
    return data


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an edgeport bundle: {path.name} ({what}) is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from exc
    except RecursionError as exc:  # a hostile file nested thousands deep
        raise BundleError(f"{path} is nested too deeply to be a bundle's {what}; re-export the bundle") from exc
