"""The converter registry, keyed by (framework, target).

A converter turns a loaded model plus its sample into bundle artifacts, and
says how to run the original model for reference outputs. Converters register
with `@register(framework, target)`; registering a key twice is an error, and a
failed lookup lists what is registered. Installed packages add converters through
the `edgeport.converters` entry-point group (plugins.py), loaded once after the
built-ins. Converter modules import their heavy frameworks inside their
functions, so importing the registry stays cheap.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .errors import UnsupportedModelError, UnusedOptionError
from .model_file import LoadedModel
from .parity import Tolerance
from .progress import Progress

# modules whose import registers the built-in converters
BUILTIN_CONVERTERS = ("edgeport.converters.sklearn_onnx", "edgeport.converters.keras", "edgeport.converters.onnx_file", "edgeport.converters.boosting",
                      "edgeport.converters.pytorch")


@dataclass(frozen=True)
class Converted:
    """What a converter hands back: files for the bundle and the manifest's model fields."""

    files: dict[str, bytes]
    model_file: str
    format: str
    task: str
    inputs: list[dict]  # manifest entries (bundle.InputSpec.from_dict reads them)
    outputs: list[dict]
    layout: str  # matrix, columns or tensors: how a row maps to the inputs
    source: dict
    tolerance: Tolerance
    table: Any  # the sample, as the original model takes it
    classes: list | None = None
    extra: dict = field(default_factory=dict)


class Converter(Protocol):
    framework: str
    target: str
    verify_runtimes: tuple[str, ...]  # where export checks parity; default ("python",)
    options: frozenset[str]  # the converter options convert() takes (e.g. quantize, classes); others are refused

    def convert(self, loaded: LoadedModel, sample: Any, progress: Progress, **options: Any) -> Converted: ...

    def reference(self, loaded: LoadedModel, table: Any, classes: Any = None) -> dict[str, Any]:
        """The original model's outputs on `table`, keyed by role (labels named by `classes`)."""
        ...


_REGISTRY: dict[tuple[str, str], Converter] = {}


def register(framework: str, target: str) -> Callable[[type], type]:
    """Class decorator: register a converter for (framework, target)."""

    def decorate(cls: type) -> type:
        _load_builtins()  # a converter registered before the built-ins load must still meet them here
        key = (framework, target)
        if key in _REGISTRY:
            raise ValueError(f"a converter for {key} is already registered: {type(_REGISTRY[key]).__name__}")
        instance = cls()
        instance.framework, instance.target = framework, target
        instance.options = frozenset(getattr(cls, "options", ()))
        _REGISTRY[key] = instance
        return cls

    return decorate


_REFUSED: dict[tuple[str, str], str] = {}


def refuse(framework: str, target: str, why: str) -> None:
    """Say why no converter takes (framework, target) and what to do instead: get_converter raises `why` for it."""
    _REFUSED[(framework, target)] = why


def registered() -> list[tuple[str, str]]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_converter(framework: str, target: str) -> Converter:
    """The converter for (framework, target), or an error that lists what is supported."""
    _load_builtins()
    try:
        return _REGISTRY[(framework, target)]
    except KeyError:
        if (framework, target) in _REFUSED:
            raise UnsupportedModelError(_REFUSED[(framework, target)]) from None
        supported = ", ".join(f"{f} → {t}" for f, t in sorted(_REGISTRY))
        raise UnsupportedModelError(
            f"no converter exports {framework} models to {target}. Supported: {supported}."
        ) from None


def check_options(converter: Converter, given: dict[str, Any]) -> None:
    """Refuse options this converter doesn't take, naming the flag and the converters that do take it."""
    unused = [name for name, value in given.items() if value is not None and name not in converter.options]
    if not unused:
        return
    name = unused[0]
    takers = sorted({f"{c.framework} → {c.target}" for c in _REGISTRY.values() if name in c.options})
    where = f"; it applies to {', '.join(takers)}" if takers else ""
    raise UnusedOptionError(f"--{name.replace('_', '-')} does not apply to {converter.framework} models exported to "
                            f"{converter.target}{where}. Leave it out.")


_loading = False
_plugins_loaded = False


def _load_builtins() -> None:
    """Import the built-in converters, then (once) every installed converter plugin (plugins.load_plugins)."""
    global _loading, _plugins_loaded
    if _loading:  # a built-in module or a plugin registering itself while they load
        return
    _loading = True
    try:
        for module in BUILTIN_CONVERTERS:
            importlib.import_module(module)
        if not _plugins_loaded:
            from .plugins import load_plugins

            load_plugins()  # a plugin that fails raises here at every lookup: no converter goes missing in silence
            _plugins_loaded = True
    finally:
        _loading = False
