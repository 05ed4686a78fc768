"""Exporting a trained model to a bundle, then checking parity in Python.

Export and verification are separate verdicts: a bundle whose parity fails is
still written (so it can be inspected), and the result says it failed.
"""
from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import (GOLDEN, GOLDEN_ROWS, PARITY, Bundle, InputSpec, Manifest, OutputSpec, input_columns, write_json,
                     write_manifest)
from .check import require_rows_fit, run_parity
from .decoding import table_columns
from .errors import OptionError, RowValidationError, SampleError
from .loading import load_model
from .parity import ParityReport, Tolerance
from .publish import publish, staging_dir
from .progress import Progress
from .registry import check_options, get_converter
from .runtimes import with_labels
from .samples import feature_stats, head, read_sample, rows_from_table, table_from_rows, table_len



# Fewer sample rows than this prove little: parity on them is a smoke test, not a gate (a warning, not an error:
# a model may really take one kind of row)
MIN_SAMPLE_ROWS = 20


@dataclass(frozen=True)
class ExportResult:
    bundle: Bundle
    report: ParityReport
    seconds: float
    warnings: tuple[str, ...] = ()  # true but not fatal: a tiny sample, a quantization that made the model bigger

    @property
    def passed(self) -> bool:
        return self.report.passed


def export_model(
    model_path: str | Path,
    out: str | Path,
    *,
    to: str = "onnx",
    sample: str | Path | None = None,
    name: str | None = None,
    version: str = "1",
    allow_pickle: bool = False,
    trust: Sequence[str] = (),
    allow_ops: Sequence[str] = (),
    imports: Sequence[str] = (),
    force: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    confidence_threshold: float = 0.6,
    on_low_confidence: str = "server",
    fallback_version: str = "pinned",
    fallback_outputs: dict[str, str] | None = None,
    pii: Sequence[str] = (),
    runtimes: Sequence[str] | None = None,
    progress: Progress | None = None,
    **converter_options: Any,
) -> ExportResult:
    """Load, convert, write the bundle and check parity. Never deletes a failed bundle."""
    progress = progress or (lambda _msg: None)
    started = time.perf_counter()
    out = Path(out)
    progress(f"loading {Path(model_path).name}")
    loaded = load_model(model_path, allow_pickle=allow_pickle, trust=trust, allow_ops=allow_ops, imports=imports)
    converter = get_converter(loaded.framework, to)
    check_options(converter, converter_options)
    converter_options = {k: v for k, v in converter_options.items() if v is not None}
    if sample is None:
        raise SampleError("--sample is required: a few rows of real input (CSV, Parquet or .npy) fix the input "
                          "signature and give the golden rows that parity is checked on")
    data = read_sample(sample)
    staged = staging_dir(out, force)
    try:
        progress(f"converting {loaded.framework} → {to} with {converter.__class__.__name__}")
        converted = converter.convert(loaded, data, progress, **converter_options)
        for relative, content in converted.files.items():
            target = staged / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        inputs = tuple(InputSpec.from_dict(i) for i in converted.inputs)
        layout = converted.layout
        _check_pii(pii, inputs)
        progress(f"computing golden outputs of the original model on {min(table_len(converted.table), GOLDEN_ROWS)} rows")
        rows = rows_from_table(head(converted.table, GOLDEN_ROWS), inputs, layout)
        if pii:  # golden.json ships with the bundle: no personal data in it (the outputs are the original's on these)
            rows = redact_pii(rows, inputs, layout, pii)
            progress(f"golden rows: the values of {', '.join(pii)} replaced (personal data, --pii)")
            encoded = [s.key for s in inputs if s.key in pii and s.categories]
            if encoded:
                progress(f"warning: {', '.join(encoded)} {'is' if len(encoded) == 1 else 'are'} one-hot or ordinal "
                         "encoded: the encoder's categories, the column's training values, are part of the model "
                         "itself (model.onnx and the manifest's inputs) and ship with the bundle; hash or drop such a "
                         "column before training to keep its values out")
        agreed = _nullable_where_the_graph_agrees(converter, loaded, converted, inputs, layout, rows, progress)
        if agreed != inputs:
            _refuse_missing_values_the_graph_answers_differently(agreed, layout, rows, Path(sample).name)
        inputs = agreed
        rows += missing_value_rows(rows, inputs, layout)
        reference = converter.reference(loaded, table_from_rows(rows, inputs, layout), classes=converted.classes)
        reference = {role: np.asarray(values).tolist() for role, values in reference.items()}
        write_json(staged / GOLDEN, {"rows": rows, "outputs": reference})
        tolerance = Tolerance(
            atol=converted.tolerance.atol if atol is None else atol,
            rtol=converted.tolerance.rtol if rtol is None else rtol,
        )
        unknown = set(converted.extra) - {"server_model_file", "quantization"}
        if unknown:
            raise TypeError(f"{type(converter).__name__} returned unknown manifest fields {sorted(unknown)}")
        manifest = Manifest(
            name=name or _default_name(Path(model_path)),
            version=str(version),
            format=converted.format,
            task=converted.task,
            layout=layout,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source={**converted.source, "model_file": Path(model_path).name, "model_sha256": loaded.sha256},
            model_file=converted.model_file,
            server_model_file=converted.extra.get("server_model_file", converted.model_file),
            inputs=inputs,
            outputs=tuple(OutputSpec.from_dict(o) for o in converted.outputs),
            classes=tuple(converted.classes) if converted.classes is not None else None,
            quantization=converted.extra.get("quantization"),
            pii=tuple(dict.fromkeys(pii)),
            feature_stats=feature_stats(converted.table, inputs, layout, pii),
            tolerance={"atol": tolerance.atol, "rtol": tolerance.rtol},
            parity={"passed": False, "pending": True},
            fallback={"confidence_threshold": confidence_threshold, "on_low_confidence": on_low_confidence,
                      "timeout_ms": 2000, "url": None,
                      **_fallback_target(fallback_version, fallback_outputs, [o["role"] for o in converted.outputs])},
        )
        staged_bundle = Bundle(path=staged, manifest=write_manifest(staged, manifest))
        require_rows_fit(staged_bundle, rows, f"the sample's rows (from {Path(sample).name})")
        runtimes = runtimes or getattr(converter, "verify_runtimes", ("python",))
        report = run_parity(staged_bundle, rows, reference, runtimes, tolerance, "golden outputs", progress)
        report = replace(report, bundle=str(out))  # where the bundle will live, not the staging directory
        if "quantization" in converted.extra:
            report = replace(report, meta={**report.meta,
                                           "quantization": quantization_cost(converted.extra["quantization"], report)})
        write_json(staged / PARITY, report.to_dict())
        manifest = write_manifest(staged, replace(manifest, parity=report.summary()))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    bundle = Bundle(path=publish(staged, out), manifest=manifest)  # validated and hashed just now: no second read
    return ExportResult(bundle=bundle, report=report, seconds=time.perf_counter() - started,
                        warnings=export_warnings(table_len(converted.table), report.meta.get("quantization")))


