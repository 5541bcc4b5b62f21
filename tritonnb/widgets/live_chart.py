"""The live panel's chart: request rate and latency of each model over the last minutes, drawn with matplotlib.

A full drawing costs about 100 ms of CPU; a panel at 1 Hz cannot pay that every second. So the axes, ticks, legend
and state line are drawn only when they change (the models, a scale step, the server's state) and kept as a
background; each update restores it and draws only the lines on it (blitting, a few ms), then encodes the PNG.
The time axis counts back from the latest sample ("now"), so it does not move between updates; it spans the
last minute, then two, then five as the history grows.
"""

from __future__ import annotations

import io
import math
import threading
import time
import weakref
from typing import Any

from matplotlib.ticker import FuncFormatter, MultipleLocator
from PIL import Image

from tritonnb.charts import COLOURS, ERROR_COLOUR, Chart, new_figure
from tritonnb.monitor import HISTORY_S, Snapshot

LIVE_DPI = 96  # the panel shows the PNG at its own size
SHRINK_BELOW = 0.35  # a scale comes down once the data fills less than this share of it
History = list[tuple[float, float | None, float | None]]
_SHARED: weakref.WeakKeyDictionary[Any, LiveChart] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (at least 0.001)."""
    value = max(value, 1e-3)
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value * (1 - 1e-9))


SPANS_S = (60.0, 120.0, 300.0)  # the time axis grows through these as the history does, up to the window


def _time_ago(span: float) -> FuncFormatter:
    """Tick labels back from "now": in seconds on a span of up to two minutes, else in minutes."""

    def label(seconds: float, _: Any = None) -> str:
        if abs(seconds) < 1:
            return "now"
        return f"{seconds:.0f} s" if span <= 120 and seconds > -120 else f"{seconds / 60:.0f} min"

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
        self._figure.set_dpi(LIVE_DPI)
        self._figure.subplots_adjust(left=0.06, right=0.975, bottom=0.14, top=0.8, wspace=0.16)
        self._rate, self._latency = self._figure.subplots(1, 2)
        self._note_text = self._figure.text(0.01, 0.93, "", fontsize=9, color=ERROR_COLOUR, fontweight="bold")
        self._lines: dict[str, tuple[Any, Any]] = {}
        self._scales = (0.0, 0.0)
        self._span = 0.0
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
            if snapshot.models or snapshot.state == "READY":
                self.histories = {name: list(model.history) for name, model in snapshot.models.items()}
            self.note = "" if snapshot.state == "READY" else f"{snapshot.state}: last data {self._last_sample()}"
            self._drawn = (snapshot, self._blit(snapshot.time))
            return self._drawn[1]

    def still(self) -> Chart:
        """The chart as it is now, drawn whole on a figure of its own: an image that stays in a saved notebook."""
        with self._lock:
            copy = LiveChart(self.window_s, *self._size)
            copy.histories, copy.note = dict(self.histories), self.note
        now = time.time()
        copy._draw_background(copy._scales_for(), copy._span_for(now))
        copy._set_lines(now)
        for line in (line for pair in copy._lines.values() for line in pair):
            line.set_animated(False)
        models = ", ".join(copy.histories) or "no models"
        note = f" ({copy.note})" if copy.note else ""
        minutes = copy._span / 60
        return Chart(copy._figure, f"request rate and latency over the last {minutes:g} min: {models}{note}")

    def _last_sample(self) -> str:
        last = max((history[-1][0] for history in self.histories.values() if history), default=None)
        return "none" if last is None else time.strftime("%H:%M:%S", time.localtime(last))

    def _span_for(self, now: float) -> float:
        """The time axis: the shortest span that holds the history, up to the window."""
        oldest = min((history[0][0] for history in self.histories.values() if history), default=now)
        return next((span for span in SPANS_S if span >= now - oldest and span < self.window_s), self.window_s)

    def _blit(self, now: float) -> bytes:
        scales = self._scales_for()
        if (
            self._background is None
            or scales != self._scales
            or self._span_for(now) != self._span
            or list(self._lines) != list(self.histories)
            or self._note_text.get_text() != self.note
        ):
            self._draw_background(scales, self._span_for(now))
        canvas = self._figure.canvas
        canvas.restore_region(self._background)
        self._set_lines(now)
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
            top = max((point[column] or 0.0 for history in self.histories.values() for point in history), default=0.0)
            if current == 0.0 or top > current or top < current * SHRINK_BELOW:
                current = nice_ceiling(top * 1.05)
            scales.append(current)
        return scales[0], scales[1]

    def _draw_background(self, scales: tuple[float, float], span: float) -> None:
        """Axes, ticks, legend and note, with one (not yet drawn) line per model and axes."""
        figure = self._figure
        for line in (line for pair in self._lines.values() for line in pair):
            line.remove()
        self._lines = {}
        for index, name in enumerate(self.histories):
            colour = COLOURS[index % len(COLOURS)]
            self._lines[name] = (
                self._rate.plot([], [], color=colour, linewidth=1.4, label=name, animated=True)[0],
                self._latency.plot([], [], color=colour, linewidth=1.4, animated=True)[0],
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
            figure.legend(
                handles=[rate for rate, _ in self._lines.values()],
                loc="upper right",
                fontsize=8,
                frameon=False,
                ncols=min(len(self._lines), 6),
            )
        self._note_text.set_text(self.note)
        figure.canvas.draw()
        self._background = figure.canvas.copy_from_bbox(figure.bbox)
        self._scales, self._span = scales, span
        self.full_draws += 1

    def _set_lines(self, now: float) -> None:
        for name, (rate_line, latency_line) in self._lines.items():
            history = self.histories.get(name, [])
            rate_line.set_data(*_series(history, 1, now))
            latency_line.set_data(*_series(history, 2, now))


def _series(history: History, column: int, now: float) -> tuple[list[float], list[float]]:
    """Seconds before ``now`` and the values of one column, gaps (None) left out."""
    points = [(point[0] - now, point[column]) for point in history if point[column] is not None]
    return [x for x, _ in points], [y for _, y in points]
