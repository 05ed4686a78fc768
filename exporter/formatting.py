"""Pure functions that turn results into text. No printing here."""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from .parity import ParityReport, RuntimeResult


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def format_report(report: ParityReport) -> str:
    """A parity report as a table: one line per runtime and output."""
    lines = [
        f"parity of {report.meta.get('name', report.bundle)} against {report.reference} "
        f"(atol={report.tolerance.atol:g}, rtol={report.tolerance.rtol:g})",
        f"  {'runtime':<8} {'output':<14} {'result':<7} {'max abs':>9} {'max rel':>9} {'worst row':>9}  notes",
    ]
    for runtime in report.runtimes:
        lines.extend(_runtime_lines(runtime))
    lines.append({
        "passed": "PASSED",
        "failed": "FAILED: the exported model's outputs differ from the reference (see above)",
        "error": "UNDECIDED: a runtime could not run the bundle, so its outputs were not compared (see above)",
        "nothing_compared": "UNDECIDED: no runtime that applies to this bundle was checked (see above)",
    }[report.verdict])
    return "\n".join(lines)


def _runtime_lines(runtime: RuntimeResult) -> list[str]:
    if runtime.status in ("error", "not_applicable"):
        label = "error" if runtime.status == "error" else "n/a"
        lines = [f"  {runtime.runtime:<8} {'-':<14} {label:<7} {'':>9} {'':>9} {'':>9}  {runtime.error}"]
        lines += [f"  {'':<8} {'':<14} {'':<7} {'':>9} {'':>9} {'':>9}  {d}" for d in runtime.diagnostics[:5]]
        return lines
    lines = []
    for diff in runtime.outputs:
        notes = [diff.note] if diff.note else []
        if diff.ties:
            notes.append(f"{diff.ties} tied row(s)")
        if diff.mismatched_rows and not diff.note:
            notes.append(f"{diff.mismatched_rows} row(s) out of tolerance")
        worst = "-" if diff.worst_row is None else str(diff.worst_row)
        lines.append(
            f"  {runtime.runtime:<8} {diff.role:<14} {'ok' if diff.passed else 'FAIL':<7} "
            f"{_num(diff.max_abs_diff):>9} {_num(diff.max_rel_diff):>9} {worst:>9}  {'; '.join(notes)}"
        )
    return lines


def format_junit(report: ParityReport) -> str:
    """JUnit XML: one testsuite, one testcase per runtime and output."""
    cases = []
    failures = 0
    for runtime in report.runtimes:
        if runtime.status in ("error", "not_applicable"):
            body = ""
            if runtime.status == "error":
                failures += 1
                body = f"<failure message={quoteattr(runtime.error or 'runtime error')}/>"
            else:
                body = f"<skipped message={quoteattr(runtime.error or 'not applicable')}/>"
            cases.append(f'  <testcase classname="parity.{runtime.runtime}" name="run" time="{runtime.seconds:.3f}">{body}</testcase>')
            continue
        for diff in runtime.outputs:
            body = ""
            if not diff.passed:
                failures += 1
                message = diff.note or (f"max abs diff {_num(diff.max_abs_diff)}, max rel diff {_num(diff.max_rel_diff)}, "
                                        f"worst row {diff.worst_row}")
                body = f"<failure message={quoteattr(message)}/>"
            cases.append(f'  <testcase classname="parity.{runtime.runtime}" name="{diff.role}">{body}</testcase>')
    name = quoteattr(f"edgeport parity {report.meta.get('name', '')}".strip())
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={name} tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")


def format_export(result) -> str:
    """What `edgeport export` prints after the parity table."""
    manifest = result.bundle.manifest
    lines = [
        f"wrote {result.bundle.path} ({manifest.format}, {manifest.source.get('estimator', manifest.source['framework'])}, "
        f"{manifest.source.get('precision', '')}) in {result.seconds:.1f}s"
    ]
    cost = result.report.meta.get("quantization")
    if cost:
        lines.append(
            f"quantized {cost['mode']}: weights {cost['float_weight_bytes'] / 1024:.1f} KB → "
            f"{cost['quantized_weight_bytes'] / 1024:.1f} KB "
            + (f"(saved {100 * cost['saved_fraction']:.0f}%)" if cost['saved_fraction'] > 0
               else f"(grew {-100 * cost['saved_fraction']:.0f}%: see the warning)")
        )
        for runtime, c in cost["against_float_model"].items():
            agreement = "-" if c["label_agreement"] is None else f"{100 * c['label_agreement']:.1f}%"
            lines.append(f"  against the float model in {runtime}: max abs diff {_num(c['max_abs_diff_vs_float'])}, "
                         f"labels agree {agreement}")
    return "\n".join(lines)


def _status(status: str) -> str:
    return {"not_applicable": "n/a"}.get(status, status)


def format_quickstart(result) -> str:
    """The quickstart table: one line per example model, one column per runtime."""
    runtimes = list(dict.fromkeys(r.runtime for m in result.models for r in m.report.runtimes))
    header = f"{'model':<22} {'estimator':<50} {'precision':<9} " + " ".join(f"{r:<8}" for r in runtimes) + "  max abs diff"
    lines = [header, "-" * len(header)]
    for model in result.models:
        source = model.export.bundle.manifest.source
        statuses = {r.runtime: r.status for r in model.report.runtimes}
        diffs = [d.max_abs_diff for r in model.report.runtimes for d in r.outputs if d.max_abs_diff is not None]
        lines.append(
            f"{model.name:<22} {source.get('estimator', '')[:50]:<50} {source.get('precision', ''):<9} "
            + " ".join(f"{_status(statuses.get(r, '-')):<8}" for r in runtimes)
            + f"  {_num(max(diffs) if diffs else None)}"
        )
    lines.append("all example models pass parity in every runtime" if result.passed else "PARITY FAILED for at least one model")
    return "\n".join(lines)
