"""Charts of load tests and tuning sweeps, drawn with matplotlib: a throughput-latency curve per run, and every
configuration of a sweep with its Pareto front. They show as PNG images, so they look the same in JupyterLab, in the
static HTML of an executed notebook and anywhere else a notebook is read, with no JavaScript and no network."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from tritonnb.loadtest.results import Level, TuneRow

__all__ = [
    "BUDGET_COLOUR",
    "BUDGET_ROOM",
    "COLOURS",
    "ERROR_COLOUR",
    "IMAGE_DPI",
    "MAX_NAMED_FAILURES",
    "MAX_NAMED_FRONT",
    "SCREEN_DPI",
    "Chart",
    "config_name",
    "hide_overlapping",
    "new_figure",
    "perf_chart",
    "tune_chart",
]

COLOURS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#546e7a")
BUDGET_COLOUR = "#c62828"
ERROR_COLOUR = "#c62828"
SCREEN_DPI = 100  # the figure's size on the page: inches x this many pixels
IMAGE_DPI = 200  # the PNG holds twice that, so it stays sharp on high-density screens
BUDGET_ROOM = 4.0  # a budget more than this many times the highest point is named, not drawn
MAX_NAMED_FRONT = 8  # Pareto points named in the tuning chart's legend; the table names every point
MAX_NAMED_FAILURES = 4  # runs without a point named under a chart


class Chart:
    """A matplotlib figure that a notebook shows as a PNG (``.figure`` to change it; ``.save(path)`` to keep it)."""

    def __init__(self, figure: Figure, description: str) -> None:
        self.figure = figure
        self.description = description  # what the chart shows, in words (the image's alt text)

    def png(self) -> bytes:
        """The figure as PNG at twice its screen resolution."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=IMAGE_DPI)
        return buffer.getvalue()

    def size_px(self) -> tuple[int, int]:
        """Width and height on the page, in CSS pixels."""
        width, height = self.figure.get_size_inches()
        return round(width * SCREEN_DPI), round(height * SCREEN_DPI)

    def html(self) -> str:
        """An ``<img>`` holding the PNG, for HTML that carries a chart beside tables."""
        width, _ = self.size_px()
        data = base64.b64encode(self.png()).decode()
        return (
            f'<img class="tnb-chart" alt="{html.escape(self.description)}" width="{width}" '
            f'style="max-width:100%;height:auto" src="data:image/png;base64,{data}">'
        )

    def save(self, path: str, **savefig: Any) -> None:
        """Write the chart to a file; the format follows the suffix (png, svg, pdf)."""
        self.figure.savefig(path, **{"dpi": IMAGE_DPI, **savefig})

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        width, height = self.size_px()
        return (
            {"image/png": self.png(), "text/plain": self.description},
            {"image/png": {"width": width, "height": height}},
        )

    def __repr__(self) -> str:
        return self.description


