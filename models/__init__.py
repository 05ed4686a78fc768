"""Recipes for edgeport's example models, trained on data scikit-learn ships (no downloads).

Each recipe is a function returning `Example(name, model, sample)`; `write_example`
saves the model as .skops and the sample as CSV, ready for `edgeport export`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Example:
    name: str
    model: Any
    sample: Any  # a DataFrame (saved as CSV) or an ndarray (saved as .npy): what `--sample` gets
    description: str
    framework: str = "sklearn"
    target: str = "onnx"


def recipes(include_keras: bool | None = None) -> dict[str, Callable[[], Example]]:
    """The example recipes; the Keras one when TensorFlow is installed (or include_keras says so)."""
    from .breast_cancer_forest import train as forest
    from .churn import train as churn
    from .iris import train as iris

    found = {"iris": iris, "breast-cancer-forest": forest, "churn": churn}
    if include_keras is None:
        import importlib.util

        include_keras = importlib.util.find_spec("tensorflow") is not None
    if include_keras:
        from .digits_cnn import train as digits

        found["digits-cnn"] = digits
    return found


def write_example(example: Example, directory: str | Path) -> tuple[Path, Path]:
    """Save `example` as DIR/NAME.skops (or .keras) and DIR/NAME.csv (or .npy); return both paths."""
    import numpy as np

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if example.framework == "keras":
        model_path = directory / f"{example.name}.keras"
        example.model.save(model_path)
    else:
        import skops.io as sio

        model_path = directory / f"{example.name}.skops"
        sio.dump(example.model, model_path)
    if isinstance(example.sample, np.ndarray):
        sample_path = directory / f"{example.name}.npy"
        np.save(sample_path, example.sample)
    else:
        sample_path = directory / f"{example.name}.csv"
        example.sample.to_csv(sample_path, index=False)
    return model_path, sample_path
