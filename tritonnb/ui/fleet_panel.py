"""The fleet view: one live row per Triton server (e.g. a teacher watching a room), fed by the shared pollers."""

from __future__ import annotations

import functools
import threading
import time

import ipywidgets as widgets

from tritonnb.observe.monitor import Snapshot, Target
from tritonnb.observe.poller import Poller
from tritonnb.ui import render
from tritonnb.ui.controls import RefreshControls

__all__ = ["RENDER_GAP_S", "FleetPanel"]

RENDER_GAP_S = 0.25


class FleetPanel(widgets.VBox):
    """A table with a row per server: state, models, req/s, p50, failures; a server that is away shows DOWN."""

    def __init__(self, targets: list[Target], interval_s: float = 1.0) -> None:
        by_key: dict[tuple[str, str], Target] = {}
        for target in targets:  # one row per server, as first named
            by_key.setdefault(target.key, target)
        self.targets = list(by_key.values())
        self.table = widgets.HTML(render.fleet_html([(t.http_url, None) for t in self.targets]))
        self._latest: list[Snapshot | None] = [None] * len(self.targets)
        self._lock = threading.Lock()  # each poller calls back from its own thread
        self._rendered_at = 0.0
        self._pollers = [Poller.for_target(target) for target in self.targets]
        feeds = [(poller, functools.partial(self._on_snapshot, index)) for index, poller in enumerate(self._pollers)]
        self.controls = RefreshControls(feeds, interval_s)
        super().__init__([self.table, widgets.HBox(self.controls.buttons)])
        self.add_class("tritonnb-fleet")

    def __repr__(self) -> str:
        return f"tritonnb fleet panel of {len(self.targets)} servers (live in a notebook front end)"

    def _on_snapshot(self, index: int, snapshot: Snapshot) -> None:
        # runs on that server's poller thread: the table is re-rendered from every server's latest snapshot, at most
        # every RENDER_GAP_S (a room of servers would otherwise send it many times a second), but at once when a
        # server's state changes, so that no DOWN or STOPPED waits for another server's next sample
        with self._lock:
            previous, self._latest[index] = self._latest[index], snapshot
            changed = previous is None or previous.state != snapshot.state
            now = time.monotonic()
            if not changed and now - self._rendered_at < RENDER_GAP_S:
                return
            self._rendered_at = now
            self.table.value = render.fleet_html(
                [(target.http_url, latest) for target, latest in zip(self.targets, self._latest)]
            )

    def close(self) -> None:
        """Stop polling for this panel and close its widgets."""
        self.controls.unsubscribe()
        super().close()
