"""Loading Keras models (.keras files, SavedModel directories). Imports TensorFlow, so only on demand."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelLoadError, RuntimeUnavailableError
from .loading import LoadedModel, sha256_of

INSTALL_HINT = "install the tensorflow extra: pip install -e '.[tensorflow]' (make setup does this)"


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what TensorFlow's C++ side writes to fd 2 (absl logs before TF_CPP_MIN_LOG_LEVEL applies)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> Any:
    """TensorFlow, quietly, or a clear error saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    try:
        with quiet_native_stderr():
            import tensorflow as tf
    except ImportError as exc:
        raise RuntimeUnavailableError(f"this needs TensorFlow, which is not installed: {INSTALL_HINT}") from exc
    return tf


def load_keras_model(path: Path) -> LoadedModel:
    """A .keras file (safe mode: no arbitrary code from Lambda layers) or a SavedModel directory."""
    import_tensorflow()
    import keras

    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path} is a directory but not a TensorFlow SavedModel (no saved_model.pb)")
        try:
            layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
            model = _wrap_saved_model(keras, layer)
        except Exception as exc:
            raise ModelLoadError(f"could not load the SavedModel at {path}: {str(exc).splitlines()[0][:300]}") from exc
        return LoadedModel("keras", model, path, sha256_of(path), "savedmodel")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path.name} with Keras ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
            "If the model uses custom layers, import the module that registers them before exporting."
        ) from exc
    return LoadedModel("keras", model, path, sha256_of(path), "keras")


def _wrap_saved_model(keras: Any, layer: Any) -> Any:
    """A Keras model around a SavedModel's serving signature (single input, single output)."""
    signature = layer._endpoint_signatures if hasattr(layer, "_endpoint_signatures") else None
    function = layer.call_endpoint_fn if hasattr(layer, "call_endpoint_fn") else None
    specs = None
    for candidate in (function, signature):
        if candidate is not None and hasattr(candidate, "structured_input_signature"):
            specs = candidate.structured_input_signature[1]
            break
    if not specs or len(specs) != 1:
        raise ModelLoadError("edgeport loads SavedModels whose serving signature has exactly one input; "
                             "export the Keras model as .keras instead")
    (name, spec), = specs.items()
    inputs = keras.Input(shape=tuple(spec.shape[1:]), name=name, dtype=spec.dtype.name)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelLoadError("edgeport loads SavedModels with exactly one output")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)
