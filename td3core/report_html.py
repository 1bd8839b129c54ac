"""A job report (`td3-report/1`, see `td3core.report`) as ONE self-contained HTML page:
the evaluation table of every learner, the distillation curves, time and memory, and
the break-even point of the distillation. No external assets (styles inline, plots as
inline SVG), no scripts, standard library only (the API renders it without torch).

Every string that comes from the report is escaped; numbers are formatted here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Series colours (colour-blind safe, Okabe-Ito).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#1b1f24;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}h3{font-size:1rem;margin:1rem 0 .4rem}
.muted{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem .9rem;min-width:10rem}
.card b{display:block;font-size:1.3rem}table{border-collapse:collapse;margin:.5rem 0 1rem;
font-size:.85rem}th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}td,th{white-space:nowrap}
caption{text-align:left;font-weight:600;padding:.2rem 0}
.plots{display:flex;flex-wrap:wrap;gap:1rem}svg{background:#fff;border:1px solid #d0d7de;
border-radius:6px}code{background:#f6f8fa;padding:0 .2rem}
"""


def render_report_html(report: Mapping[str, Any]) -> str:
    """The whole page for one report."""
    title = "TD3 distillation report"
    dataset = _mapping(report.get("dataset"))
    body = [
        f"<h1>{title}</h1>",
        f'<p class="muted">{_e(report.get("format", "td3-report"))} · device '
        f"{_e(report.get('device', '?'))} · data sha256 "
        f"<code>{_e(str(dataset.get('sha256', ''))[:16])}</code></p>",
        _cards(report),
        _dataset_section(report),
        _evaluation_section(report),
        _curves_section(report),
        _cost_section(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


# ------------------------------------------------------------------------ break-even
def break_even(report: Mapping[str, Any], table: Mapping[str, Any] | None = None) -> float | None:
    """How many trainings on the summary instead of the full data pay for the
    distillation: distill_seconds / (full-data training seconds - summary training
    seconds), from the report's timings and its evaluation rows (`table`: one
    learner's rows; default the report's first). `math.inf` when training on the
    summary saves no time; None when the report lacks a number."""
    rows = _mapping(report.get("evaluation") if table is None else table)
    distill = _number(_mapping(report.get("timings")).get("distill_seconds"))
    full = _number(_mapping(rows.get("full")).get("train_seconds"))
    summary = _number(_mapping(rows.get("summary")).get("train_seconds"))
    if distill is None or full is None or summary is None:
        return None
    saved = full - summary
    return distill / saved if saved > 0 else math.inf


def _break_even_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value:.1f} trainings"


# ------------------------------------------------------------------------------ parts
def _cards(report: Mapping[str, Any]) -> str:
    timings = _mapping(report.get("timings"))
    distillation = _mapping(report.get("distillation"))
    cards = [
        ("break-even", _break_even_text(break_even(report))),
        ("distillation", _seconds(timings.get("distill_seconds"))),
        ("teacher", _seconds(timings.get("teacher_seconds"))),
        ("evaluation", _seconds(timings.get("evaluate_seconds"))),
        ("peak memory", _megabytes(report.get("peak_memory_mb"))),
        ("best epoch", _fmt(distillation.get("best_epoch"))),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card">{_e(name)}<b>{_e(value)}</b></div>' for name, value in cards)
        + "</div>"
    )


def _dataset_section(report: Mapping[str, Any]) -> str:
    dataset = _mapping(report.get("dataset"))
    config = _mapping(report.get("config"))
    distill = _mapping(config.get("distill"))
    stats = [(k, dataset.get(k)) for k in ("users", "items", "interactions", "avg_length")]
    stats.append(("sparsity %", dataset.get("sparsity")))
    settings = [
        (k, distill.get(k))
        for k in ("users", "length", "rank", "epochs", "inner_steps", "window", "seed")
        if k in distill
    ]
    return (
        "<h2>Data and settings</h2>"
        + _key_value_table("dataset", stats)
        + _key_value_table("summary size and distillation (mu = users, zeta = length)", settings)
    )


def _key_value_table(caption: str, pairs: Sequence[tuple[str, Any]]) -> str:
    if not pairs:
        return ""
    head = "".join(f"<th>{_e(k)}</th>" for k, _ in pairs)
    cells = "".join(f"<td>{_e(_fmt(v))}</td>" for _, v in pairs)
    return f"<h3>{_e(caption)}</h3><table><tr>{head}</tr><tr>{cells}</tr></table>"


def _evaluation_section(report: Mapping[str, Any]) -> str:
    by_learner = _mapping(report.get("evaluation_by_learner"))
    if not by_learner and report.get("evaluation"):
        by_learner = {"learner": report["evaluation"]}
    if not by_learner:
        return '<h2>Evaluation</h2><p class="muted">no evaluation in this report</p>'
    parts = [
        "<h2>Evaluation</h2>",
        '<p class="muted">mean ± std over runs; uni100: ranked against 100 sampled '
        "negatives, full: against every item. Break-even: distillation seconds / (full-data "
        "training seconds - summary training seconds).</p>",
    ]
    for learner, table in by_learner.items():
        parts.append(_evaluation_table(str(learner), _mapping(table), report))
    return "".join(parts)


def _evaluation_table(learner: str, table: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """The rows' runs (data size, runs, validation score, training time, learning
    rates), then one table of test metrics per protocol."""
    # summary first, then the full data, then the samplers, as a reader compares them
    order = sorted(table, key=lambda name: (name != "summary", name != "full"))
    rows = {name: _mapping(table[name]) for name in order}
    even = _break_even_text(break_even(report, table))
    runs = [
        [
            _e(name),
            *(_e(_fmt(row.get(k))) for k in ("interactions", "runs", "valid_mrr10")),
            _e(_fmt(row.get("train_seconds"))),
            _e(", ".join(_fmt(x) for x in _list(row.get("lr")))),
        ]
        for name, row in rows.items()
    ]
    parts = [
        f'<h3>{_e(learner)} <span class="muted">(break-even: {_e(even)})</span></h3>',
        _table(
            "runs",
            learner,
            ["data", "interactions", "runs", "valid MRR@10", "train s", "lr"],
            runs,
        ),
    ]
    for protocol in ("uni100", "full"):
        metrics = sorted(
            {m for row in rows.values() for m in _mapping(row.get(protocol))}, key=_metric_order
        )
        if metrics:
            cells = [
                [
                    _e(name),
                    *(_mean_std(_mapping(_mapping(row.get(protocol)).get(m))) for m in metrics),
                ]
                for name, row in rows.items()
            ]
            parts.append(_table(protocol, learner, ["data", *metrics], cells))
    return "".join(parts)


def _table(caption: str, learner: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """`rows`: cells already escaped HTML."""
    header = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<table class="evaluation" data-learner="{_e(learner)}" data-part="{_e(caption)}">'
        f"<caption>{_e(caption)}</caption>{header}{body}</table>"
    )


def _metric_order(metric: str) -> tuple[str, float]:
    """HR@5 < HR@10 < HR@20 (numeric cut-offs), then by name."""
    name, _, cut = metric.partition("@")
    try:
        return name, float(cut)
    except ValueError:
        return metric, 0.0


def _curves_section(report: Mapping[str, Any]) -> str:
    curves = [c for c in _list(_mapping(report.get("distillation")).get("curves")) if _mapping(c)]
    if not curves:
        return '<h2>Distillation curves</h2><p class="muted">no curves in this report</p>'
    epochs = [_number(c.get("epoch")) for c in curves]
    xs = [e if e is not None else float(i) for i, e in enumerate(epochs)]
    keys = [k for k in dict.fromkeys(k for c in curves for k in c) if k != "epoch"]
    plots = []
    for key in keys:
        ys = [_number(c.get(key)) for c in curves]
        if any(y is not None for y in ys):
            plots.append(_line_chart(key, xs, {key: ys}, x_label="epoch"))
    return '<h2>Distillation curves</h2><div class="plots">' + "".join(plots) + "</div>"


def _cost_section(report: Mapping[str, Any]) -> str:
    timings = _mapping(report.get("timings"))
    stages = [(k.removesuffix("_seconds"), _number(v)) for k, v in timings.items()]
    training = [
        (f"{learner}: {name}", _number(_mapping(row).get("train_seconds")))
        for learner, table in _mapping(report.get("evaluation_by_learner")).items()
        for name, row in _mapping(table).items()
    ]
    memory = _megabytes(report.get("peak_memory_mb"))
    return (
        "<h2>Time and memory</h2>"
        f"<p>peak memory: <b>{_e(memory)}</b> ({_e(report.get('device', '?'))})</p>"
        '<div class="plots">'
        + _bar_chart("wall time per stage (s)", stages)
        + (_bar_chart("one training run (s)", training) if training else "")
        + "</div>"
    )


# ------------------------------------------------------------------------------- SVG
def _line_chart(
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    x_label: str,
    width: int = 340,
    height: int = 200,
) -> str:
    left, right, top, bottom = 64, 12, 26, 34
    values = [y for ys in series.values() for y in ys if y is not None]
    low, high = _span(values)
    x_low, x_high = _span(list(xs))

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - low) / (high - low) * (height - top - bottom)

    parts = [_svg_open(width, height, title), _axes(width, height, left, right, top, bottom)]
    for value in (low, high):
        parts.append(
            f'<text x="{left - 4}" y="{sy(value) + 4:.1f}" text-anchor="end" '
            f'font-size="10">{_e(f"{value:.3g}")}</text>'
        )
    for value in (x_low, x_high):
        parts.append(
            f'<text x="{sx(value):.1f}" y="{height - bottom + 14}" text-anchor="middle" '
            f'font-size="10">{_e(_fmt(value))}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" text-anchor="middle" '
        f'font-size="10">{_e(x_label)}</text>'
    )
    for colour, (name, ys) in zip(_COLOURS * 4, series.items(), strict=False):
        points = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=False) if y is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-name="{_e(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="2" points="{path}"/>'
        )
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
    parts.append("</svg>")
    return "".join(parts)


