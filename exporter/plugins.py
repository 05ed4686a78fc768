"""User code that edgeport runs on purpose: `--import` modules and converter plugins.

Both run code, and both are the user's own choice, never a model file's:

- `--import MODULE` (repeatable, on `export` and `check`) imports a module before the model loads: a dotted
  name, looked up in the current directory first and then on the Python path, or a path to a `.py` file.
  It lets custom Keras layers (registered with `keras.saving.register_keras_serializable`) and custom
  scikit-learn transformers load, and it may register skl2onnx converters for them
  (`skl2onnx.update_registered_converter`). Classes *defined in* an imported module are trusted in a `.skops`
  file without `--trust`: naming the module says you trust its code. Nothing else the module imports is.
- Converter plugins are installed packages that declare an entry point in the group `edgeport.converters`.
  edgeport loads every one before it looks up a converter: a module (importing it registers its converters)
  or a callable (called with no arguments). A plugin registers a skl2onnx converter for a team's own
  transformer, the way skl2onnx documents it, or an edgeport converter with `edgeport.registry.register`.
  A plugin that fails to load is an error naming its package: a converter never goes missing in silence.
  `examples/converter-plugin/` is a complete one.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterable, Sequence

from .errors import UserCodeError, first_line as _first_line

ENTRY_POINT_GROUP = "edgeport.converters"


def import_user_modules(names: Iterable[str]) -> tuple[ModuleType, ...]:
    """Import each `--import` name (a dotted module name or a path to a .py file), in order."""
    return tuple(_import_one(name) for name in names)


def defined_in(type_name: str, modules: Sequence[ModuleType]) -> bool:
    """Whether the dotted `type_name` is a class defined in one of `modules` (not one they merely import)."""
    for module in modules:
        if module.__name__.split(".")[0] in ("sklearn", "numpy", "scipy"):
            continue  # their classes follow loading.trusted_by_default's rules (numpy.memmap stays out), --import or not
        prefix = module.__name__ + "."
        if not type_name.startswith(prefix):
            continue
        obj: object = module
        for part in type_name[len(prefix):].split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            return True
    return False


def load_plugins() -> tuple[str, ...]:
    """Load every installed `edgeport.converters` entry point; the names of those loaded."""
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        package = f"{point.dist.name} {point.dist.version}" if point.dist else "an unknown package"
        try:
            target = point.load()
            if callable(target) and not isinstance(target, ModuleType):
                target()
        except Exception as exc:
            raise UserCodeError(
                f"the converter plugin {point.name!r} ({point.value}, from {package}) failed to load: "
                f"{type(exc).__name__}: {_first_line(exc)}. edgeport loads every installed plugin in the "
                f"{ENTRY_POINT_GROUP!r} entry-point group before converting; fix that package, or uninstall it "
                f"(pip uninstall {point.dist.name if point.dist else '<package>'})."
            ) from exc
        loaded.append(point.name)
    return tuple(loaded)


def _import_one(name: str) -> ModuleType:
    if name.endswith(".py") or os.sep in name or "/" in name:
        return _import_file(Path(name))
    if not all(part.isidentifier() for part in name.split(".")):
        raise UserCodeError(f"--import {name!r}: not a module name (like my_layers or my_pkg.steps) nor a .py file")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # as `python -m` does: the user's own modules are found first
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UserCodeError(
                f"--import {name}: no module named {exc.name!r} in the current directory ({cwd}) or on the Python "
                "path. Give a module name importable from here, or the path to a .py file."
            ) from exc
        raise _failed(name, exc) from exc
    except Exception as exc:
        raise _failed(name, exc) from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UserCodeError(f"--import {path}: no such file")
    name = path.stem
    if not name.isidentifier():
        raise UserCodeError(f"--import {path}: {name!r} is not a module name; rename the file (letters, digits, _)")
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a pickle or .skops file names its classes as `stem.Class`
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _failed(str(path), exc) from exc
    return module


def _failed(name: str, exc: BaseException) -> UserCodeError:
    return UserCodeError(f"--import {name}: importing it raised {type(exc).__name__}: {_first_line(exc)}. That is the "
                         "module's own code; rerun as edgeport --debug COMMAND ... for the traceback.")
