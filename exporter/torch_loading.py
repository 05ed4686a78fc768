"""Loading PyTorch models: torch.export programs (.pt2), TorchScript files, and pickled modules.

What edgeport trusts when it loads one:

- `.pt2` (`torch.export.save`), the recommended format. The program is JSON (a graph of PyTorch operators) and
  the weights are raw tensor bytes. But `torch.export.load` still unpickles some members: weights and constants
  saved pickled, the sample inputs (falling back to a full unpickle when the restricted one fails), and "opaque"
  objects (plain `pickle.loads`). So edgeport reads the archive first: every member that torch would unpickle
  must load with `torch.load(weights_only=True)`, which builds tensors and containers only, and TorchBind or
  opaque objects are refused. With `--allow-pickle` the archive is loaded as is.
- TorchScript (`torch.jit.save`; a `.pt`/`.pth` zip with a `code/` folder). `torch.jit.load` runs no Python:
  its data goes through TorchScript's own restricted unpickler and its code is TorchScript, compiled by torch.
  That code does run whenever the model runs (edgeport runs it for the golden outputs and to convert it), and
  it may call any operator torch has registered, including a few that read files (`aten::from_file`). Loading
  a TorchScript file trusts its author as far as a script of torch operators; it can't run Python or import
  modules.
- A whole module saved with `torch.save(model, ...)` is a pickle: loading it runs whatever code it names, so it
  loads only with `--allow-pickle`, as `.pkl`/`.joblib` files do.
- A state_dict (`torch.save(model.state_dict(), ...)`) holds weights but not the code that uses them; it is
  refused with the way to save the model instead.

Every archive is refused over the model size limit (`EDGEPORT_MAX_MODEL_BYTES`, 1 GiB), uncompressed.
torch is imported here, on demand; without it the error names the torch extra.
"""
from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelLoadError, PickleRefusedError, first_line as _first_line
from .extras import require
from .model_file import LoadedModel, sha256_of

TORCH_SUFFIXES = (".pt2", ".pt", ".pth")
SAVE_AS_PT2 = ("Save the model with torch.export instead, which loads without running code: "
               "`ep = torch.export.export(model.eval(), (example,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}}); "
               "torch.export.save(ep, 'model.pt2')` (x is the name of forward's argument).")


@dataclass(frozen=True)
class TorchModel:
    """A loaded PyTorch model. `kind` is exported_program, torchscript or module; `settled` is filled by the
    converter with what it decided (the head on the outputs, the input dtypes), so that its reference outputs
    use the same."""

    kind: str
    model: Any
    settled: dict = field(default_factory=dict)


def load_torch_model(path: Path, *, allow_pickle: bool = False) -> LoadedModel:
    """Load a .pt2, TorchScript or pickled-module file (see the module docstring), or raise in one paragraph."""
    require("torch", "torch", f"loading {path.name}")
    _check_size(path)
    members = _members(path)
    if not members:
        with path.open("rb") as handle:
            head = handle.read(4)
        if head.startswith(b"PK"):
            raise ModelLoadError(f"{path.name} is a damaged zip archive (truncated, or cut short while saving): neither "
                                 f"torch.export, TorchScript nor torch.load can read it. Save the model again. {SAVE_AS_PT2}")
        if path.suffix.lower() != ".pt2" and not head.startswith(b"\x80"):  # a legacy torch.save starts with a pickle
            raise ModelLoadError(f"{path.name} is not a PyTorch file (neither a zip archive nor a pickle). {SAVE_AS_PT2}")
    if path.suffix.lower() == ".pt2" or any(m.endswith("models/model.json") or m.endswith("archive_format")
                                            for m in members):
        return _loaded(path, "exported_program", _load_exported_program(path, members, allow_pickle))
    if any("/code/" in m for m in members):
        return _loaded(path, "torchscript", _load_torchscript(path))
    return _loaded(path, "module", _load_pickled_module(path, allow_pickle))


