"""Text and HTML views of load tests and tuning sweeps: tables (scrolling inside the cell when wide) and charts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from tritonnb.ui.render import scrolling


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


def rows_html(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], highlight: int | None = None, numbered: bool = False
) -> str:
    """An HTML table in a box that scrolls sideways when the cell is narrower; row ``highlight`` in bold;
    ``numbered``: a first column ``#`` counting from 1, as charts name the rows."""
    head = ("<th>#</th>" if numbered else "") + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    bold = ' style="font-weight:bold;background:#eef7e4"'
    body = "".join(
        f"<tr{bold if i == highlight else ''}>"
        + (f"<td>{i + 1}</td>" if numbered else "")
        + "".join(f"<td>{html.escape(_cell(row.get(k)))}</td>" for k in keys)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return scrolling(f'<table class="tnb-perf">{"<tr>" + head + "</tr>"}{body}</table>')


def perf_html(result: Any) -> str:
    """A load test: table, throughput-latency chart, the perf_analyzer command line, error samples."""
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in result.error_samples)
    failed = sum(row["errors"] for row in result.rows)
    if result.streaming:
        what = (
            "a stream over /generate_stream: throughput is responses/s, p50/p95 the time to the first response, "
            "between_* the time between responses (client-side)"
        )
    else:
        what = "latency is client-side, queue/compute columns are Triton's averages per request in the same window"
    reproduce = (
        f"<details><summary>reproduce with perf_analyzer</summary><pre>{html.escape(result.perf_analyzer)}</pre>"
        "</details>"
        if result.perf_analyzer
        else ""
    )
    return (
        f"<div class='tnb-perf-result'><b>load test of {html.escape(result.model)}</b>, "
        f"{result.duration_s:g} s per level; {what}<br>{rows_html(result.rows, result.row_keys)}"
        + (
            f"<div class='tnb-perf-errors' style='color:#c62828'>{failed} requests failed; first few:<ul>{errors}</ul>"
            "</div>"
            if failed or errors
            else ""
        )
        + f"{result.chart().html()}{reproduce}</div>"
    )
