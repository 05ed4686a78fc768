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
    sample: Any  # a DataFrame: the rows `--sample` gets
    description: str


def recipes() -> dict[str, Callable[[], Example]]:
    from .breast_cancer_forest import train as forest
    from .churn import train as churn
    from .iris import train as iris

    return {"iris": iris, "breast-cancer-forest": forest, "churn": churn}


def write_example(example: Example, directory: str | Path) -> tuple[Path, Path]:
    """Save `example` as DIR/NAME.skops and DIR/NAME.csv; return both paths."""
    import skops.io as sio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / f"{example.name}.skops"
    sample_path = directory / f"{example.name}.csv"
    sio.dump(example.model, model_path)
    example.sample.to_csv(sample_path, index=False)
    return model_path, sample_path