def _loaded(path: Path, kind: str, model: Any) -> LoadedModel:
    return LoadedModel("torch", TorchModel(kind, model), path, sha256_of(path), {"exported_program": "pt2"}.get(kind, kind))


def _members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return []  # torch.save's legacy (pre-1.6) format is a bare pickle


def _check_size(path: Path) -> None:
    from .loading import DEFAULT_MAX_MODEL_BYTES, MAX_MODEL_BYTES_ENV, _limit, _size

    max_bytes = _limit(MAX_MODEL_BYTES_ENV, DEFAULT_MAX_MODEL_BYTES)
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile:
        total = path.stat().st_size
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a readable PyTorch archive ({type(exc).__name__}: {_first_line(exc)})."
                             f" {SAVE_AS_PT2}") from exc
    if total > max_bytes:
        raise ModelLoadError(
            f"refusing to load {path.name}: it unpacks to {_size(total)}, over edgeport's limit of {_size(max_bytes)}. "
            f"If you trust the file and the model really is that big, raise the limit with the environment variable "
            f"{MAX_MODEL_BYTES_ENV}={total}.")


# ---------------------------------------------------------------- .pt2

def _load_exported_program(path: Path, members: list[str], allow_pickle: bool) -> Any:
    import torch

    if not members:
        raise ModelLoadError(f"{path.name} is not a torch.export archive (not a zip file): the file may be damaged "
                             f"or not a .pt2 at all. {SAVE_AS_PT2}")
    if not allow_pickle:
        _refuse_legacy_archive(path)
        _refuse_unsafe_pickles(path)
    try:
        if allow_pickle:
            return torch.export.load(str(path))
        with _weights_only_everywhere():
            return torch.export.load(str(path))
    except PickleRefusedError:
        raise
    except Exception as exc:
        if not allow_pickle and "weights_only" in str(exc).lower().replace(" ", "_"):
            raise PickleRefusedError(
                f"refusing to load {path.name}: torch.export.load would unpickle a member that holds more than "
                f"tensors ({_first_line(exc)}), running whatever code it names. If you trust this file, pass "
                "--allow-pickle; better, save it again with torch.export.save from a model whose weights are plain "
                "tensors.") from exc  # damaged archives raise KeyError, RuntimeError, JSON and serde errors
        raise ModelLoadError(
            f"could not load {path.name} with torch.export.load ({type(exc).__name__}: {_first_line(exc)}). The file "
            f"may be damaged, or saved by another PyTorch release (torch {torch.__version__} is installed here; .pt2 "
            "files are not guaranteed to load across releases). Export and save it again with this one.") from exc


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Every torch.load inside, including torch.export.load's own `weights_only=False` retries and its legacy
    zip path, builds tensors and containers only: TORCH_FORCE_WEIGHTS_ONLY_LOAD, which torch.load reads at each
    call. The member audit (_refuse_unsafe_pickles) names what it can ahead of this; this holds wherever the
    audit and torch's own reading of the archive disagree (a path_name ending in .json, a raw and a pickled
    entry for one member, a path through data/aotinductor, ...)."""
    import os

    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _refuse_legacy_archive(path: Path) -> None:
    """A zip without the pt2 archive_format marker sends torch.export.load down its pre-2.7 path, which retries
    every artifact with a full unpickle; edgeport reads only the current format without --allow-pickle."""
    with zipfile.ZipFile(path) as archive:
        marks = [n for n in archive.namelist() if n == "archive_format" or n.endswith("/archive_format")]
        if not marks or any(archive.read(n).strip() != b"pt2" for n in marks):
            raise PickleRefusedError(
                f"refusing to load {path.name}: it is not a current torch.export archive (no archive_format 'pt2'), "
                "and torch loads older ones by unpickling their members in full, which runs whatever code they name. "
                f"If you trust this file, pass --allow-pickle; better, save it again with torch.export.save. {SAVE_AS_PT2}")


def _refuse_unsafe_pickles(path: Path) -> None:
    """Refuse a .pt2 whose pickled members could build anything but tensors (see the module docstring)."""
    import json

    import torch

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        raw = set()  # members torch reads as raw tensor bytes, never unpickled
        for name in names:
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except Exception as exc:
                    raise ModelLoadError(f"{path.name} is damaged: {name} is not valid JSON ({_first_line(exc)}). "
                                         f"{SAVE_AS_PT2}") from exc
                folder = name.rsplit("/", 1)[0]
                for entry in config.values():
                    member = f"{folder}/{entry.get('path_name', '')}"
                    if not entry.get("path_name", "").startswith(("tensor_", "weight_", "constant_")) or "/" in \
                            entry.get("path_name", "") or entry.get("path_name", "").endswith(".json"):
                        raise PickleRefusedError(
                            f"refusing to load {path.name}: it holds a Python object or an unusual member "
                            f"({entry.get('path_name')!r}) that torch.export.load would unpickle, and unpickling runs "
                            "whatever code the file names. If you trust this file, pass --allow-pickle; better, export "
                            "the model without custom objects.")
                    if not entry.get("use_pickle"):
                        raw.add(member)
        for name in names:
            data_member = "/data/" in f"/{name}" and not name.endswith(".json")
            if not data_member or name in raw or "/data/aotinductor/" in f"/{name}":
                continue  # aotinductor: compiled code that torch.export.load never opens
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as exc:
                raise PickleRefusedError(
                    f"refusing to load {path.name}: its member {name} is a pickle that holds more than tensors "
                    f"({_first_line(exc)}), and torch.export.load would unpickle it in full, running whatever code it "
                    "names. If you trust this file, pass --allow-pickle; better, save it again with torch.export.save "
                    "from a model whose weights are plain tensors.") from exc


# ---------------------------------------------------------------- TorchScript

def _load_torchscript(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the README says to prefer .pt2
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"could not load {path.name} as TorchScript ({type(exc).__name__}: {_first_line(exc)}). "
                             f"The file may be damaged or need a custom-op library that isn't loaded. {SAVE_AS_PT2}"
                             ) from exc
    return model.eval()


# ---------------------------------------------------------------- pickled modules

def _load_pickled_module(path: Path, allow_pickle: bool) -> Any:
    import torch

    try:
        restricted = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # it names a class (the module): only a full unpickle can build it
        restricted = None
    else:
        if isinstance(restricted, dict):
            raise ModelLoadError(
                f"{path.name} holds a state_dict: the weights, without the code that uses them, so there is no "
                f"model to run or convert. Load them into your module (model.load_state_dict(...)), then: {SAVE_AS_PT2}")
        if not isinstance(restricted, torch.nn.Module):
            raise ModelLoadError(f"{path.name} holds a {type(restricted).__name__}, not a torch.nn.Module. {SAVE_AS_PT2}")
    if not allow_pickle:
        raise PickleRefusedError(
            f"refusing to load {path.name}: it is a module saved with torch.save, which is a pickle, and loading a "
            "pickle runs whatever code it contains, so a model file from someone else can take over this machine. If "
            f"you trust this file, pass --allow-pickle (the classes it names must be importable here). {SAVE_AS_PT2}")
    if restricted is not None:
        return restricted.eval()
    try:
        model = torch.load(str(path), map_location="cpu", weights_only=False)  # noqa: S614 - --allow-pickle
    except Exception as exc:
        raise ModelLoadError(f"could not unpickle {path.name} ({type(exc).__name__}: {_first_line(exc)}). It may be "
                             "damaged, or need the module that defines the model's class on the import path."
                             ) from exc
    if isinstance(model, dict):
        raise ModelLoadError(f"{path.name} holds a state_dict: the weights, without the code that uses them. Load them "
                             f"into your module (model.load_state_dict(...)), then: {SAVE_AS_PT2}")
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path.name} holds a {type(model).__name__}, not a torch.nn.Module. {SAVE_AS_PT2}")
    return model.eval()