def export_warnings(sample_rows: int, quantization: dict | None) -> tuple[str, ...]:
    """What an export should tell its user even though it succeeded."""
    warnings = []
    if sample_rows < MIN_SAMPLE_ROWS:
        warnings.append(
            f"the sample has {sample_rows} row{'s' if sample_rows != 1 else ''}: parity on so few rows proves little "
            f"(a skew that shows on other values goes unseen). Give --sample at least {MIN_SAMPLE_ROWS} real rows, "
            "ideally a few hundred that cover the values the model will see.")
    if quantization and quantization.get("quantized_weight_bytes", 0) >= quantization.get("float_weight_bytes", 1):
        before, after = quantization["float_weight_bytes"], quantization["quantized_weight_bytes"]
        warnings.append(
            f"quantizing to {quantization['mode']} made the weights bigger, not smaller ({before / 1024:.1f} KB → "
            f"{after / 1024:.1f} KB): this model is too small for the scales and casts that quantization adds to pay "
            "off. Export it without --quantize.")
    return tuple(warnings)


def _nullable_where_the_graph_agrees(converter: Any, loaded: Any, converted: Any, inputs: tuple[InputSpec, ...],
                                     layout: str, rows: list, progress: Progress) -> tuple[InputSpec, ...]:
    """Keep `nullable` only where the exported graph treats a missing value as the original model does.

    The original accepting NaN is not enough: a tree the original routes NaN down one side may be routed down
    the other in ONNX. Each nullable input's missing-value row is run through both (onnxruntime in Python, on
    the server's artifact); where they disagree, missing values are refused there instead, so no runtime can
    answer differently from the model."""
    candidates = [spec for spec in inputs if spec.nullable]
    if not candidates or not rows:
        return inputs
    import onnxruntime as ort

    from .decoding import feeds_from_rows
    from .parity import compare_outputs

    onnx_file = converted.extra.get("server_model_file", converted.model_file)
    session = ort.InferenceSession(converted.files[onnx_file], providers=["CPUExecutionProvider"])
    tolerance = converted.tolerance
    refused = set()
    for spec in candidates:
        probe = missing_value_rows(rows[:1], [spec], layout)
        if not probe:
            continue
        try:
            expected = converter.reference(loaded, table_from_rows(probe, inputs, layout), classes=converted.classes)
            values = session.run([o["name"] for o in converted.outputs], feeds_from_rows(inputs, layout, probe))
        except Exception:  # either side can't take it: refuse missing values there
            refused.add(spec.name)
            continue
        got = with_labels({o["role"]: v for o, v in zip(converted.outputs, values)}, converted.classes)
        expected = {role: np.asarray(v).tolist() for role, v in expected.items()}
        if not all(d.passed for d in compare_outputs(expected, got, tolerance, converted.classes)):
            refused.add(spec.name)
    for name in sorted(refused):
        progress(f"the exported graph does not treat a missing {name} as the original model does: the bundle "
                 "refuses missing values there")
    return tuple(replace(spec, nullable=False) if spec.name in refused else spec for spec in inputs)


