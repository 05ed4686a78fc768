"""A drift report as text: a table for the terminal, and one self-contained HTML page with a panel per feature
and one for the confidence, training's share of each bucket against live's as bars in inline SVG (no script, no
stylesheet or font from elsewhere). Pure functions: nothing is printed or written here."""
from __future__ import annotations

from html import escape

from .drift import DriftReport, FeatureDrift

WIDTH, HEIGHT, BOTTOM = 520, 190, 70  # the plot's box, and room under and right of it for the rotated bucket labels
COLOURS = {"training": "#8a94a6", "live": "#d9534f", "live-ok": "#2f7ed8"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }
.panels { display: flex; flex-wrap: wrap; gap: 1rem; }
.panel { border: 1px solid #ddd; border-radius: 6px; padding: .75rem 1rem; }
.panel.drift { border-color: #d9534f; }
.panel h2 { font-size: 15px; margin: 0 0 .25rem; }
.verdict { font-weight: 600; }
.drift .verdict { color: #d9534f; }
.note { color: #666; }
text { font-size: 11px; fill: #444; }
"""


def format_drift(report: DriftReport) -> str:
    """The report as a table: one line per feature, then the confidence and the verdict."""
    lines = [f"drift of {report.rows:,} rows against the training data of {report.model} version {report.version}"
             + (f" ({report.rejected:,} rows the model refused count in the features only)" if report.rejected else "")]
    table = [("feature", "training", "live", "PSI", "verdict")]
    for f in (*report.features, *([report.confidence] if report.confidence else [])):
        verdict = f"DRIFT (> {f.threshold:g})" if f.verdict == "drift" else f.verdict
        table.append((f.name, f.training_summary or "-", f.live_summary or "-",
                      "-" if f.psi is None else f"{f.psi:.3f}", verdict + (f": {f.reason}" if f.reason else "")))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines += ["  " + "  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths)), row[4]]) for row in table]
    lines.append(f"drifted: {', '.join(report.drifted)}" if report.drifted else _no_drift(report))
    return "\n".join(lines)


def format_drift_html(report: DriftReport) -> str:
    """The page, as a string: a heading with the verdict, then one panel per feature and the confidence's."""
    drifted = ", ".join(report.drifted)
    everything = (*report.features, *([report.confidence] if report.confidence else []))
    panels = [_panel(f) for f in sorted(everything, key=lambda f: f.verdict != "drift")]  # stable: drifted first
    title = f"Drift of {report.model} version {report.version}"
    verdict = f"drifted: {escape(drifted)}" if drifted else escape(_no_drift(report))
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{escape(title)}</h1>\n"
            f"<p>{report.rows:,} live rows against the training data; <strong>{verdict}</strong>. "
            f"<span class=\"note\">Bars: each bucket's share of the rows, "
            f"<span style=\"color:{COLOURS['training']}\">■ training</span> against "
            f"<span style=\"color:{COLOURS['live-ok']}\">■ live</span> (<span style=\"color:{COLOURS['live']}\">■ live"
            f"</span> where it drifted); drifted features first. PSI above 0.1 is a moderate shift, "
            "above 0.2 a large one.</span></p>\n"
            f"<div class=\"panels\">\n{''.join(panels)}</div>\n</body></html>\n")


def _panel(feature: FeatureDrift) -> str:
    psi = "" if feature.psi is None else f"PSI {feature.psi:.3f} (threshold {feature.threshold:g}) · "
    verdict = {"drift": "DRIFT", "ok": "ok"}.get(feature.verdict, "unknown")
    body = (_bars(feature) + f"<p class=\"note\">training: {escape(feature.training_summary)} · "
            f"live: {escape(feature.live_summary)}</p>") if feature.buckets else \
        f"<p class=\"note\">{escape(feature.reason)}</p>"
    return (f"<section class=\"panel {escape(feature.verdict)}\" data-feature=\"{escape(feature.name)}\">"
            f"<h2>{escape(feature.name)}</h2><p>{psi}<span class=\"verdict\">{verdict}</span></p>{body}</section>\n")


def _bars(feature: FeatureDrift) -> str:
    shares = [[c / max(sum(counts), 1) for c in counts] for counts in (feature.training, feature.live)]
    top = max(max(s) for s in shares) or 1.0
    slot = WIDTH / len(feature.buckets)
    bar = slot * 0.4
    live = COLOURS["live"] if feature.verdict == "drift" else COLOURS["live-ok"]
    parts = [f"<svg width=\"{WIDTH + BOTTOM}\" height=\"{HEIGHT + BOTTOM}\" role=\"img\" "
             f"aria-label=\"{escape(feature.name)}: training against live\">",
             f"<line x1=\"0\" y1=\"{HEIGHT}\" x2=\"{WIDTH}\" y2=\"{HEIGHT}\" stroke=\"#999\"/>"]
    for i, label in enumerate(feature.buckets):
        x = i * slot + slot * 0.1
        for j, (colour, share) in enumerate(((COLOURS["training"], shares[0][i]), (live, shares[1][i]))):
            h = share / top * (HEIGHT - 14)
            parts.append(f"<rect x=\"{x + j * bar:.1f}\" y=\"{HEIGHT - h:.1f}\" width=\"{bar:.1f}\" height=\"{h:.1f}\" "
                         f"fill=\"{colour}\"><title>{escape(label)}: {'training' if j == 0 else 'live'} "
                         f"{share:.1%}</title></rect>")
        cx = i * slot + slot / 2
        parts.append(f"<text x=\"{cx:.1f}\" y=\"{HEIGHT + 12}\" transform=\"rotate(35 {cx:.1f} {HEIGHT + 12})\">"
                     f"{escape(label[:18])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _no_drift(report: DriftReport) -> str:
    judged = [f for f in (*report.features, report.confidence) if f is not None and f.verdict != "unknown"]
    if not judged:
        return "no verdict: nothing could be compared (see each feature's reason)"
    return "no drift above the thresholds"
