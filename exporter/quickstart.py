"""The main job on an embedded default: the example models, end to end.

Train the recipes in models/, export each to a bundle, check parity in every
runtime, and (in the CLI) build the demo site and serve it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .export import ExportResult, export_model
from .parity import ParityReport
from .progress import Progress



@dataclass(frozen=True)
class QuickstartModel:
    name: str
    description: str
    export: ExportResult
    report: ParityReport


@dataclass(frozen=True)
class QuickstartResult:
    root: Path
    models: tuple[QuickstartModel, ...]

    @property
    def passed(self) -> bool:
        return all(m.report.passed for m in self.models)

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"


def run_quickstart(root: str | Path = "out", runtimes: Sequence[str] = ("python", "node", "browser"),
                   progress: Progress | None = None) -> QuickstartResult:
    """Train, export and check every example model under ROOT/models and ROOT/bundles.

    The export's own parity check runs every runtime asked for, so its report is the whole verdict.
    """
    from edgeport.examples import recipes, write_example

    progress = progress or (lambda _msg: None)
    root = Path(root)
    done = []
    for name, train in recipes().items():
        progress(f"[{name}] training")
        example = train()
        model_path, sample_path = write_example(example, root / "models")
        # a tfjs bundle's server artifact (model.onnx) is checked too: it is what the fallback answers with
        extra = ("server",) if example.target == "tfjs" else ()
        exported = export_model(model_path, root / "bundles" / name, to=example.target, sample=sample_path, name=name,
                                force=True, runtimes=[*runtimes, *extra], progress=lambda m, n=name: progress(f"[{n}] {m}"))
        done.append(QuickstartModel(name, example.description, exported, exported.report))
    return QuickstartResult(root=root, models=tuple(done))
