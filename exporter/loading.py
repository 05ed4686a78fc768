"""Loading a trained model from disk, safely.

What edgeport trusts when it loads a model:

- `.skops` files load without pickle, and skops builds only the types it is
  told to trust. edgeport trusts what skops trusts by default (containers,
  numbers, numpy dtypes and ufuncs, scikit-learn estimators), plus the classes
  a fitted model needs that skops reports as "untrusted" though nobody can act
  on that (tree arrays, KD-trees, loss objects): a name is trusted only if it
  resolves to a class defined in scikit-learn, numpy or scipy, outside modules
  that touch files or raw memory (scipy.io, numpy's npyio and memmap, test
  helpers), or to a numpy ufunc. Functions, builtins (`builtins.exec`,
  `builtins.eval`, ...), methods, and anything from another package are built
  only when named with `--trust NAME`.
- Before skops reads a `.skops` archive, its uncompressed size (every member,
  counted once for each time the schema reads it) must be at most 1 GiB and it
  may hold at most 100,000 members. Raise the limits with the environment
  variables `EDGEPORT_MAX_MODEL_BYTES` and `EDGEPORT_MAX_MODEL_MEMBERS`.
- Pickles (`.pkl`, `.joblib`) run arbitrary code when loaded, so they load only
  with `allow_pickle=True` (`--allow-pickle`).
- XGBoost `.json`/`.ubj`, LightGBM `.txt` and CatBoost `.cbm` files are data, not code: they load
  without --allow-pickle (`boosting_loading.py`).
- `.onnx` files are data too: read with onnx and checked by `onnx.checker`, refused over the size limit,
  with external data files, or with custom-op domains onnxruntime can't run (`onnx_loading.py`).
- PyTorch: `.pt2` (torch.export) programs load once every member torch would unpickle is shown to hold only
  tensors; TorchScript runs torch operators, not Python; a whole module saved with torch.save is a pickle and
  needs --allow-pickle (`torch_loading.py`).
- `.keras` files load with Keras' `safe_mode=True` (no code from Lambda layers).
- TensorFlow SavedModel directories are inspected before anything in them runs:
  a graph that reads or writes files, runs Python or uses the network is
  refused unless each such op is named with `--allow-op OP`
  (see `keras_loading.UNSAFE_OPS`).
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .errors import (InputFileError, ModelLoadError, PickleRefusedError, UnusedOptionError, UntrustedTypesError,
                     first_line as _first_line)
from .model_file import LoadedModel, sha256_of

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
KERAS_SUFFIXES = (".keras", ".h5")

# Classes from these packages are what fitted scikit-learn models are made of.
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
# Dotted-name parts under those packages whose classes read or write files (scipy.io, npyio, memmap), wrap raw
# memory (stride_tricks, ctypeslib, LowLevelCallable), or exist for tests and builds: no fitted model holds one,
# and building one from someone else's file could do harm. Any part containing "test" is refused too.
UNSAFE_NAME_PARTS = frozenset({
    "io", "npyio", "_npyio_impl", "_datasource", "format", "_format_impl", "memmap",
    "stride_tricks", "_stride_tricks_impl", "ctypeslib", "_ctypeslib", "_ccallback",
    "f2py", "distutils", "_build_utils", "datasets",
})

MAX_MODEL_BYTES_ENV = "EDGEPORT_MAX_MODEL_BYTES"
MAX_MODEL_MEMBERS_ENV = "EDGEPORT_MAX_MODEL_MEMBERS"
# Generous: a big random forest saved with skops is a few hundred MB. A model over the limit is refused
# before skops reads it, so a small zip of zeros can't take the machine's memory.
DEFAULT_MAX_MODEL_BYTES = 1 << 30
DEFAULT_MAX_MODEL_MEMBERS = 100_000


def load_model(
    path: str | Path, *, allow_pickle: bool = False, trust: Sequence[str] = (), allow_ops: Sequence[str] = (),
    imports: Sequence[str] = (),
) -> LoadedModel:
    """Load a model file, refusing pickles, untrusted skops types and unsafe SavedModel ops unless allowed.

    `imports` (--import) are the user's modules, imported first (plugins.import_user_modules): their custom
    layers and transformers can then load, and classes defined in them are trusted in a .skops file."""
    path = Path(path)
    from .plugins import import_user_modules

    modules = import_user_modules(imports)  # before the path check too: a typo in --import is named first
    if not path.exists():
        raise InputFileError(f"model file not found: {path}. Check the path, or train one with the recipes in models/.")
    suffix = path.suffix.lower()
    _refuse_unused_load_options(path, suffix, trust, allow_ops)
    if path.is_dir() or suffix in KERAS_SUFFIXES:
        from .keras_loading import load_keras_model  # lazy: imports TensorFlow

        return load_keras_model(path, allow_ops=allow_ops)
    if suffix in (".json", ".ubj", ".txt", ".cbm"):
        from .boosting_loading import load_native  # lazy: XGBoost / LightGBM / CatBoost files are data, not code

        return load_native(path)
    if suffix == ".onnx":
        from .onnx_loading import load_onnx_model  # "bring your own ONNX": data, checked before use

        return load_onnx_model(path)
    if suffix in (".pt2", ".pt", ".pth"):
        from .torch_loading import load_torch_model  # lazy: imports torch; .pt2 audited, pickled modules need the flag

        return load_torch_model(path, allow_pickle=allow_pickle)
    if suffix == ".skops":
        model = _load_skops(path, trust, modules)
        return LoadedModel("sklearn", model, path, sha256_of(path), "skops")
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(
                f"refusing to load {path.name}: {suffix} files are pickles, and loading a pickle runs "
                "whatever code it contains, so a model file from someone else can take over this machine. "
                "If you trust this file, pass --allow-pickle. Better, save the model with skops, which loads "
                "without running code: `import skops.io as sio; sio.dump(model, 'model.skops')`."
            )
        model = _load_pickle(path)
        if "torch" in sys.modules and isinstance(model, sys.modules["torch"].nn.Module):  # a pickled module
            from .torch_loading import TorchModel

            return LoadedModel("torch", TorchModel("module", model.eval()), path, sha256_of(path), "pickle")
        return LoadedModel("sklearn", model, path, sha256_of(path), "pickle")
    raise ModelLoadError(
        f"don't know how to load {path.name}: supported model files are .skops (recommended), "
        ".joblib/.pkl (with --allow-pickle), .keras, TensorFlow SavedModel directories, .onnx files, PyTorch .pt2 "
        "(torch.export), TorchScript .pt/.pth, and XGBoost "
        "(.json/.ubj), "
        "LightGBM (.txt) and CatBoost (.cbm) model files."
    )


def _refuse_unused_load_options(path: Path, suffix: str, trust: Sequence[str], allow_ops: Sequence[str]) -> None:
    """--trust names types in a .skops file, --allow-op ops in a SavedModel: given for another file, they would be
    silently ignored, and the user would believe something was allowed (or checked) that wasn't."""
    if trust and suffix != ".skops":
        raise UnusedOptionError(f"--trust applies to .skops files (the types skops may build); {path.name} is not "
                                "one. Leave it out.")
    if allow_ops and not path.is_dir():
        raise UnusedOptionError(f"--allow-op applies to TensorFlow SavedModel directories (the ops their graph may "
                                f"run); {path.name} is not one. Leave it out.")


