"""The HTML of a report: one self-contained page (inline CSS, the scatter as inline SVG,
thumbnails as ``data:`` URIs, one tiny inline script), every text from the data escaped.

A Content-Security-Policy meta tag lets nothing load from anywhere (``default-src 'none'``)
and lets only the page's own script run (by its sha256): even a prompt that escaped
escaping could not run a script or fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aigvqa.pipeline.evaluation.metrics import (
    MappingFitWarning,
    all_metrics,
    fit_logistic,
    logistic_4,
    metric_legend,
    model_level_correlation,
    ranking_metrics,
)
from aigvqa.pipeline.evaluation.results import TABLE_METRICS
from aigvqa.pipeline.html_report.inputs import ReportVideo
from aigvqa.pipeline.html_report.thumbs import Thumbnail

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
AGREEMENT_METRICS = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse", "pair_acc", "model_srcc")
RESULT_METRICS = ("srcc", "plcc_logistic", "krcc", "rmse", "pair_acc", "model_srcc")

# Counts the gallery's images that decoded (naturalWidth > 0) and records script errors, into
# #page-check: what a headless browser test reads back from the DOM; the footer shows it.
SCRIPT = """(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  window.addEventListener("load", function () {
    var images = document.querySelectorAll(".gallery img");
    var loaded = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
    }
    var check = document.getElementById("page-check");
    check.setAttribute("data-images", String(images.length));
    check.setAttribute("data-loaded", String(loaded));
    check.setAttribute("data-errors", errors.join(" | "));
    check.textContent = loaded + " of " + images.length + " thumbnail strips shown";
  });
})();"""

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       margin: 0 auto; padding: 1.5em 2em 3em; max-width: 1200px; background: #fafafa; }
h1 { font-size: 1.6em; margin: 0 0 .2em; } h2 { font-size: 1.25em; margin: 1.6em 0 .5em; }
.sources { color: #555; margin: 0 0 1em; } code { font-size: .95em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em;
        margin: .5em 0; }
table { border-collapse: collapse; background: #fff; margin: .4em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; white-space: nowrap; }
.table-wrap { overflow-x: auto; max-width: 100%; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f0f0f0; }
.legend { color: #555; font-size: .9em; margin: .3em 0 0 1.2em; padding: 0; }
svg.scatter { background: #fff; border: 1px solid #ddd; }
svg.scatter text { font: 11px system-ui, sans-serif; fill: #333; }
.gallery { display: flex; flex-direction: column; gap: .8em; }
.card { display: flex; flex-wrap: wrap; gap: .5em 1em; background: #fff; border: 1px solid #ddd;
        border-radius: 6px; padding: .6em; margin: 0; }
.card img { max-width: 100%; height: auto; border-radius: 3px; background: #111; }
.missing { width: 320px; max-width: 100%; min-height: 72px; box-sizing: border-box;
           display: flex; align-items: center; padding: .5em; color: #8a1c1c;
           background: repeating-linear-gradient(45deg, #f6f6f6, #f6f6f6 8px, #ececec 8px,
           #ececec 16px); border: 1px dashed #bbb; border-radius: 3px; font-size: .9em;
           overflow-wrap: anywhere; }
figcaption { flex: 1 1 260px; min-width: 0; }
.score { font-size: 1.05em; } .score b { font-size: 1.2em; }
.prompt { margin: .2em 0; overflow-wrap: anywhere; }
.meta, .decode-note { color: #666; font-size: .9em; overflow-wrap: anywhere; }
footer { margin-top: 2em; color: #777; font-size: .85em; }
"""


