"""The main job on an embedded default: the example models, end to end (`edgeport quickstart`, `make demo`).

Train the recipes in models/ (edgeport.examples), export each to a bundle,
check parity in every runtime, build the demo site and serve it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .export import ExportResult, export_model
from .errors import ParityError
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
        # the fallback server too, every time: real OIP requests to its app, through its decoder (and, for a
        # tfjs bundle, on its model.onnx): what a browser gets when it gives up must match as well
        extra = ("server",)
        exported = export_model(model_path, root / "bundles" / name, to=example.target, sample=sample_path, name=name,
                                force=True, runtimes=[*runtimes, *extra], progress=lambda m, n=name: progress(f"[{n}] {m}"))
        done.append(QuickstartModel(name, example.description, exported, exported.report))
    return QuickstartResult(root=root, models=tuple(done))


def quickstart(root: str | Path = "out", runtimes: Sequence[str] = ("python", "node", "browser"), *,
               serve: bool = True, host: str = "127.0.0.1", port: int = 8000, progress: Progress | None = None,
               on_built: Optional[Callable[[QuickstartResult, object], None]] = None,
               on_listening: Optional[Callable[[str], None]] = None) -> QuickstartResult:
    """The whole quickstart: check the port (before minutes of training), train, export and check the examples,
    build the demo site at ROOT/site, and serve it until interrupted (unless serve is false).

    on_built(result, site) is called once the verdict is in (site is None when parity failed), before serving.
    Raises ParityError (exit 3) when an example's outputs differ, ParityUndecidedError (exit 1) when a runtime
    could not run; nothing is served then."""
    from .site import build_site

    progress = progress or (lambda _msg: None)
    if serve:
        from .extras import require

        for module in ("fastapi", "uvicorn"):  # before minutes of training, like the port
            require(module, "serve", "edgeport quickstart (which serves the demo; --no-serve doesn't)")
        from .serving import check_port

        check_port(host, port)
    result = run_quickstart(root, runtimes, progress=progress)
    if not result.passed:
        if on_built:
            on_built(result, None)
        failures = [m.report.failure(m.name) for m in result.models if not m.report.passed]
        if any(isinstance(f, ParityError) for f in failures):
            failed = ", ".join(m.name for m in result.models if m.report.verdict == "failed")
            raise ParityError(f"parity failed for {failed}: the exported bundles' outputs differ from the originals' "
                              "(the table above says where); nothing is served")
        raise failures[0]  # undecided: a runtime could not run (its message says which and why)
    site = build_site([m.export.bundle.path for m in result.models], Path(root) / "site", fallback_url="",
                      progress=progress)
    if on_built:
        on_built(result, site)
    if serve:
        from .serving import serve_forever

        serve_forever(result.bundles_dir, host=host, port=port, site=site.path, progress=progress,
                      on_listening=on_listening)
    return result
