"""A trained model in memory, with the file it came from and that file's hash.

Shared by the loaders (loading.py for scikit-learn, keras_loading.py for Keras and SavedModels), so that
neither imports the other at module level.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
