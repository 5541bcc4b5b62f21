"""Progress of a long magic: a progress bar under a kernel, one line per step elsewhere."""

from __future__ import annotations

from typing import Any


class StepProgress:
    """Shows ``done / total`` steps with a short description of the last one."""

    def __init__(self, total: int, label: str, live: bool) -> None:
        self.total = total
        self.label = label
        self._bar = None
        if live:
            import ipywidgets as widgets
            from IPython.display import display

            self._bar = widgets.IntProgress(
                value=0, min=0, max=total, description=label, layout=widgets.Layout(width="60%")
            )
            self._text = widgets.Label(f"0 of {total}")
            display(widgets.HBox([self._bar, self._text]))

    def step(self, done: int, total: int, row: dict[str, Any]) -> None:
        """Record that step ``done`` of ``total`` finished with ``row``."""
        summary = f"{done} of {total}: " + ", ".join(
            f"{k}={row[k]:.1f}" if isinstance(row[k], float) else f"{k}={row[k]}"
            for k in ("max_batch_size", "batch_delay_us", "instances", "concurrency", "throughput", "p95_ms")
            if k in row and row[k] is not None
        )
        if self._bar is not None:
            self._bar.value = done
            self._text.value = summary
        else:
            print(f"{self.label} {summary}")
