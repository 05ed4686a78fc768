"""edgeport's command line: parse options, call one library function, format what comes back.

Exit codes are decided in one place, `_fail`, which every command goes through
(`@command`): 0 success, otherwise the `exit_code` of the EdgeportError raised
(1 a domain error, one paragraph, no traceback unless --debug; 2 an option the
model's converter doesn't take; 3 parity failed: outputs differ, a ParityError; a runtime that could not run is 1;
4 drift above a threshold, a DriftDetectedError), and 2 for Click's own usage errors.
"""
from __future__ import annotations

import functools
import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from edgeport.errors import InputFileError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Export trained models to the browser, prove parity in the real runtimes, and serve a fallback.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


IMPORT_HELP = ("Import this module of yours first (repeatable; a module name or a .py file). It RUNS that code; "
               "its custom Keras layers and scikit-learn transformers can then load, and the classes it defines "
               "are trusted in .skops files.")


class Target(str, Enum):
    onnx = "onnx"
    tfjs = "tfjs"


class RuntimeName(str, Enum):
    python = "python"
    node = "node"
    browser = "browser"
    server = "server"


class Task(str, Enum):
    classification = "classification"
    regression = "regression"


class LowConfidence(str, Enum):
    server = "server"
    abstain = "abstain"


def _progress(message: str) -> None:
    typer.echo(f"· {message}", err=True)


def _fail(exc: BaseException) -> None:
    """The one place an error becomes an exit code and a message."""
    from edgeport.errors import EdgeportError

    if _state["debug"]:
        raise exc
    code = exc.exit_code if isinstance(exc, EdgeportError) else 1
    message = str(exc) if isinstance(exc, EdgeportError) else f"unexpected {type(exc).__name__}: {exc} (for the traceback, rerun as edgeport --debug COMMAND ...)"
    typer.echo(f"{getattr(exc, 'prefix', 'error')}: {message}", err=True)
    raise typer.Exit(code)


