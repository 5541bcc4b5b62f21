"""The refresh controls every live widget shares: interval, pause/resume and refresh now, over its subscriptions."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from tritonnb.observe.poller import Poller, Subscriber

__all__ = ["INTERVALS", "RefreshControls", "closest_interval"]

INTERVALS = [("0.5 s", 0.5), ("1 s", 1.0), ("2 s", 2.0), ("5 s", 5.0), ("10 s", 10.0)]


class RefreshControls:
    """A widget's subscriptions to shared pollers, and the controls that steer them; subscribed from the start."""

    def __init__(self, feeds: list[tuple[Poller, Subscriber]], interval_s: float) -> None:
        self.interval = widgets.Dropdown(
            options=INTERVALS,
            value=closest_interval(interval_s),
            description="refresh",
            layout=widgets.Layout(width="160px"),
        )
        self.pause = widgets.ToggleButton(description="Pause", icon="pause", tooltip="stop polling")
        self.refresh = widgets.Button(description="Refresh now", icon="refresh")
        self._feeds = feeds
        self._handles: list[int | None] = [None] * len(feeds)
        self.interval.observe(self._on_interval, names="value")
        self.pause.observe(self._on_pause, names="value")
        self.refresh.on_click(lambda _: self.refresh_now())
        self.subscribe()

    @property
    def buttons(self) -> list[widgets.Widget]:
        """The controls, for the widget's button row."""
        return [self.interval, self.pause, self.refresh]

    def subscribe(self) -> None:
        """Start being fed, at the chosen interval."""
        for index, (poller, callback) in enumerate(self._feeds):
            self._handles[index] = poller.subscribe(callback, self.interval.value)

    def unsubscribe(self) -> None:
        """Stop being fed (each poller's thread ends when nobody else watches its server)."""
        for index, (poller, _) in enumerate(self._feeds):
            handle, self._handles[index] = self._handles[index], None
            if handle is not None:
                poller.unsubscribe(handle)

    def refresh_now(self) -> None:
        """Poll every server now instead of waiting for the interval."""
        for poller, _ in self._feeds:
            poller.refresh()

    def _on_interval(self, change: dict[str, Any]) -> None:
        for (poller, _), handle in zip(self._feeds, self._handles):
            if handle is not None:
                poller.set_interval(handle, change["new"])

    def _on_pause(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.unsubscribe()
            self.pause.description, self.pause.icon = "Resume", "play"
        else:
            self.subscribe()
            self.pause.description, self.pause.icon = "Pause", "pause"


def closest_interval(interval_s: float) -> float:
    """The refresh choice nearest to ``interval_s``."""
    return min((value for _, value in INTERVALS), key=lambda v: abs(v - interval_s))