def _refuse_missing_values_the_graph_answers_differently(inputs: Sequence[InputSpec], layout: str, rows: list,
                                                          sample_name: str) -> None:
    """The original takes a missing value where the graph would answer it differently, and the sample has one:
    say that, not merely that the bundle refuses the row."""
    from .decoding import feeds_from_rows

    try:
        feeds_from_rows(inputs, layout, rows)
    except RowValidationError as exc:
        if exc.code != "missing-value":
            return  # require_rows_fit names it as usual
        raise SampleError(
            f"{sample_name} has a missing value (row {exc.row}, {exc.field!r}) that the original model takes but the "
            "exported graph would answer differently (for example, a tree trained with missing values sends them "
            "down one side, and the ONNX tree down the other), so the bundle refuses missing values there. Put an "
            "imputer (SimpleImputer) in the pipeline, so the model and the graph treat them alike, or leave rows "
            "with missing values out of the sample and of what the app sends."
        ) from exc


def missing_value_rows(rows: list, inputs: Sequence[InputSpec], layout: str) -> list:
    """One more golden row per nullable input, the first row with that value missing: the path a missing value
    takes (NaN through an imputer, or "" for a string) is then inside the parity gate, whatever the sample held."""
    if not rows or layout == "tensors":
        return []
    extra = []
    for spec in inputs:
        if not spec.nullable:
            continue
        if layout == "columns":
            extra.append({**rows[0], spec.key: None})
        elif isinstance(rows[0], list) and rows[0] and not isinstance(rows[0][0], list):
            extra.append([None, *rows[0][1:]])
    return extra


def quantization_cost(sizes: dict, report: ParityReport) -> dict:
    """What quantizing cost, against the float original: bytes saved, max diff, label agreement."""
    per_runtime = {}
    for runtime in report.runtimes:
        diffs = {d.role: d for d in runtime.outputs}
        if not diffs:
            continue
        numeric = [d.max_abs_diff for d in diffs.values() if d.role != "label" and d.max_abs_diff is not None]
        label = diffs.get("label")
        per_runtime[runtime.runtime] = {
            "max_abs_diff_vs_float": max(numeric) if numeric else None,
            "label_agreement": None if label is None or not runtime.rows else round(1 - label.mismatched_rows / runtime.rows, 4),
        }
    return {**sizes, "against_float_model": per_runtime}


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem if path.is_file() else path.name).strip("-._")
    return (stem or "model")[:64]


def _fallback_target(version_policy: str, outputs: dict[str, str] | None, roles: list[str]) -> dict:
    """The manifest's fallback target beyond the defaults: which version the client asks for, and the server's name
    for each output role it names otherwise (only what differs from the defaults is written)."""
    if version_policy not in ("pinned", "default"):
        raise OptionError(f"--fallback-version {version_policy}: expected pinned or default")
    stray = sorted(set(outputs or {}) - set(roles))
    if stray:
        raise OptionError(f"--fallback-output {stray[0]}=...: this model's outputs have the roles {', '.join(roles)}")
    target = {"version_policy": version_policy} if version_policy != "pinned" else {}
    return {**target, **({"outputs": dict(outputs)} if outputs else {})}


def redact_pii(rows: list, inputs: Sequence[InputSpec], layout: str, pii: Sequence[str]) -> list:
    """The golden rows with each PII column's values replaced: a string by the model's first category (every row
    the same one, so no row keeps its own) or `redacted-N` where the model has no categories, a number by the rows'
    mean (not any one person's value, as a median can be); a missing value stays missing, so the missing-value path
    stays in the parity check."""
    columns = {c.name: c for c in table_columns(inputs, layout) or ()}
    rows = [dict(row) if isinstance(row, dict) else list(row) for row in rows]
    for name in pii:
        column = columns.get(name)
        if column is None:
            continue
        where = name if column.index is None else column.index
        present = [i for i, row in enumerate(rows) if row[where] is not None]
        if column.spec.dtype == "string":
            categories = [c for c in column.spec.categories or () if isinstance(c, str)]
            for n, i in enumerate(present):
                rows[i][where] = categories[0] if categories else f"redacted-{n}"
        elif present:
            mean = float(np.mean([rows[i][where] for i in present]))
            value = round(mean) if column.spec.dtype.startswith("int") else mean
            for i in present:
                rows[i][where] = value
    return rows


def _check_pii(pii: Sequence[str], inputs: Sequence[InputSpec]) -> None:
    """--pii names input columns, all of them known: a typo would leave personal data in the prediction log."""
    known = input_columns([i.to_dict() for i in inputs])
    unknown = [c for c in pii if c not in known]
    if unknown:
        raise OptionError(f"--pii {unknown[0]}: the model has no such input column; its columns are "
                          f"{', '.join(sorted(known))}")