def trusted_by_default(name: str) -> bool:
    """Whether edgeport builds `name` from a .skops file without --trust (see the module docstring)."""
    obj = _resolve(name)
    if obj is None:
        return False
    import numpy as np

    if isinstance(obj, np.ufunc):  # FunctionTransformer(func=np.log1p): elementwise math, nothing else
        return True
    if not isinstance(obj, type) or issubclass(obj, np.memmap):  # np.memmap says its module is "numpy"
        return False
    return _safe_name(f"{obj.__module__}.{obj.__qualname__}")  # re-exports can point elsewhere


def _safe_name(name: str) -> bool:
    parts = name.split(".")
    return (parts[0] in TRUSTED_PACKAGES
            and not any(p in UNSAFE_NAME_PARTS or "test" in p or p.startswith("__") for p in parts))


def _resolve(name: str) -> Any:
    """The object a dotted name points at, importing only modules inside TRUSTED_PACKAGES; None if it doesn't."""
    if not _safe_name(name):
        return None  # checked before importing anything: a module's import runs its code
    parts = name.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on deprecated aliases
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            except Exception:
                return None
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute, None)
            return obj
    return None


def _load_skops(path: Path, trust: Sequence[str], modules: Sequence[Any] = ()) -> Any:
    from .plugins import defined_in

    _check_archive(path)
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged or hostile schema: bad zip, wrong JSON types, deep nesting
        raise ModelLoadError(
            f"{path.name} is not a valid .skops file ({type(exc).__name__}: {_first_line(exc)}). "
            "Re-save the model with skops.io.dump."
        ) from exc
    refused = [t for t in untrusted if t not in trust and not trusted_by_default(t) and not defined_in(t, modules)]
    if refused:
        raise UntrustedTypesError(
            f"{path.name} contains types that are not trusted by default: {', '.join(refused)}. "
            "skops will only build them if you name each one, e.g. "
            + " ".join(f"--trust {t}" for t in refused)
            + ". Only do so if you trust where the file came from: a function or builtin such as "
            "builtins.exec can run any code. Classes of your own load with --import MODULE, which trusts the "
            "classes that module defines (and runs its code)."
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # skops raises many types for damaged files
        missing = _missing_code(exc)
        if missing:
            raise ModelLoadError(f"{path.name} needs {missing}. {_IMPORT_HINT}") from exc
        raise ModelLoadError(
            f"could not load {path.name} with skops ({type(exc).__name__}: {_first_line(exc)}). "
            "The file may be damaged or saved by an incompatible scikit-learn; re-save it with skops.io.dump."
        ) from exc


def _check_archive(path: Path) -> None:
    """Refuse a .skops archive that would take more memory to read than the limit, before skops reads it."""
    max_bytes = _limit(MAX_MODEL_BYTES_ENV, DEFAULT_MAX_MODEL_BYTES)
    max_members = _limit(MAX_MODEL_MEMBERS_ENV, DEFAULT_MAX_MODEL_MEMBERS)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > max_members:
                raise ModelLoadError(
                    f"refusing to load {path.name}: it holds {len(members):,} files, over edgeport's limit of "
                    f"{max_members:,}. If you trust the file and the model really is that big, raise the limit "
                    f"with the environment variable {MAX_MODEL_MEMBERS_ENV}={len(members)}."
                )
            # zipfile never inflates a member past its declared file_size, so these sizes bound what is read
            sizes = {member.filename: member.file_size for member in members}
            total = sum(sizes.values())
            if total <= max_bytes:
                # skops reads a member once per reference, so one member named many times costs many times
                total = max(total, sizes.get("schema.json", 0)
                            + _referenced_bytes(json.loads(archive.read("schema.json")), sizes))
    except ModelLoadError:
        raise
    except Exception as exc:  # BadZipFile, a missing or malformed schema.json, RecursionError on deep nesting
        raise ModelLoadError(
            f"{path.name} is not a valid .skops file ({type(exc).__name__}: {_first_line(exc)}). "
            "Re-save the model with skops.io.dump."
        ) from exc
    if total > max_bytes:
        raise ModelLoadError(
            f"refusing to load {path.name}: skops would unpack {_size(total)} from it ({_size(path.stat().st_size)} "
            f"on disk), over edgeport's limit of {_size(max_bytes)}. If you trust the file and the model really is "
            f"that big, raise the limit with the environment variable {MAX_MODEL_BYTES_ENV}={total}."
        )


def _referenced_bytes(schema: Any, sizes: dict[str, int]) -> int:
    """Bytes skops reads for the archive members a schema names (a loop, not recursion: the schema may be deep)."""
    total, pending = 0, [schema]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            member = item.get("file")
            if isinstance(member, str) and "__loader__" in item:
                total += sizes.get(member, 0)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return total


def _limit(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip().replace("_", "")
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit <= 0:
        raise ModelLoadError(f"{variable}={os.environ[variable]!r} is not a positive whole number; "
                             f"set it to a count of bytes or files, or unset it for the default ({default}).")
    return limit


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"



def _load_pickle(path: Path) -> Any:
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - the user passed --allow-pickle
    except Exception as exc:
        missing = _missing_code(exc)
        if missing:
            raise ModelLoadError(f"{path.name} needs {missing}. {_IMPORT_HINT}") from exc
        raise ModelLoadError(
            f"could not unpickle {path.name} ({type(exc).__name__}: {_first_line(exc)}). It may be damaged, or "
            "saved by incompatible versions of the libraries it uses."
        ) from exc


_IMPORT_HINT = ("Install the package that defines it, or, if it is your own code, pass --import MODULE (a module "
                "name importable from the current directory, or a .py file), which runs that module's code first.")


def _missing_code(exc: BaseException) -> str | None:
    """What code a model file names that isn't importable here, from the exception (or one it was raised from)."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return f"the module {exc.name!r}, which is not importable here"
        text = str(exc)
        match = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", text)  # pickle: class gone
        if match:
            return f"the class {match.group(2)}.{match.group(1)}, which its module does not define here"
        match = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)  # skops: class gone
        if isinstance(exc, AttributeError) and match:
            return f"the class {match.group(1)}.{match.group(2)}, which its module does not define here"
        exc = exc.__cause__ or exc.__context__
    return None