def e(value) -> str:
    """Escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def content_security_policy() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


# -- numbers ------------------------------------------------------------------------------


def paired(videos: Sequence[ReportVideo], label: str) -> list[tuple[ReportVideo, float, float]]:
    """(video, predicted, MOS) of the videos with both a finite prediction and a MOS."""
    out = []
    for v in videos:
        pred, mos = v.value(label, "predicted"), v.value(label, "mos")
        if pred is not None and mos is not None:
            out.append((v, pred, mos))
    return out


def agreement(videos: Sequence[ReportVideo], label: str) -> dict:
    """The metrics of the predictions on ``label`` against MOS over the videos that have
    both, with ``n``; pair acc needs a prompt with two videos, model SRCC 3 generators."""
    pairs = paired(videos, label)
    row: dict = {"dimension": label, "n": len(pairs)}
    if len(pairs) < 2:
        return row
    pred = np.array([p for _, p, _ in pairs])
    mos = np.array([m for _, _, m in pairs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MappingFitWarning)
        metrics = all_metrics(mos, pred)
    row.update({m: metrics[m] for m in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse")})
    row["logistic_fallback"] = metrics["logistic_fallback"]
    prompts = np.array([v.prompt_id or v.prompt for v, _, _ in pairs], dtype=object)
    if len(set(prompts.tolist()) - {""}) < len(pairs):  # some prompt has two videos
        row["pair_acc"] = ranking_metrics(mos, pred, prompts)["pair_acc"]
    generators = [v.generator for v, _, _ in pairs]
    if all(generators) and len(set(generators)) >= 3:
        row["model_srcc"] = model_level_correlation(pred, mos, np.array(generators))["srcc"]
    return row


# -- pieces of the page -------------------------------------------------------------------


def agreement_table(rows: Sequence[dict]) -> str:
    names = [m for m in AGREEMENT_METRICS if any(m in r for r in rows)]
    head = "".join(f"<th>{e(TABLE_METRICS[m])}</th>" for m in names)
    body = []
    for r in rows:
        cells = "".join(f"<td>{fmt(r.get(m))}</td>" for m in names)
        body.append(f"<tr><td>{e(r['dimension'])}</td><td>{r['n']}</td>{cells}</tr>")
    fallbacks = [r["dimension"] for r in rows if r.get("logistic_fallback")]
    notes = (
        f'<p class="legend">PLCC (logistic) of {e(", ".join(fallbacks))}: the logistic fit '
        "failed or came out decreasing, so it is the PLCC of the raw predictions.</p>"
        if fallbacks
        else ""
    )
    return (
        '<div class="table-wrap"><table class="evaluation" id="agreement"><thead><tr>'
        f"<th>dimension</th><th>videos</th>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table></div>{notes}" + legend(names)
    )


def legend(names: Sequence[str]) -> str:
    lines = metric_legend(names, prefix="").splitlines()
    return '<ul class="legend">' + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>"


def results_table(results: Sequence) -> str:
    """The cross-validated evaluation (``EvaluationResult``s): median ± std over trials."""
    names = [m for m in RESULT_METRICS if any(m in r.metric_names() for r in results if r.trials)]
    head = "".join(f"<th>{e(TABLE_METRICS[m])}</th>" for m in names)
    body = []
    for r in results:
        for label in r.label_names:
            cells = "".join(
                f"<td>{fmt(r.median(m, label))} ± {fmt(r.std(m, label))}</td>"
                if m in r.metric_names()
                else "<td>n/a</td>"
                for m in names
            )
            body.append(
                f'<tr><td class="text">{e(r.head)}</td><td class="text">{e(label)}</td>'
                f'<td class="text"><code>{e(r.split)}</code></td><td>{len(r.trials)}</td>'
                f"{cells}</tr>"
            )
    return (
        '<div class="table-wrap"><table class="evaluation" id="cross-validated"><thead><tr>'
        f"<th>head</th><th>dimension</th><th>split</th><th>trials</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>" + legend(names)
    )


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    digits = max(0, 1 - math.floor(math.log10(step)))
    first = math.ceil(lo / step - 1e-9)
    out = []
    k = first
    while k * step <= hi + 1e-9 * step:
        out.append(round(k * step, digits))
        k += 1
    return out


def _domain(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


@dataclass
class ScatterPoint:
    x: float
    y: float
    group: str
    tip: str


def scatter_svg(
    points: Sequence[ScatterPoint], x_label: str, y_label: str, width: int = 560, height: int = 400
) -> str:
    """Predicted (x) against MOS (y): one ``<circle class="point">`` per point, coloured by
    group, with the increasing 4-parameter logistic fitted from x to y where the fit holds."""
    left, right, top, bottom = 56, 150, 16, 46
    pw, ph = width - left - right, height - top - bottom
    xs = np.array([p.x for p in points], dtype=float)
    ys = np.array([p.y for p in points], dtype=float)
    x0, x1 = _domain(xs)
    y0, y1 = _domain(ys)

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts = [
        f'<svg class="scatter" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{e(x_label)} against {e(y_label)}, one point per video">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in _ticks(x0, x1):
        parts.append(
            f'<line x1="{sx(t):.1f}" y1="{top + ph}" x2="{sx(t):.1f}" y2="{top + ph + 4}" '
            f'stroke="#999"/><text x="{sx(t):.1f}" y="{top + ph + 16}" '
            f'text-anchor="middle">{t:g}</text>'
        )
    for t in _ticks(y0, y1):
        parts.append(
            f'<line x1="{left - 4}" y1="{sy(t):.1f}" x2="{left}" y2="{sy(t):.1f}" stroke="#999"/>'
            f'<text x="{left - 7}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(x_label)}</text>'
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{e(y_label)}</text>'
    )
    if len(points) >= 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MappingFitWarning)
            fit = fit_logistic(ys, xs)
        if not fit.fell_back:
            grid = np.linspace(xs.min(), xs.max(), 60)
            curve = logistic_4(grid, *fit.params)
            path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(grid, curve))
            parts.append(
                f'<polyline class="fit" points="{path}" fill="none" stroke="#444" '
                'stroke-width="1.5" stroke-dasharray="5 3"/>'
            )
    groups = sorted({p.group for p in points})
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    for p in points:
        parts.append(
            f'<circle class="point" cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4" '
            f'fill="{colour[p.group]}" fill-opacity="0.8" stroke="#fff" stroke-width="0.8">'
            f"<title>{e(p.tip)}</title></circle>"
        )
    for i, g in enumerate(groups[:16]):
        y = top + 10 + 18 * i
        parts.append(
            f'<circle cx="{left + pw + 16}" cy="{y}" r="4" fill="{colour[g]}"/>'
            f'<text x="{left + pw + 26}" y="{y + 4}">{e(_short(g or "no generator", 18))}</text>'
        )
    if len(groups) > 16:
        parts.append(
            f'<text x="{left + pw + 10}" y="{top + 10 + 18 * 16 + 4}">'
            f"+ {len(groups) - 16} more</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def scatter_for(videos: Sequence[ReportVideo], label: str) -> str:
    points = [
        ScatterPoint(
            pred,
            mos,
            v.generator,
            f"{v.video_id}: predicted {pred:.3f}, MOS {mos:.3f}"
            + (f" ({v.generator})" if v.generator else ""),
        )
        for v, pred, mos in paired(videos, label)
    ]
    if not points:
        return ""
    return scatter_svg(points, f"predicted {label}", f"MOS {label}")


def card(video: ReportVideo, thumb: Thumbnail, label: str, by: str) -> str:
    if thumb.uri is not None:
        picture = (
            f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="frames of {e(video.video_id)}">'
        )
    else:
        picture = f'<div class="missing">thumbnail unavailable: {e(thumb.note)}</div>'
    pred, mos = video.value(label, "predicted"), video.value(label, "mos")
    if by == "predicted":
        score = f"predicted {e(label)} <b>{fmt(pred)}</b>" + (
            f" · MOS {fmt(mos)}" if mos is not None else ""
        )
    else:
        score = f"MOS {e(label)} <b>{fmt(mos)}</b>"
    prompt = (
        f'<div class="prompt">{e(video.prompt)}</div>'
        if video.prompt
        else '<div class="prompt meta">(no prompt recorded)</div>'
    )
    meta = [e(video.video_id)]
    if video.generator:
        meta.append(f"generator {e(video.generator)}")
    decode_note = (
        f'<div class="decode-note">{e(thumb.note)}</div>'
        if thumb.uri is not None and thumb.note
        else ""
    )
    return (
        f'<figure class="card" id="video-{e(video.video_id)}">{picture}<figcaption>'
        f'<div class="score">{score}</div>{prompt}<div class="meta">{" · ".join(meta)}</div>'
        f"{decode_note}</figcaption></figure>"
    )


def page(
    *,
    title: str,
    sources_line: str,
    notes: Sequence[str],
    agreement_rows: Sequence[dict],
    results: Sequence,
    scatter: str,
    label: str | None,
    by: str,
    galleries: Sequence[tuple[str, Sequence[tuple[ReportVideo, Thumbnail]]]],
    footer: str,
) -> str:
    body = [f"<h1>{e(title)}</h1>", f'<p class="sources">{sources_line}</p>']
    body += [f'<p class="note">{e(n)}</p>' for n in notes]
    if agreement_rows:
        body += [
            "<h2>Evaluation: these scores against MOS</h2>",
            agreement_table(agreement_rows),
        ]
    if results:
        body += [
            "<h2>Cross-validated evaluation: median ± std over trials</h2>",
            results_table(results),
        ]
    if scatter:
        body += [
            f"<h2>Predicted {e(label)} against MOS</h2>",
            "<p>One point per video with a score and a MOS, coloured by generator. Dashed: the "
            "increasing 4-parameter logistic fitted from scores to MOS, after which PLCC "
            "(logistic) is computed (not drawn where the fit fails). Hover a point for its "
            "video.</p>",
            scatter,
        ]
    for heading, cards in galleries:
        body.append(f"<h2>{e(heading)}</h2>")
        body.append(
            '<div class="gallery">' + "".join(card(v, t, label, by) for v, t in cards) + "</div>"
        )
    body.append(f'<footer><p>{footer}</p><p id="page-check">thumbnails: see above</p></footer>')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy()}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