def new_figure(width_in: float, height_in: float, layout: str | None = "constrained") -> Figure:
    """A figure with an Agg canvas, outside pyplot: nothing global, safe on any thread."""
    figure = Figure(figsize=(width_in, height_in), dpi=SCREEN_DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def hide_overlapping(figure: Figure, labels: Sequence[Text]) -> None:
    """Hide each label that would overlap one shown before it, so no two labels ever cover each other (the labels
    take no part in the layout, which is settled first)."""
    for label in labels:
        label.set_in_layout(False)
        label.set_clip_on(True)
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    shown: list[Any] = []
    for label in labels:
        box = label.get_window_extent(renderer).expanded(1.05, 1.1)
        if any(box.overlaps(other) for other in shown):
            label.set_visible(False)
        else:
            shown.append(box)


def _budget(axes: Any, max_latency_ms: float | None, data_top: float) -> tuple[list[Line2D], float]:
    """The p95 budget as a line across the chart, and the top the y axis needs. A budget far above every point is
    named in the legend but not drawn: reaching up to it would squash the points into a strip at the bottom."""
    if max_latency_ms is None:
        return [], data_top
    label = f"budget: p95 ≤ {max_latency_ms:g} ms"
    style = {"color": BUDGET_COLOUR, "linestyle": ":", "linewidth": 1.5}
    if data_top > 0 and max_latency_ms > data_top * BUDGET_ROOM:
        return [Line2D([], [], **style, label=f"{label}, far above")], data_top
    return [axes.axhline(max_latency_ms, **style, label=label)], max(data_top, max_latency_ms)


def _axes_from_zero(axes: Any, x_top: float, y_top: float, x_label: str = "throughput (requests/s)") -> None:
    """Both axes from zero, with room above and right of the largest values for their labels."""
    axes.set_xlim(0, x_top * 1.15 if x_top > 0 else 1.0)
    axes.set_ylim(0, y_top * 1.12 if y_top > 0 else 1.0)
    axes.grid(alpha=0.3)
    axes.set_xlabel(x_label)


def _legend_beside(axes: Any, handles: list[Any]) -> None:
    """The legend right of the plot, where it covers no point."""
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _failure_note(figure: Figure, failed: Sequence[str]) -> None:
    """A red line under the chart naming the runs that have no point because every request failed (the first few;
    the table has them all)."""
    named = "; ".join(failed[:MAX_NAMED_FAILURES]) + (
        f"; and {len(failed) - MAX_NAMED_FAILURES} more" if len(failed) > MAX_NAMED_FAILURES else ""
    )
    figure.supxlabel(f"no successful request: {named}", color=ERROR_COLOUR, fontsize=8, x=0.01, ha="left")


def _run_names(runs: Sequence[Any], labels: Sequence[str] | None) -> list[str]:
    """The given labels, or the runs' model names (numbered when the same model appears twice)."""
    if labels is not None:
        return [str(label) for label in labels]
    names = [getattr(run, "label", run.model) for run in runs]
    return [f"{name} (run {i + 1})" if names.count(name) > 1 else name for i, name in enumerate(names)]


def perf_chart(runs: Sequence[Any], labels: Sequence[str] | None = None, max_latency_ms: float | None = None) -> Chart:
    """Throughput against p50 (dashed) and p95 (solid) latency, one point per concurrency level joined in concurrency
    order and labelled ``c=N``; one colour per run, a budget line when there is a budget, levels with errors marked
    and levels where every request failed listed under the chart."""
    names = _run_names(runs, labels)
    figure = new_figure(7.6, 4.2)
    axes = figure.add_subplot()
    handles: list[Line2D] = []
    level_labels: list[Text] = []
    failed_levels: list[str] = []
    top, right = 0.0, 0.0
    erroring = False
    for index, (run, name) in enumerate(zip(runs, names)):
        colour, dashes = COLOURS[index % len(COLOURS)], index >= len(COLOURS)  # past the palette: dotted p95 too
        levels = sorted(run.levels, key=lambda level: level.concurrency)
        timed = [level for level in levels if level.p95_ms is not None]
        failed_levels += [
            f"{name} c={level.concurrency}: {level.errors} errors" for level in levels if level.p95_ms is None
        ]
        x = [level.throughput for level in timed]
        p95 = [level.p95_ms for level in timed]
        (line,) = axes.plot(x, p95, ":o" if dashes else "-o", color=colour, markersize=5, label=f"{name} p95")
        axes.plot(x, [level.p50_ms for level in timed], "--s", color=colour, markersize=4, alpha=0.75)
        handles += [line, Line2D([], [], color=colour, linestyle="--", marker="s", markersize=4, label=f"{name} p50")]
        top, right = max([top, *p95]), max([right, *x])
        with_errors = [level for level in timed if level.errors]
        if with_errors:
            erroring = True
            axes.plot(
                [level.throughput for level in with_errors],
                [level.p95_ms for level in with_errors],
                "x",
                color=ERROR_COLOUR,
                markersize=10,
                markeredgewidth=2,
            )
        level_labels += [
            axes.annotate(
                f"c={level.concurrency}",
                (level.throughput, level.p95_ms),
                xytext=(4, 5),
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
            for level in timed
        ]
    if erroring:
        handles.append(Line2D([], [], color=ERROR_COLOUR, marker="x", linestyle="", markersize=8, label="had errors"))
    budget_handles, top = _budget(axes, max_latency_ms, top)
    streams = all(getattr(run, "streaming", False) for run in runs)
    _axes_from_zero(axes, right, top, "responses/s" if streams else "throughput (requests/s)")
    handles += budget_handles
    axes.set_ylabel("time to first response (ms)" if streams else "latency (ms)")
    title = f"load test of {names[0]}" if len(runs) == 1 else "load tests: " + ", ".join(names)
    axes.set_title(title, fontsize=11, loc="left")
    _legend_beside(axes, handles)
    if failed_levels:
        _failure_note(figure, failed_levels)
    hide_overlapping(figure, level_labels)
    description = f"{title}: " + "; ".join(
        f"{name} c={level.concurrency} {level.throughput:.1f} req/s p95 {level.p95_ms:.2f} ms"
        for run, name in zip(runs, names)
        for level in run.levels
        if level.p95_ms is not None
    )
    return Chart(figure, description)


def config_name(run: TuneRow, with_concurrency: bool = False) -> str:
    """A tuning configuration in short: batch size, queue delay, instances (and the load level, when a sweep ran
    several)."""
    config = run.config
    name = f"b{config.max_batch_size}/d{config.batch_delay_us}/i{config.instances}"
    return f"{name} c={run.level.concurrency}" if with_concurrency else name


def tune_chart(result: Any) -> Chart:
    """Every configuration of a sweep as a point (throughput against p95), numbered as in the result table: those
    that meet the budget without errors filled, the rest hollow, errors crossed; the Pareto front joined; the chosen
    configuration starred and named in the legend with the front."""
    runs, budget = result.runs, result.max_latency_ms
    levels: list[Level] = [run.level for run in runs]
    figure = new_figure(7.6, 4.4)
    axes = figure.add_subplot()
    timed = [i for i, level in enumerate(levels) if level.p95_ms is not None]
    fits = [i for i in timed if runs[i].fits]
    misses = [i for i in timed if not runs[i].fits]
    errors = [i for i in timed if levels[i].errors]
    front = result.front
    several_levels = len({level.concurrency for level in levels}) > 1

    def name(run: TuneRow) -> str:
        return config_name(run, several_levels)

    fit_label = "meets the budget" if budget is not None else "no errors"

    def xy(indexes: Sequence[int]) -> tuple[list[float], list[Any]]:
        return [levels[i].throughput for i in indexes], [levels[i].p95_ms for i in indexes]

    handles = []
    if fits:
        handles.append(axes.plot(*xy(fits), "o", color="#2e7d32", markersize=7, label=fit_label)[0])
    if misses:
        handles.append(
            axes.plot(*xy(misses), "o", markerfacecolor="none", color="#757575", markersize=7, label="misses it")[0]
        )
    if errors:
        handles.append(axes.plot(*xy(errors), "x", color=ERROR_COLOUR, markersize=10, label="had errors")[0])
    if front:
        ring = {"markersize": 12, "markerfacecolor": "none", "linewidth": 1.2}
        handles.append(axes.plot(*xy(front), "-o", color="#1565c0", label="Pareto front", **ring)[0])
        for i in front[-MAX_NAMED_FRONT:]:
            handles.append(Line2D([], [], linestyle="", label=f"#{i + 1} {name(runs[i])}"))
        if len(front) > MAX_NAMED_FRONT:
            more = len(front) - MAX_NAMED_FRONT
            handles.append(Line2D([], [], linestyle="", label=f"+{more} more on the front (see the table)"))
    if result.best is not None:
        best = levels[result.best]
        handles.append(
            axes.plot(
                best.throughput,
                best.p95_ms,
                "*",
                color="#f9a825",
                markeredgecolor="black",
                markersize=16,
                label=f"chosen #{result.best + 1} {name(runs[result.best])}: {best.throughput:,.0f} req/s, "
                f"p95 {best.p95_ms:.2f} ms",
            )[0]
        )
    timed_x, timed_y = xy(timed)
    budget_handles, top = _budget(axes, budget, max([0.0, *timed_y]))
    handles += budget_handles
    numbers = [
        axes.annotate(
            f"#{i + 1}",
            (levels[i].throughput, levels[i].p95_ms),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
            color="#424242",
        )
        for i in sorted(timed, key=lambda i: (i not in front, i))  # the front's numbers win a clash
    ]
    _axes_from_zero(axes, max([0.0, *timed_x]), top)
    axes.set_ylabel("p95 latency (ms)")
    axes.set_title(f"tuning {result.model}: {len(runs)} runs, # as in the table", fontsize=11, loc="left")
    _legend_beside(axes, handles)
    untimed = [f"#{i + 1} ({level.errors} errors)" for i, level in enumerate(levels) if level.p95_ms is None]
    if untimed:
        _failure_note(figure, untimed)
    hide_overlapping(figure, numbers)
    chosen = f"chosen #{result.best + 1} {name(runs[result.best])}" if result.best is not None else "none fits"
    front_names = ", ".join(f"#{i + 1} {name(runs[i])}" for i in front)
    return Chart(figure, f"tuning {result.model}: {len(runs)} runs; Pareto front {front_names or 'empty'}; {chosen}")
