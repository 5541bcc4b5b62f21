"""Progress of a long magic: a progress bar under a kernel, one line per step elsewhere."""

from __future__ import annotations

from typing import Any

from tritonnb.loadtest.results import Row, TuneRow, row_from_dict

__all__ = ["StepProgress", "summary"]


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
        """Record that step ``done`` of ``total`` finished with ``row`` (a load test's or tuning sweep's plain row)."""
        text = f"{done} of {total}: {summary(row_from_dict(row))}"
        if self._bar is not None:
            self._bar.value = done
            self._text.value = text
        else:
            print(f"{self.label} {text}")


def summary(row: Row) -> str:
    """A row in short: its configuration when tuning, the load level, throughput and p95 (where measured)."""
    level = row.level if isinstance(row, TuneRow) else row
    figures = {
        **(row.config.as_dict() if isinstance(row, TuneRow) else {}),
        "concurrency": level.concurrency,
        "throughput": level.throughput,
        "p95_ms": level.p95_ms,
    }
    return ", ".join(
        f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}"
        for name, value in figures.items()
        if value is not None
    )
