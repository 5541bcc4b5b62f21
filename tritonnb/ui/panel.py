"""The live dashboard and the per-model strip: ipywidgets fed by the shared poller, never by Triton directly."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from tritonnb import state
from tritonnb.observe.monitor import Snapshot, Target
from tritonnb.observe.poller import Poller
from tritonnb.states import ServerState
from tritonnb.ui import render
from tritonnb.ui.controls import RefreshControls

if TYPE_CHECKING:
    from tritonnb.loadtest.charts import Chart

__all__ = ["ModelStrip", "Panel"]


class Panel(widgets.VBox):
    """Health, models, live metrics with a chart, host figures and controls for one Triton server."""

    def __init__(self, target: Target, interval_s: float = 1.0) -> None:
        from tritonnb.ui.live_chart import LiveChart  # matplotlib: not imported for a model's strip

        self.target = target
        self.health = widgets.HTML()
        self.models = widgets.HTML()
        self.chart_image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.chart_image.add_class("tnb-live-chart")
        self.host = widgets.HTML()
        self.message = widgets.HTML()
        self.log_view = widgets.HTML()
        self.show_log = widgets.ToggleButton(description="Log", icon="file-text", tooltip="tail of the server log")
        self._poller = Poller.for_target(target)
        self.live_chart = LiveChart.for_poller(self._poller)
        self.controls = RefreshControls([(self._poller, self._on_snapshot)], interval_s)
        controls = self.controls.buttons
        if target.server is not None:
            self.restart = widgets.Button(
                description="Restart server", icon="repeat", tooltip="restart tritonserver and bind every model again"
            )
            self.restart.on_click(self._on_restart)
            controls += [self.show_log, self.restart]
        super().__init__(
            [self.health, self.models, self.chart_image, self.host, widgets.HBox(controls), self.message, self.log_view]
        )
        self.add_class("tritonnb-panel")
        self.show_log.observe(lambda _: self._update_log(), names="value")

    def __repr__(self) -> str:
        return f"tritonnb panel of {self.target.http_url} (live in a notebook front end)"

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        # runs on the poller thread: only widget values change here, nothing is printed
        self.health.value = render.health_html(snapshot)
        self.models.value = render.models_html(snapshot)
        self.chart_image.value = self.live_chart.update(snapshot)
        self.host.value = render.host_html(snapshot)
        self._update_log()

    def chart(self) -> Chart:
        """The live chart as it is now, as a still image: it stays in a saved notebook and its static HTML, where the
        live panel (a widget) needs a running kernel."""
        return self.live_chart.still()

    def _update_log(self) -> None:
        server = self.target.server
        if self.show_log.value and server is not None and server.state != ServerState.STOPPED:
            self.log_view.value = f'<pre style="max-height:16em;overflow:auto">{html.escape(server.logs(30))}</pre>'
        else:
            self.log_view.value = ""

    def _on_restart(self, _: Any) -> None:
        server = self.target.server
        self.message.value = "<i>restarting…</i>"
        try:
            seconds = server.restart()
            self.message.value = f"restarted in {seconds:.1f} s"
        except Exception as error:
            self.message.value = f'<span style="color:#c62828">restart failed: {html.escape(str(error))}</span>'
        self._poller.refresh()

    def close(self) -> None:
        """Stop polling for this panel and close its widgets."""
        self.controls.unsubscribe()
        super().close()


class ModelStrip(widgets.HTML):
    """One line under a model's card: state, req/s, latency; one live strip per model name."""

    def __init__(self, target: Target, name: str, interval_s: float = 1.0) -> None:
        super().__init__(render.strip_html(name, None))
        self.model_name = name
        previous = state.strips.get(name)
        if previous is not None:  # the cell ran again: its old strip is gone from the page
            previous.close()
        state.strips[name] = self
        self._poller = Poller.for_target(target)
        self._handle: int | None = self._poller.subscribe(self._on_snapshot, interval_s)

    def __repr__(self) -> str:
        return f"tritonnb live strip of model {self.model_name!r}"

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self.value = render.strip_html(self.model_name, snapshot)

    def close(self) -> None:
        """Stop updating and close the widget."""
        if self._handle is not None:
            self._poller.unsubscribe(self._handle)
            self._handle = None
        if state.strips.get(self.model_name) is self:
            del state.strips[self.model_name]
        super().close()