def _bar_chart(title: str, bars: Sequence[tuple[str, float | None]], width: int = 420) -> str:
    shown = [(label, value) for label, value in bars if value is not None and value >= 0]
    row, left, top = 20, 170, 26
    height = top + row * max(len(shown), 1) + 10
    high = max((v for _, v in shown), default=0.0) or 1.0
    parts = [_svg_open(width, height, title)]
    for i, (label, value) in enumerate(shown):
        y = top + i * row
        length = value / high * (width - left - 70)
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="11">'
            f"{_e(label[:28])}</text>"
            f'<rect class="bar" x="{left}" y="{y + 3}" width="{length:.1f}" height="{row - 6}" '
            f'fill="{_COLOURS[i % len(_COLOURS)]}"/>'
            f'<text x="{left + length + 4:.1f}" y="{y + 13}" font-size="11">'
            f"{_e(_fmt(value))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
        f'<text x="8" y="16" font-size="12" font-weight="bold">{_e(title)}</text>'
    )


def _axes(width: int, height: int, left: int, right: int, top: int, bottom: int) -> str:
    return (
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#888"/>'
    )


def _span(values: Sequence[float]) -> tuple[float, float]:
    """An axis range that is never empty (one value, or none, still gets a width)."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-12:
        pad = abs(high) * 0.05 or 1.0
        return low - pad, high + pad
    return low, high


# --------------------------------------------------------------------------- values
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: object) -> str:
    number = _number(value)
    if number is None:
        return "–" if value is None else str(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    if abs(number) >= 100:
        return f"{number:.1f}"
    return f"{number:.4g}"


def _mean_std(cell: Mapping[str, Any]) -> str:
    """HTML (escaped here): the mean, and the std beside it in small type."""
    mean, std = _number(cell.get("mean")), _number(cell.get("std"))
    if mean is None:
        return "–"
    if not std:
        return _e(f"{mean:.4g}")
    return f'{_e(f"{mean:.4g}")}<small class="muted"> ± {_e(f"{std:.2g}")}</small>'


def _seconds(value: object) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.1f} s"


def _megabytes(value: object) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.0f} MB"
