"""Tables and a latency/throughput plot for load tests and tuning sweeps (plain HTML and inline SVG)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def rows_text(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """A fixed-width text table."""
    table = [list(keys)] + [[_cell(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table)


def rows_html(rows: Sequence[dict[str, Any]], keys: Sequence[str], highlight: int | None = None) -> str:
    """An HTML table; row ``highlight`` in bold."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    bold = ' style="font-weight:bold;background:#eef7e4"'
    body = "".join(
        f"<tr{bold if i == highlight else ''}>"
        + "".join(f"<td>{html.escape(_cell(row.get(k)))}</td>" for k in keys)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table class="tnb-perf">{"<tr>" + head + "</tr>"}{body}</table>'


def scatter_svg(
    points: Sequence[tuple[float, float, str]], x_label: str, y_label: str, width: int = 420, height: int = 240
) -> str:
    """Labelled points (x, y, label) joined in order, with axes from zero to the largest value."""
    if not points:
        return ""
    pad = 40
    top_x = max(p[0] for p in points) * 1.1 or 1.0
    top_y = max(p[1] for p in points) * 1.1 or 1.0

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + x / top_x * (width - pad - 10), height - pad - y / top_y * (height - pad - 10)

    coords = [xy(x, y) for x, y, _ in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#1565c0"/>'
        f'<text x="{x + 5:.1f}" y="{y - 5:.1f}" font-size="10">{html.escape(label)}</text>'
        for (x, y), (_, _, label) in zip(coords, points)
    )
    axes = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 5}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="5" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="{width / 2:.0f}" y="{height - 8}" font-size="11" text-anchor="middle">{html.escape(x_label)}'
        f" (max {top_x / 1.1:,.1f})</text>"
        f'<text x="12" y="{height / 2:.0f}" font-size="11" transform="rotate(-90 12 {height / 2:.0f})" '
        f'text-anchor="middle">{html.escape(y_label)} (max {top_y / 1.1:,.1f})</text>'
    )
    return (
        f'<svg class="tnb-perf-plot" width="{width}" height="{height}" style="background:#fafafa">{axes}'
        f'<polyline fill="none" stroke="#90caf9" points="{line}"/>{dots}</svg>'
    )


def perf_html(result: Any) -> str:
    """A load test: table, throughput/latency plot, the perf_analyzer command line, error samples."""
    from tritonnb.perf import ROW_KEYS

    points = [(r["throughput"], r["p95_ms"], f"c={r['concurrency']}") for r in result.rows if r["p95_ms"] is not None]
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in result.error_samples)
    return (
        f"<div class='tnb-perf-result'><b>load test of {html.escape(result.model)}</b>, "
        f"{result.duration_s:g} s per level; latency is client-side, queue/compute columns are Triton's averages "
        f"per request in the same window<br>{rows_html(result.rows, ROW_KEYS)}"
        f"{scatter_svg(points, 'throughput (requests/s)', 'p95 latency (ms)')}"
        + (f"<div>errors, first few:<ul>{errors}</ul></div>" if errors else "")
        + f"<details><summary>reproduce with perf_analyzer</summary><pre>{html.escape(result.perf_analyzer)}</pre>"
        "</details></div>"
    )