def command(name: Optional[str] = None):
    """Register a Typer command whose every error goes through `_fail`: the CLI's one error boundary."""

    def decorate(function):
        @functools.wraps(function)
        def guarded(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except typer.Exit:
                raise
            except Exception as exc:
                _fail(exc)

        return app.command(name)(guarded)

    return decorate


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-paragraph errors.")) -> None:
    """edgeport: trained model → browser bundle, with a parity gate and a server fallback."""
    _state["debug"] = debug


@command()
def export(
    model: Path = typer.Argument(..., help="Trained model: .skops (recommended), .joblib/.pkl, .keras, a SavedModel dir, an .onnx file, or PyTorch .pt2 (recommended) / TorchScript .pt / torch.save .pt (--allow-pickle)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    to: Target = typer.Option(Target.onnx, "--to", help="Export format."),
    sample: Optional[Path] = typer.Option(None, "--sample", help="Sample input rows: CSV with header, Parquet or .npy."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the file name)."),
    version: str = typer.Option("1", "--version", help="Model version string."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .pkl/.joblib files. Pickles run code when loaded."),
    trust: List[str] = typer.Option([], "--trust", help="Trust this extra type in a .skops file (repeatable)."),
    allow_op: List[str] = typer.Option([], "--allow-op", help="Allow this file/Python/network op in a SavedModel (repeatable)."),
    import_: List[str] = typer.Option([], "--import", help=IMPORT_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out (never a folder of other files)."),
    atol: Optional[float] = typer.Option(None, "--atol", callback=lambda v: _tolerance("--atol", v),
                                         help="Absolute tolerance (default: the converter's)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", callback=lambda v: _tolerance("--rtol", v),
                                         help="Relative tolerance (default: the converter's)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Keras only. tfjs: float16|uint8; onnx: int8 (dynamic)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Keras, ONNX-file, PyTorch and native XGBoost/LightGBM/CatBoost-file classifiers: class names, comma-separated (default 0..k-1)."),
    label_output: Optional[str] = typer.Option(None, "--label-output", help="ONNX file: the output that holds the label."),
    probabilities_output: Optional[str] = typer.Option(None, "--probabilities-output", help="ONNX file: the output that holds class probabilities."),
    value_output: Optional[str] = typer.Option(None, "--value-output", help="ONNX file: the output that holds a regression value."),
    task: Optional[Task] = typer.Option(None, "--task", help="ONNX file, PyTorch or Keras: classification or regression, where the outputs don't say (PyTorch logits: classification adds a softmax; Keras: outputs must be probabilities)."),
    nullable: List[str] = typer.Option([], "--nullable", help="ONNX file: this input accepts missing values (repeatable)."),
    confidence_threshold: float = typer.Option(0.6, "--confidence-threshold", min=0.0, max=1.0, help="Below this the client falls back."),
    on_low_confidence: LowConfidence = typer.Option(LowConfidence.server, "--on-low-confidence", help="Ask the server, or abstain."),
    fallback_version: str = typer.Option("pinned", "--fallback-version", help="Which version the client asks the fallback server for: pinned (the one it runs) or default (the server's own: MLServer's, a registry alias)."),
    fallback_output: List[str] = typer.Option([], "--fallback-output", help="ROLE=NAME: the fallback server's name for an output (repeatable), e.g. probabilities=predict_proba for MLServer's scikit-learn runtime."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the parity report (JSON) here."),
    pii: List[str] = typer.Option([], "--pii", help="An input column holding personal data (repeatable): the server's prediction log drops or hashes it."),
) -> None:
    """Convert a trained model into a bundle and check parity in Python."""
    from edgeport.export import export_model
    from edgeport.formatting import format_export, format_report

    options = {"quantize": quantize} if quantize else {}
    if classes:
        options["classes"] = [c.strip() for c in classes.split(",")]
    options.update(label_output=label_output, probabilities_output=probabilities_output, value_output=value_output,
                   task=task.value if task else None, nullable=nullable or None)  # None: not given
    result = export_model(
        model, out, to=to.value, sample=sample, name=name, version=version, allow_pickle=allow_pickle,
        trust=trust, allow_ops=allow_op, imports=import_, force=force, atol=atol, rtol=rtol, confidence_threshold=confidence_threshold,
        on_low_confidence=on_low_confidence.value, fallback_version=fallback_version,
        fallback_outputs=_pairs("--fallback-output", fallback_output), pii=tuple(pii), progress=_progress, **options,
    )
    if report:
        _write_report(report, result.report.to_dict())
    typer.echo(format_report(result.report))
    typer.echo(format_export(result))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    failure = result.report.failure(result.bundle.name, kept=str(result.bundle.path))
    if failure:
        raise failure


@command()
def check(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    runtime: List[RuntimeName] = typer.Option(
        [], "--runtime", "-r", help="Runtime to check (repeatable). Default: python for ONNX bundles, server and node for tfjs."),
    model: Optional[Path] = typer.Option(None, "--model", help="Original model to compare against (with --data)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Rows to run the original and the bundle on."),
    atol: Optional[float] = typer.Option(None, "--atol", callback=lambda v: _tolerance("--atol", v),
                                         help="Absolute tolerance (default: the bundle's)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", callback=lambda v: _tolerance("--rtol", v),
                                         help="Relative tolerance (default: the bundle's)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here, for CI systems."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow a pickled --model."),
    trust: List[str] = typer.Option([], "--trust", help="Trust this extra type in a .skops --model (repeatable)."),
    allow_op: List[str] = typer.Option([], "--allow-op", help="Allow this file/Python/network op in a SavedModel --model (repeatable)."),
    import_: List[str] = typer.Option([], "--import", help=IMPORT_HELP),
) -> None:
    """Re-run a bundle in each runtime against its golden outputs (or the original model)."""
    from edgeport.check import check_bundle
    from edgeport.formatting import format_junit, format_report

    result = check_bundle(bundle, [r.value for r in runtime] or None, model=model, data=data, atol=atol, rtol=rtol,
                          allow_pickle=allow_pickle, trust=trust, allow_ops=allow_op, imports=import_, progress=_progress)
    if report:
        _write_report(report, result.to_dict())
    if junit:
        _write_text(junit, format_junit(result))
    typer.echo(format_report(result))
    failure = result.failure(str(bundle))
    if failure:
        raise failure


@command()
def demo(
    bundle: List[Path] = typer.Argument(..., help="One or more bundle directories."),
    out: Path = typer.Option(..., "--out", "-o", help="Site directory to write."),
    fallback_url: Optional[str] = typer.Option(None, "--fallback-url", help="OIP v2 server to fall back to (default: none; served by edgeport serve --site, the page falls back to that server)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier site at --out (never a folder of other files)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Use bundles whose parity check failed or never finished."),
) -> None:
    """Write a static site that runs the model in the browser, with an optional server fallback."""
    from edgeport.site import build_site

    result = build_site(bundle, out, fallback_url=fallback_url, force=force, allow_unverified=allow_unverified,
                        progress=_progress)
    typer.echo(f"wrote {result.path} for {', '.join(result.models)}: {result.bytes_raw / 1e6:.1f} MB, "
               f"{result.bytes_gzip / 1e6:.1f} MB gzipped. Serve it over http(s) (file:// can't load WebAssembly).")


@command()
def pack(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Package directory to write."),
    name: Optional[str] = typer.Option(None, "--name", help="npm package name, e.g. @acme/churn (default: the model's name)."),
    version: Optional[str] = typer.Option(None, "--version", help="Package semver (default: the bundle's version, 3 as 3.0.0)."),
    force: bool = typer.Option(False, "--force", help="Replace an empty directory, or a package pack made earlier, at --out (never a folder of other files)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Pack a bundle whose parity check failed or never finished."),
) -> None:
    """Write an npm package of one model: its bundle, index.js loading it with edgeport-client, and types from its manifest."""
    from edgeport.pack import pack as pack_bundle

    result = pack_bundle(bundle, out, name=name, version=version, force=force, allow_unverified=allow_unverified,
                         progress=_progress)
    size = f"{result.bytes / 1e6:.1f} MB" if result.bytes >= 1e6 else f"{result.bytes / 1e3:.0f} kB"
    typer.echo(f"wrote {result.path}: {result.name}@{result.version}, {size}. "
               "Run npm pack there, and install the tarball beside edgeport-client (see its README.md).")


@command()
def triton(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Triton model repository: the model goes to OUT/NAME (a new directory)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Write a bundle whose parity check failed or never finished."),
) -> None:
    """Write a Triton model repository entry (config.pbtxt, VERSION/model.onnx) for Triton's or KServe's onnxruntime backend."""
    from edgeport.triton import write_triton_repository

    result = write_triton_repository(bundle, out, allow_unverified=allow_unverified, progress=_progress)
    pinned = "" if result.triton_version == result.version else " (a client should ask for its default: export --fallback-version default)"
    typer.echo(f"wrote {result.path}: {result.name} version {result.version} as Triton's version {result.triton_version}"
               f"{pinned}. Serve it with tritonserver --model-repository {out}, and point the client's fallbackUrl at it.")


@command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    data: Path = typer.Argument(..., help="Rows to predict: .csv/.tsv, .parquet or .jsonl (one JSON object a line)."),
    out: str = typer.Option(..., "--out", "-o", help="Where predictions go: a .csv/.parquet/.jsonl file, or a SQLAlchemy URL (sqlite:///preds.db, postgresql://...)."),
    table: Optional[str] = typer.Option(None, "--table", help="The table, for a database --out (default predictions)."),
    id_column: Optional[str] = typer.Option(None, "--id", help="The data's key column, kept in the output (default: the row number)."),
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="Write bad rows here (with row number and reason) and go on; without it the first bad row stops the run."),
    workers: int = typer.Option(1, "--workers", min=1, help="Chunks predicted at once (threads)."),
    chunk_rows: int = typer.Option(20_000, "--chunk-rows", min=1, help="Rows read, decoded and run at a time (memory stays about this many rows)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Use a bundle whose parity check failed or never finished."),
) -> None:
    """Batch prediction with the server's artifact and decoder, streaming in chunks with bounded memory."""
    from edgeport.batch import predict_file

    result = predict_file(bundle, data, out, table=table, id_column=id_column, rejects=rejects, workers=workers,
                          chunk_rows=chunk_rows, allow_unverified=allow_unverified, progress=_progress)
    typer.echo(f"predicted {result.predicted:,} of {result.rows:,} rows into {result.out} in {result.seconds:.1f}s "
               f"({result.rows_per_s:,.0f} rows/s, peak memory {result.peak_memory_mb:,.0f} MB)"
               + (f"; {result.rejected:,} rejected into {rejects}" if result.rejected else ""))


@command()
def drift(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    data: Path = typer.Option(..., "--data", help="Live rows: .csv/.tsv, .parquet or .jsonl (streamed)."),
    threshold: float = typer.Option(0.2, "--threshold", help="PSI above which a feature (or the confidence) has drifted."),
    threshold_for: List[str] = typer.Option([], "--threshold-for", help="COL=X: another threshold for this feature, or for confidence (repeatable)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained page: one panel per feature, training against live."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
    min_rows: int = typer.Option(100, "--min-rows", min=1, help="Live values a feature needs before its PSI is a verdict: with fewer it is unknown, not drift."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Use a bundle whose parity check failed or never finished."),
) -> None:
    """Compare live data with the bundle's training data (PSI per feature and for the confidence); exit 4 on drift."""
    from edgeport.drift import drift_file, require_no_drift
    from edgeport.drift_format import format_drift, format_drift_html

    report = drift_file(bundle, data, threshold=threshold, thresholds=_thresholds("--threshold-for", threshold_for),
                        min_rows=min_rows, allow_unverified=allow_unverified, progress=_progress)
    typer.echo(format_drift(report))
    if json_out:
        _write_report(json_out, report.to_dict())
    if html:
        _write_text(html, format_drift_html(report))
    require_no_drift(report)


@command()
def explain(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    data: Path = typer.Option(..., "--data", help="Rows to explain: .csv/.tsv, .parquet or .jsonl."),
    rows: int = typer.Option(5, "--rows", min=1, help="Explain this many rows, from the first."),
    timeout: float = typer.Option(5.0, "--timeout", callback=lambda v: _above_zero("--timeout", v),
                                  help="Time budget per row, seconds."),
    samples: int = typer.Option(1024, "--samples", min=1, help="shap's samples per row, at most."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Use a bundle whose parity check failed or never finished."),
) -> None:
    """Per-column attributions (shap, on the bundle's own ONNX model) for the first rows of a data file."""
    from edgeport.explain import explain_file, format_explanations

    typer.echo(format_explanations(explain_file(bundle, data, rows=rows, timeout_s=timeout, max_samples=samples,
                                                allow_unverified=allow_unverified, progress=_progress)))


REGISTRY_HELP = "Registry: a directory (default $EDGEPORT_REGISTRY or ./registry), or mlflow:TRACKING_URI for MLflow's."
ALIAS_HELP = "The alias to move (the server and the browser resolve NAME@ALIAS; default production)."


@command()
def publish(
    bundle: Path = typer.Argument(..., help="Bundle directory (made by edgeport export)."),
    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Publish a bundle whose parity check failed or never finished."),
) -> None:
    """Copy a bundle into the registry as an immutable NAME/VERSION, after checking every file's hash and its parity."""
    from edgeport.model_registry import open_registry

    info = open_registry(registry).publish(bundle, allow_unverified=allow_unverified, progress=_progress)
    typer.echo(f"published {info.name} version {info.version} (parity {info.parity}). "
               f"Make it live with: edgeport promote {info.name} {info.version}")


@command()
def promote(
    name: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="The published version the alias should point at."),
    alias: str = typer.Option("production", "--alias", help=ALIAS_HELP),
    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP),
    force: bool = typer.Option(False, "--force", help="Promote a version that fails its schema, a hash or its recorded parity."),
) -> None:
    """Point NAME@ALIAS at VERSION. Servers and browsers pick it up on their next request or load, without a restart."""
    from edgeport.model_registry import open_registry

    move = open_registry(registry).promote(name, version, alias=alias, force=force)
    typer.echo(f"{move.name}@{move.alias}: {move.previous or '(unset)'} -> {move.version}")


@command()
def rollback(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option("production", "--alias", help=ALIAS_HELP),
    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP),
) -> None:
    """Move NAME@ALIAS back to the version it pointed at before the last promote."""
    from edgeport.model_registry import open_registry

    move = open_registry(registry).rollback(name, alias=alias)
    typer.echo(f"{move.name}@{move.alias}: {move.previous} -> {move.version}")


@command()
def versions(
    name: str = typer.Argument(..., help="Model name."),
    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP),
) -> None:
    """List a model's versions: aliases, parity, dates, sizes, and why a version can't be promoted."""
    from edgeport.model_registry import open_registry

    rows = [("version", "aliases", "parity", "exported", "published", "size", "problem")]
    for info in open_registry(registry).versions(name):
        size = f"{info.bytes / 1e6:.1f} MB" if info.bytes >= 1e6 else f"{info.bytes / 1e3:.0f} kB"
        rows.append((info.version, ", ".join(info.aliases) or "-", info.parity, info.created[:19], info.published[:19], size,
                     (info.problem or "")[:80]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@command()
def serve(
    path: str = typer.Argument(..., help="A bundle, a folder of bundles, a registry (edgeport publish), or mlflow:TRACKING_URI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    site: Optional[Path] = typer.Option(None, "--site", exists=True, file_okay=False,
                                        help="Serve this site (from edgeport demo) at / (default: a site for PATH, built once and cached in $EDGEPORT_CACHE or ~/.cache/edgeport)."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Allow this origin to call the API (repeatable)."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, "--max-body-bytes", min=1,
                                       help="Refuse larger request bodies (413); each model also refuses more than its largest request needs."),
    max_batch: int = typer.Option(1024, "--max-batch", min=1, help="Refuse requests with more rows (400)."),
    timeout: float = typer.Option(10.0, "--timeout", callback=lambda v: _above_zero("--timeout", v),
                                  help="Per-request timeout, seconds, for receiving the body (408) and for inference (503)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", callback=lambda v: _above_zero("--header-timeout", v),
                                         help="Close a connection whose request head takes longer, seconds."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", callback=lambda v: _above_zero("--keep-alive", v),
                                     help="Close a connection idle for longer, seconds."),
    max_connections: Optional[int] = typer.Option(
        None, "--max-connections", min=1, show_default=False,
        help="Open connections at most (default 1000, fewer if ulimit -n is lower); past it the longest-idle "
             "one is closed, or the newcomer gets a 503."),
    drain_seconds: float = typer.Option(2.0, "--drain-seconds", min=0,
                                        help="On SIGTERM: answer not-ready but keep serving this long, then stop accepting."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Serve bundles whose parity check failed or never finished."),
    alias: str = typer.Option("production", "--alias", help="A registry: /v2/models/NAME answers with NAME@ALIAS (a 409 while it is unset)."),
    cache_mb: int = typer.Option(512, "--cache-mb", min=1, help="A registry: keep loaded versions whose model files come to at most this many MB (least recently used go first)."),
    explain_timeout: float = typer.Option(5.0, "--explain-timeout", callback=lambda v: _above_zero("--explain-timeout", v),
                                          help="Time budget of an explanation (/explain), seconds; past it a 422."),
    explain_samples: int = typer.Option(1024, "--explain-samples", min=1, help="shap's samples per explanation, at most."),
    drift_threshold: float = typer.Option(0.2, "--drift-threshold", callback=lambda v: _psi_threshold("--drift-threshold", v),
                                          help="Live drift (/drift, edgeport_drift_psi): a feature whose PSI is above this has drifted."),
    drift_threshold_for: List[str] = typer.Option([], "--drift-threshold-for", help="COL=X: another live drift threshold for this feature (or confidence), in each model that has it (repeatable)."),
    drift_window: float = typer.Option(60.0, "--drift-window", min=0.0, max=60 * 24 * 366,
                                       help="Live drift is over the last this many minutes (0: since the server started)."),
    drift_min_rows: int = typer.Option(100, "--drift-min-rows", min=1, help="Live values a feature needs before its drift is a verdict (unknown below)."),
    prediction_log: Optional[Path] = typer.Option(None, "--prediction-log", dir_okay=False,
                                                  help="Write one JSON line per predicted row to this file (off by default)."),
    prediction_log_max_mb: float = typer.Option(100.0, "--prediction-log-max-mb", min=0.0001,
                                                help="Rotate the prediction log past this size (FILE.1 ... FILE.3 are kept)."),
    pii: List[str] = typer.Option([], "--pii", help="A column to keep out of the prediction log (repeatable), besides the manifest's pii."),
    pii_mode: str = typer.Option("drop", "--pii-mode", help="PII columns in the prediction log: drop, or hash (HMAC-SHA256 with --pii-salt)."),
    pii_salt: Optional[str] = typer.Option(None, "--pii-salt", envvar="EDGEPORT_PII_SALT", show_envvar=True,
                                           help="The secret salt of --pii-mode hash."),
) -> None:
    """Serve the demo site, the bundle files and the Open Inference Protocol v2 fallback endpoint."""
    from edgeport.extras import require

    for module in ("fastapi", "uvicorn"):
        require(module, "serve", "edgeport serve")
    from edgeport.serving import serve_forever
    from edgeport.server.prediction_log import PredictionLog

    if pii and prediction_log is None:
        from edgeport.errors import OptionError

        raise OptionError(f"--pii {pii[0]}: PII columns are kept out of the prediction log, which is off; add "
                          "--prediction-log FILE to turn it on")
    log = None if prediction_log is None else PredictionLog(
        prediction_log, max_bytes=max(1, int(prediction_log_max_mb * 2**20)), pii=pii, pii_mode=pii_mode, salt=pii_salt)
    serve_forever(path, host=host, port=port, site=site, cors_origins=tuple(cors_origin), prediction_log=log,
                  max_body_bytes=max_body_bytes, max_batch=max_batch, timeout_s=timeout,
                  header_timeout_s=header_timeout, keep_alive_s=keep_alive, max_connections=max_connections,
                  drain_s=drain_seconds, allow_unverified=allow_unverified, alias=alias, cache_bytes=cache_mb * 2**20,
                  explain_timeout_s=explain_timeout, explain_samples=explain_samples, drift_threshold=drift_threshold,
                  drift_thresholds=_thresholds("--drift-threshold-for", drift_threshold_for),
                  drift_window_s=drift_window * 60 or None, drift_min_rows=drift_min_rows,
                  progress=_progress, on_listening=_announce)


def _pairs(option: str, values: List[str], expected: str = "ROLE=NAME, e.g. probabilities=predict_proba") -> dict[str, str]:
    from edgeport.errors import OptionError

    pairs = {}
    for value in values:
        key, equals, name = value.partition("=")
        if not equals or not key.strip() or not name.strip():
            raise OptionError(f"{option} {value!r}: expected {expected}")
        pairs[key.strip()] = name.strip()
    return pairs


def _tolerance(option: str, value: Optional[float]) -> Optional[float]:
    # NaN would make every comparison pass (a gate switched off), and ±inf or a negative one means nothing
    if value is not None and not 0 <= value < float("inf"):
        raise typer.BadParameter(f"{value} is not a tolerance: give a finite number, 0 or more.", param_hint=f"'{option}'")
    return value


def _thresholds(option: str, values: List[str]) -> dict[str, float]:
    """COL=X pairs of PSI thresholds; OptionError names one that isn't a number above 0."""
    from edgeport.errors import OptionError

    thresholds = {}
    for column, value in _pairs(option, values, "COL=X, e.g. tenure_months=0.3").items():
        try:
            thresholds[column] = float(value)
        except ValueError:
            raise OptionError(f"{option} {column}={value}: {value!r} is not a number") from None
        if not 0 < thresholds[column] < float("inf"):
            raise OptionError(f"{option} {column}={value}: not a PSI threshold; give a number above 0, such as 0.2")
    return thresholds


def _psi_threshold(option: str, value: float) -> float:
    if not 0 < value < float("inf"):  # also refuses nan
        raise typer.BadParameter(f"{value} is not a PSI threshold: give a number above 0, such as 0.2.", param_hint=f"'{option}'")
    return value


def _above_zero(option: str, value: float) -> float:
    if not 0 < value < float("inf"):  # also refuses nan
        raise typer.BadParameter(f"{value} is not a number of seconds above 0.", param_hint=f"'{option}'")
    return value


@command()
def quickstart(
    out: Path = typer.Option(Path("out"), "--out", help="Where the example models, bundles and site go."),
    runtime: List[RuntimeName] = typer.Option(
        [RuntimeName.python, RuntimeName.node, RuntimeName.browser], "--runtime", "-r", help="Runtimes to check."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the demo when done (--no-serve stops after building)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to serve on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to serve on."),
) -> None:
    """Train the example models, export them, check parity everywhere, build the demo and serve it."""
    from edgeport.formatting import format_quickstart
    from edgeport.quickstart import quickstart as run

    def built(result, site) -> None:
        typer.echo(format_quickstart(result))
        if site is not None:
            typer.echo(f"demo site: {site.path} ({site.bytes_raw / 1e6:.1f} MB, {site.bytes_gzip / 1e6:.1f} MB gzipped)")

    run(out, [r.value for r in runtime], serve=serve, host=host, port=port, progress=_progress, on_built=built,
        on_listening=_announce)


@command("install-js")
def install_js(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Install here instead (an empty directory gets a copy of web_demo first)."),
) -> None:
    """Install the JS runtime packages (npm ci) that the node and browser runtimes and demo sites need."""
    from edgeport.webassets import install_js_packages

    result = install_js_packages(directory, progress=_progress)
    typer.echo(f"installed the JS runtime packages in {result.directory / 'node_modules'} ({result.seconds:.0f}s)")
    if not result.default:
        typer.echo(f"edgeport uses them when EDGEPORT_WEB_DEMO={result.directory} is set")


def _announce(url: str, has_site: bool = True) -> None:
    where = f"the demo at {url}/  (OIP v2 at {url}/v2" if has_site else f"OIP v2 at {url}/v2  (bundles at {url}/bundles/"
    typer.echo(f"edgeport is serving {where}; Ctrl-C stops)")


def _write_report(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    """All or nothing: on a full disk the old file (if any) stays, and no empty report is left behind."""
    from edgeport.publish import write_text_atomic

    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise InputFileError(f"cannot write {path}: {exc.strerror or exc}") from exc


if __name__ == "__main__":
    app()
