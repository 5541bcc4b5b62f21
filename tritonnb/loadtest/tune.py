"""Sweep a served model's dynamic batching and instance count, measure each, recommend the best under a budget."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tritonnb.errors import SpecError, UnknownModelError
from tritonnb.loadtest.perf import Progress, rows_dataframe, run_perf

if TYPE_CHECKING:
    from tritonnb.loadtest.charts import Chart

TUNE_KEYS = (
    "max_batch_size",
    "batch_delay_us",
    "instances",
    "concurrency",
    "throughput",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "errors",
    "fits",
)


@dataclasses.dataclass
class TuneResult:
    """One row per configuration tried; ``best`` indexes the recommended one (None if none fits the budget)."""

    model: str
    rows: list[dict[str, Any]]
    best: int | None
    max_latency_ms: float | None
    applied: bool

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """The recommended configuration (max_batch_size, batch_delay_us, instances), or None."""
        if self.best is None:
            return None
        row = self.rows[self.best]
        return {k: row[k] for k in ("max_batch_size", "batch_delay_us", "instances")}

    @property
    def front(self) -> list[int]:
        """Indexes of the Pareto front: the rows no other error-free row beats on both throughput and p95."""
        return pareto_front(self.rows)

    def _summary(self) -> str:
        budget = f"p95 ≤ {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else "no latency budget"
        if self.best is None:
            return f"no configuration of {self.model!r} met {budget} without errors; the original one is kept"
        state = "applied" if self.applied else "not applied (the original configuration is back; use --apply)"
        return f"best throughput with {budget}: {self.recommendation}, {state}"

    def __repr__(self) -> str:
        from tritonnb.loadtest.tables import rows_text

        return f"{self._summary()}\n{rows_text(self.rows, TUNE_KEYS)}"

    def _repr_html_(self) -> str:
        import html

        from tritonnb.loadtest.tables import rows_html

        front = set(self.front)
        shown = [{**row, "front": "✓" if i in front else ""} for i, row in enumerate(self.rows)]
        return (
            f"<div class='tnb-tune-result'><b>{html.escape(self._summary())}</b>"
            f"{rows_html(shown, (*TUNE_KEYS, 'front'), self.best, numbered=True)}{self.chart().html()}</div>"
        )

    def chart(self) -> Chart:
        """Every configuration as a point (throughput against p95), the Pareto front and the chosen one."""
        from tritonnb.loadtest.charts import tune_chart

        return tune_chart(self)

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (pandas is imported here, and only here)."""
        return rows_dataframe(self.rows, TUNE_KEYS)


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Indexes of the rows no other error-free row beats on both throughput and p95, by throughput."""
    candidates = [i for i, row in enumerate(rows) if row["p95_ms"] is not None and not row["errors"]]
    candidates.sort(key=lambda i: (-rows[i]["throughput"], rows[i]["p95_ms"]))
    front: list[int] = []
    for i in candidates:
        if not front or rows[i]["p95_ms"] < rows[front[-1]]["p95_ms"]:
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["throughput"])


def configurations(max_batch_sizes: Sequence[int], delays_us: Sequence[int], instances: Sequence[int]) -> list[tuple]:
    """The grid to try; the queue delay only matters with batching, so batch size 0 is tried with delay 0 only."""
    grid = []
    for batch, delay, count in itertools.product(max_batch_sizes, delays_us, instances):
        if batch == 0 and delay != min(delays_us):
            continue
        grid.append((batch, 0 if batch == 0 else delay, count))
    return grid


def tune(
    server: Any,
    name: str,
    *,
    max_latency_ms: float | None = None,
    concurrency: Sequence[int] = (8,),
    duration_s: float = 2.0,
    max_batch_sizes: Sequence[int] = (0, 8, 32),
    delays_us: Sequence[int] = (0, 1000),
    instances: Sequence[int] = (1, 2),
    apply: bool = False,
    input_data: Any = None,
    on_progress: Progress | None = None,
) -> TuneResult:
    """Re-bind ``name`` with each configuration (a hot reload under the same name), load-test it, pick the best."""
    if name in server.repository_models:
        raise SpecError(f"model {name!r} comes from a model repository: tuning re-binds the notebook's models only")
    if name not in server.models:
        raise UnknownModelError(f"no model named {name!r} is served; served: {sorted(server.models) or 'none'}")
    slot = server.models[name]
    original = slot.spec
    fn, device, timeout_s = slot.fn, slot.device, slot.timeout_s
    grid = configurations(max_batch_sizes, delays_us, instances)
    rows: list[dict[str, Any]] = []

    def bind(batch: int, delay: int, count: int) -> None:
        server.bind(
            fn,
            name,
            inputs=original.inputs,
            outputs=original.outputs,
            max_batch_size=batch,
            batch_delay_us=delay,
            instances=count,
            device=device,
            timeout_s=timeout_s,
        )

    try:
        for index, (batch, delay, count) in enumerate(grid):
            bind(batch, delay, count)
            result = run_perf(server, name, concurrency, duration_s, input_data)
            for perf_row in result.rows:
                p95 = perf_row["p95_ms"] if perf_row["p95_ms"] is not None else float("inf")
                fits = perf_row["errors"] == 0 and (max_latency_ms is None or p95 <= max_latency_ms)
                rows.append(
                    {"max_batch_size": batch, "batch_delay_us": delay, "instances": count, **perf_row, "fits": fits}
                )
            if on_progress is not None:
                on_progress(index + 1, len(grid), rows[-1])
    except BaseException:  # interrupted or failed: serve what was served before
        bind(original.max_batch_size, original.batch_delay_us, original.instances)
        raise
    fitting = [i for i, r in enumerate(rows) if r["fits"]]
    best = max(fitting, key=lambda i: rows[i]["throughput"]) if fitting else None
    chosen = rows[best] if apply and best is not None else None
    if chosen is not None:
        bind(chosen["max_batch_size"], chosen["batch_delay_us"], chosen["instances"])
    else:
        bind(original.max_batch_size, original.batch_delay_us, original.instances)
    return TuneResult(name, rows, best, max_latency_ms, chosen is not None)
