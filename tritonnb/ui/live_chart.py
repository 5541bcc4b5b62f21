"""The live panel's chart: request rate and latency of each model over the last minutes, drawn with matplotlib.

A full drawing costs about 100 ms of CPU; a panel at 1 Hz cannot pay that every second. So the axes, ticks, legend
and state line are drawn only when they change (the models, a scale step, the server's state) and kept as a
background; each update restores it and draws only the lines on it (blitting, a few ms), then encodes the PNG.
The time axis counts back from the latest sample ("now"; for a server that is away, its last sample, so the last
data stays in view), so it does not move between updates; it spans the last minute, then two, then five as the
history grows. Each model keeps its colour for as long as the chart shows it.
"""

from __future__ import annotations

import io
import math
import threading
import time
import weakref
from typing import Any

from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MultipleLocator
from PIL import Image

from tritonnb.loadtest.charts import COLOURS, ERROR_COLOUR, Chart, new_figure
from tritonnb.observe.monitor import HISTORY_S, Snapshot
from tritonnb.states import ServerState

__all__ = ["MAX_LEGEND", "SHRINK_BELOW", "SPANS_S", "History", "LiveChart", "nice_ceiling"]

MAX_LEGEND = 6  # models named in the legend; more are summed up as "+N more"
SHRINK_BELOW = 0.35  # a scale comes down once the data fills less than this share of it
History = list[tuple[float, float | None, float | None]]
_SHARED: weakref.WeakKeyDictionary[Any, LiveChart] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value``, and at least 1 (an idle model's axis reads 0 to 1,
    not a range of invented precision)."""
    value = max(value, 1.0)
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value * (1 - 1e-9))


SPANS_S = (60.0, 120.0, 300.0)  # the time axis grows through these as the history does, up to the window


def _time_ago(span: float) -> FuncFormatter:
    """Tick labels back from "now": in seconds on a span of up to two minutes, else in minutes."""

    def label(seconds: float, _: Any = None) -> str:
        if abs(seconds) < 1:
            return "now"
        return f"{seconds:.0f} s" if span <= 120 else f"{seconds / 60:.0f} min"

    return FuncFormatter(label)


class LiveChart:
    """Keeps each model's history and draws it; ``update`` returns the PNG for a snapshot (safe on any thread)."""

    def __init__(self, window_s: float = HISTORY_S, width_in: float = 9.0, height_in: float = 2.5) -> None:
        self.window_s = window_s
        self.histories: dict[str, History] = {}
        self.note = ""  # why the data stopped, when the server is not READY
        self.full_draws = 0  # how often the background was drawn again (every other update was a blit)
        self._lock = threading.Lock()
        self._size = (width_in, height_in)
        self._figure = new_figure(width_in, height_in, layout=None)  # fixed: the background stays valid
        self._figure.subplots_adjust(left=0.06, right=0.975, bottom=0.14, top=0.8, wspace=0.16)
        self._rate, self._latency = self._figure.subplots(1, 2)
        self._note_text = self._figure.text(0.01, 0.93, "", fontsize=9, color=ERROR_COLOUR, fontweight="bold")
        self._lines: dict[str, tuple[Any, Any]] = {}
        self._scales = (0.0, 0.0)
        self._span = 0.0
        self._now = 0.0  # where the time axis ends: the latest snapshot's time, or the last sample of a server away
        self._colours: dict[str, str] = {}
        self._background: Any = None
        self._drawn: tuple[Snapshot | None, bytes] = (None, b"")

    @classmethod
    def for_poller(cls, poller: Any) -> LiveChart:
        """The one chart of a server's poller: every panel watching that server shows the same image, drawn once."""
        with _SHARED_LOCK:
            chart = _SHARED.get(poller)
            if chart is None:
                chart = _SHARED[poller] = cls()
            return chart

    def update(self, snapshot: Snapshot) -> bytes:
        """Take the snapshot's histories (a server that is not READY keeps the last ones it had) and draw them; the
        same snapshot again (another panel of the same poller) gets the same PNG without drawing."""
        with self._lock:
            if self._drawn[0] is snapshot:
                return self._drawn[1]
            if snapshot.models or snapshot.state == ServerState.READY:
                self.histories = {name: list(model.history) for name, model in snapshot.models.items()}
            last = max((history[-1][0] for history in self.histories.values() if history), default=None)
            away = snapshot.state != ServerState.READY
            self._now = last if away and last is not None else snapshot.time
            when = "none" if last is None else time.strftime("%H:%M:%S", time.localtime(last))
            self.note = f"{snapshot.state}: last data {when}" if away else ""
            self._drawn = (snapshot, self._blit())
            return self._drawn[1]

    def still(self) -> Chart:
        """The chart as it is now, drawn whole on a figure of its own: an image that stays in a saved notebook."""
        with self._lock:
            copy = LiveChart(self.window_s, *self._size)
            copy.histories, copy.note, copy._now = dict(self.histories), self.note, self._now
            copy._colours = dict(self._colours)
        copy._lay_out(copy._scales_for(), copy._span_for(), animated=False)  # drawn whole when shown or saved
        copy._set_lines()
        models = ", ".join(copy.histories) or "no models"
        note = f" ({copy.note})" if copy.note else ""
        minutes = copy._span / 60
        return Chart(copy._figure, f"request rate and latency over the last {minutes:g} min: {models}{note}")

    def _span_for(self) -> float:
        """The time axis: the shortest span that holds the history, up to the window."""
        oldest = min((history[0][0] for history in self.histories.values() if history), default=self._now)
        return next((s for s in SPANS_S if s >= self._now - oldest and s < self.window_s), self.window_s)

    def _blit(self) -> bytes:
        scales, span = self._scales_for(), self._span_for()
        if (
            self._background is None
            or (scales, span) != (self._scales, self._span)
            or list(self._lines) != list(self.histories)
            or self._note_text.get_text() != self.note
        ):
            self._draw_background(scales, span)
        canvas = self._figure.canvas
        canvas.restore_region(self._background)
        self._set_lines()
        for rate_line, latency_line in self._lines.values():
            self._rate.draw_artist(rate_line)
            self._latency.draw_artist(latency_line)
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def _scales_for(self) -> tuple[float, float]:
        """The two y scales: each grows to a nice ceiling of the data, and shrinks only once the data is far below."""
        scales = []
        for column, current in zip((1, 2), self._scales):
            values = (point[column] for history in self.histories.values() for point in history)
            top = max((v for v in values if v is not None and math.isfinite(v)), default=0.0)
            if current == 0.0 or top > current or top < current * SHRINK_BELOW:
                current = nice_ceiling(top * 1.05)
            scales.append(current)
        return scales[0], scales[1]

    def _draw_background(self, scales: tuple[float, float], span: float) -> None:
        """Lay the chart out with its lines left undrawn, draw it, and keep the picture to blit the lines on."""
        self._lay_out(scales, span, animated=True)
        self._figure.canvas.draw()
        self._background = self._figure.canvas.copy_from_bbox(self._figure.bbox)
        self.full_draws += 1

    def _lay_out(self, scales: tuple[float, float], span: float, animated: bool) -> None:
        """Axes, ticks, legend and note, with one line per model and axes (``animated``: left out of a full
        drawing, to be blitted)."""
        figure = self._figure
        for line in (line for pair in self._lines.values() for line in pair):
            line.remove()
        self._lines = {}
        self._colours = {name: colour for name, colour in self._colours.items() if name in self.histories}
        for name in self.histories:
            colour = self._colours.setdefault(name, _free_colour(self._colours.values()))
            self._lines[name] = (
                self._rate.plot([], [], color=colour, linewidth=1.4, label=name, animated=animated)[0],
                self._latency.plot([], [], color=colour, linewidth=1.4, animated=animated)[0],
            )
        for axes, title, scale in (
            (self._rate, "requests/s", scales[0]),
            (self._latency, "latency, ms (mean per interval)", scales[1]),
        ):
            axes.set_xlim(-span, 0)
            axes.set_ylim(0, scale)
            axes.set_title(title, fontsize=9, loc="left")
            axes.xaxis.set_major_locator(MultipleLocator(span / 4 if span <= 120 else 60 * max(1, round(span / 300))))
            axes.xaxis.set_major_formatter(_time_ago(span))
            axes.tick_params(labelsize=8)
            axes.grid(alpha=0.3)
        for legend in list(figure.legends):
            legend.remove()
        if self._lines:
            handles = [rate for rate, _ in self._lines.values()]
            if len(handles) > MAX_LEGEND:
                more = Line2D([], [], linestyle="", label=f"+{len(handles) - MAX_LEGEND + 1} more")
                handles = [*handles[: MAX_LEGEND - 1], more]
            figure.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncols=len(handles))
        self._note_text.set_text(self.note)
        self._scales, self._span = scales, span

    def _set_lines(self) -> None:
        for name, (rate_line, latency_line) in self._lines.items():
            history = self.histories.get(name, [])
            rate_line.set_data(*_series(history, 1, self._now))
            latency_line.set_data(*_series(history, 2, self._now))


def _free_colour(taken: Any) -> str:
    """The first colour no model on the chart has; past the palette, the least used one."""
    taken = list(taken)
    return min(COLOURS, key=lambda colour: (taken.count(colour), COLOURS.index(colour)))


def _series(history: History, column: int, now: float) -> tuple[list[float], list[float]]:
    """Seconds before ``now`` and the values of one column; gaps (None, NaN) left out."""
    points = [(p[0] - now, p[column]) for p in history if p[column] is not None and math.isfinite(p[column])]
    return [x for x, _ in points], [y for _, y in points]
