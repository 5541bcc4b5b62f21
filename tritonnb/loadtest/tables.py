"""Text and HTML views of load tests and tuning sweeps: tables (scrolling inside the cell when wide) and charts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from tritonnb.loadtest.results import Row

__all__ = ["html_table", "perf_html", "rows_text", "scrolling", "text_table", "tune_html"]


def scrolling(table: str) -> str:
    """A table in a box that scrolls sideways when the cell is narrower than the table, so nothing is cut off."""
    return f'<div class="tnb-table-scroll" style="max-width:100%;overflow-x:auto">{table}</div>'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def text_table(keys: Sequence[str], values: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table: a header of ``keys``, then one line per row of ``values``."""
    table = [list(keys)] + [[_cell(value) for value in line] for line in values]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in table)


def rows_text(rows: Sequence[Row], keys: Sequence[str]) -> str:
    """A fixed-width text table of rows' columns ``keys``."""
    return text_table(keys, [row.values(keys) for row in rows])


def html_table(
    keys: Sequence[str], values: Sequence[Sequence[Any]], highlight: int | None = None, numbered: bool = False
) -> str:
    """An HTML table in a box that scrolls sideways when the cell is narrower; row ``highlight`` in bold;
    ``numbered``: a first column ``#`` counting from 1, as charts name the rows."""
    head = ("<th>#</th>" if numbered else "") + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    bold = ' style="font-weight:bold;background:#eef7e4"'
    body = "".join(
        f"<tr{bold if i == highlight else ''}>"
        + (f"<td>{i + 1}</td>" if numbered else "")
        + "".join(f"<td>{html.escape(_cell(value))}</td>" for value in line)
        + "</tr>"
        for i, line in enumerate(values)
    )
    return scrolling(f'<table class="tnb-perf">{"<tr>" + head + "</tr>"}{body}</table>')


def perf_html(result: Any, chart: bool = True) -> str:
    """A load test: table, throughput-latency chart (unless ``chart`` is False: drawn with others), the
    perf_analyzer command line, error samples."""
    levels = result.levels
    errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in result.error_samples)
    failed = sum(level.errors for level in levels)
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
    table = html_table(result.row_keys, [level.values(result.row_keys) for level in levels])
    return (
        f"<div class='tnb-perf-result'><b>load test of {html.escape(result.label)}</b>, "
        f"{result.duration_s:g} s per level; {what}<br>{table}"
        + (
            f"<div class='tnb-perf-errors' style='color:#c62828'>{failed} requests failed; first few:<ul>{errors}</ul>"
            "</div>"
            if failed or errors
            else ""
        )
        + f"{result.chart().html() if chart else ''}{reproduce}</div>"
    )


def tune_html(result: Any) -> str:
    """A tuning sweep: its summary, a numbered table with the chosen run in bold and a ``front`` column marking the
    Pareto front, and its chart."""
    keys, front = result.row_keys, set(result.front)
    values = [[*run.values(keys), "✓" if i in front else ""] for i, run in enumerate(result.runs)]
    return (
        f"<div class='tnb-tune-result'><b>{html.escape(result.summary())}</b>"
        f"{html_table((*keys, 'front'), values, result.best, numbered=True)}{result.chart().html()}</div>"
    )
