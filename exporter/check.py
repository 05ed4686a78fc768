"""Checking a bundle: run it in each runtime and compare with the reference.

The reference is the bundle's golden outputs (the original model's outputs on
the sample, stored at export), or the original model run on new data. Each
runtime is run and compared in full before the verdict, and a runtime that
fails to run is a failed section of the report, not a crash.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, InputSpec, read_bundle
from .errors import RowValidationError, RuntimeFailedError, SampleError, UnusedOptionError
from .parity import ParityReport, RuntimeResult, Tolerance, compare_outputs
from .progress import Progress
from .runtimes import get_runtime



def check_bundle(
    bundle_dir: str | Path,
    runtimes: Sequence[str] | None = None,
    *,
    model: str | Path | None = None,
    data: str | Path | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    allow_pickle: bool = False,
    trust: Sequence[str] = (),
    allow_ops: Sequence[str] = (),
    imports: Sequence[str] = (),
    progress: Progress | None = None,
) -> ParityReport:
    """Verify the bundle's hashes, then run it in each runtime against its reference.

    Without `runtimes`, the ones that apply to the bundle's format: python for ONNX, server and node for tfjs.
    """
    progress = progress or (lambda _msg: None)
    if imports and model is None:
        raise UnusedOptionError("--import applies to an original --model that needs your code to load; this check "
                                "runs the bundle only. Leave it out.")
    bundle = read_bundle(bundle_dir)
    runtimes = runtimes or bundle.manifest.default_runtimes
    tolerance = Tolerance(
        atol=bundle.manifest.tolerance["atol"] if atol is None else atol,
        rtol=bundle.manifest.tolerance["rtol"] if rtol is None else rtol,
    )
    if (model is None) != (data is None):
        raise SampleError("--model and --data go together: the original model is run on the data as the reference")
    if model is not None:
        rows, reference, label = _reference_from_model(bundle, model, data, allow_pickle, trust, allow_ops, imports)
    else:
        golden = bundle.golden()
        rows, reference, label = golden["rows"], golden["outputs"], "golden outputs"
        require_rows_fit(bundle, rows, "the rows of golden.json")
    return run_parity(bundle, rows, reference, runtimes, tolerance, label, progress)


def require_rows_fit(bundle: Bundle | Any, rows: list, what: str) -> None:
    """Refuse rows that the bundle's inputs don't accept before any runtime runs: a parity failure must mean
    that the numbers differ, not that the input was wrong. `bundle` is anything with inputs and a layout."""
    from .decoding import feeds_from_rows

    inputs, layout = bundle.inputs, bundle.manifest.layout
    try:
        feeds_from_rows(inputs, layout, rows)
    except RowValidationError as exc:
        raise SampleError(f"{what} don't fit the bundle's inputs: {exc}. No runtime was run.") from exc


def run_parity(
    bundle: Bundle,
    rows: list,
    reference: dict[str, Any],
    runtimes: Sequence[str],
    tolerance: Tolerance,
    reference_label: str,
    progress: Progress,
) -> ParityReport:
    """Run `rows` through each runtime and compare with `reference` (role -> values)."""
    results = []
    for name in dict.fromkeys(runtimes):  # keep order, drop repeats
        run = get_runtime(name)
        progress(f"parity: running {len(rows)} rows in the {name} runtime")
        started = time.perf_counter()
        try:
            output = run(bundle, rows)
        except RuntimeFailedError as exc:
            results.append(RuntimeResult(name, "error", rows=len(rows), seconds=time.perf_counter() - started,
                                         error=str(exc), diagnostics=exc.diagnostics))
            continue
        seconds = time.perf_counter() - started
        if output.not_applicable:
            results.append(RuntimeResult(name, "not_applicable", error=output.not_applicable))
            continue
        diffs = compare_outputs(reference, output.outputs, tolerance, bundle.classes)
        status = "passed" if all(d.passed for d in diffs) else "failed"
        results.append(RuntimeResult(name, status, diffs, rows=len(rows), seconds=seconds,
                                     diagnostics=output.diagnostics))
    return ParityReport(bundle=str(bundle.path), reference=reference_label, tolerance=tolerance,
                        runtimes=tuple(results), meta={"name": bundle.name, "version": bundle.version})


def _reference_from_model(bundle: Bundle, model_path: Any, data_path: Any, allow_pickle: bool,
                          trust: Sequence[str], allow_ops: Sequence[str], imports: Sequence[str] = ()) -> tuple[list, dict, str]:
    from .loading import load_model
    from .registry import get_converter
    from .samples import read_sample, rows_from_table, table_from_rows

    loaded = load_model(model_path, allow_pickle=allow_pickle, trust=trust, allow_ops=allow_ops, imports=imports)
    converter = get_converter(loaded.framework, bundle.manifest.format.split("-")[0])
    layout = bundle.manifest.layout
    rows = rows_from_table(_align(read_sample(data_path), bundle.inputs), bundle.inputs, layout)
    require_rows_fit(bundle, rows, f"the rows of {Path(data_path).name}")  # before the original runs on them
    # the original sees exactly what the runtimes see: the rows after their JSON round trip
    table = table_from_rows(rows, bundle.inputs, layout)
    try:
        reference = converter.reference(loaded, table, classes=bundle.classes)
    except Exception as exc:
        raise SampleError(f"the original model could not predict on {Path(data_path).name}: {exc}") from exc
    return rows, {k: np.asarray(v).tolist() for k, v in reference.items()}, f"{Path(model_path).name} on {Path(data_path).name}"


def _align(table: Any, inputs: Sequence[InputSpec]) -> Any:
    """Refuse data whose columns don't match the bundle's inputs, naming them."""
    if not hasattr(table, "columns"):
        return table
    wanted = [s.column for s in inputs if s.column is not None] or list(inputs[0].columns or ())
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise SampleError(f"--data is missing column(s) {', '.join(map(repr, missing))} that the bundle's inputs need")
    return table
