"""Loading a trained model from disk, safely.

`.skops` is the recommended format: it loads without running code, and only the
types the user trusts. Types from `sklearn.*` and `numpy.*` are trusted by
default, because skops reports ordinary scikit-learn internals (tree arrays,
KD-trees, dtypes) as "untrusted" and nobody can act on that. Anything else must
be named with `--trust`.

Pickles (`.pkl`, `.joblib`) run arbitrary code when loaded, so they load only
with `allow_pickle=True`.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputFileError, ModelLoadError, PickleRefusedError, UntrustedTypesError

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "collections.", "scipy.sparse.")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
KERAS_SUFFIXES = (".keras", ".h5")


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory with where it came from."""

    framework: str  # "sklearn" or "keras"
    model: Any
    path: Path
    sha256: str
    file_format: str  # "skops", "pickle", "keras", "savedmodel"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (or, for a directory, of its files in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(
    path: str | Path, *, allow_pickle: bool = False, trust: Sequence[str] = ()
) -> LoadedModel:
    """Load a model file, refusing pickles and untrusted skops types unless allowed."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"model file not found: {path}. Check the path, or train one with the recipes in models/.")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in KERAS_SUFFIXES:
        from .keras_loading import load_keras_model  # lazy: imports TensorFlow

        return load_keras_model(path)
    if suffix == ".skops":
        model = _load_skops(path, trust)
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
        return LoadedModel("sklearn", model, path, sha256_of(path), "pickle")
    raise ModelLoadError(
        f"don't know how to load {path.name}: supported model files are .skops (recommended), "
        ".joblib/.pkl (with --allow-pickle), .keras, and TensorFlow SavedModel directories."
    )


def _load_skops(path: Path, trust: Sequence[str]) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{path.name} is not a valid .skops file ({type(exc).__name__}: {exc}). "
            "Re-save the model with skops.io.dump."
        ) from exc
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES) and t not in trust]
    if refused:
        raise UntrustedTypesError(
            f"{path.name} contains types that are not trusted by default: {', '.join(refused)}. "
            "skops will only build them if you name each one, e.g. "
            + " ".join(f"--trust {t}" for t in refused)
            + ". Only do so if you trust where the file came from."
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # skops raises many types for damaged files
        raise ModelLoadError(
            f"could not load {path.name} with skops ({type(exc).__name__}: {exc}). "
            "The file may be damaged or saved by an incompatible scikit-learn; re-save it with skops.io.dump."
        ) from exc


def _load_pickle(path: Path) -> Any:
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - the user passed --allow-pickle
    except Exception as exc:
        raise ModelLoadError(
            f"could not unpickle {path.name} ({type(exc).__name__}: {exc}). "
            "It may be damaged or need packages that are not installed."
        ) from exc
