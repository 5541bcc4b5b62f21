"""Sweep a served model's dynamic batching and instance count, measure each, recommend the best under a budget."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tritonnb.errors import SpecError, UnknownModelError
from tritonnb.loadtest.perf import Progress, rows_dataframe, run_perf
from tritonnb.loadtest.results import BatchConfig, Level, TuneRow

if TYPE_CHECKING:
    from tritonnb.loadtest.charts import Chart

__all__ = ["TUNE_KEYS", "TuneResult", "best_run", "configurations", "fits", "pareto_front", "tune"]

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
    """One row per configuration and load level tried; ``best`` indexes the recommended one (None if none fits the
    budget).

    ``rows`` is plain data: one dict per run, the configuration's keys, the load test's (see ``PerfResult``), then
    ``fits``. ``runs`` reads the same rows as typed ``TuneRow``.
    """

    model: str
    rows: list[dict[str, Any]]
    best: int | None
    max_latency_ms: float | None
    applied: bool

    @property
    def row_keys(self) -> tuple[str, ...]:
        """The columns the table and DataFrame show."""
        return TUNE_KEYS

    @property
    def runs(self) -> list[TuneRow]:
        """The rows as typed runs, in the same order."""
        return [TuneRow.from_dict(row) for row in self.rows]

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """The recommended configuration (max_batch_size, batch_delay_us, instances), or None."""
        if self.best is None:
            return None
        return BatchConfig.from_dict(self.rows[self.best]).as_dict()

    @property
    def front(self) -> list[int]:
        """Indexes of the Pareto front: the rows no other error-free row beats on both throughput and p95."""
        return pareto_front([run.level for run in self.runs])

    def summary(self) -> str:
        """One line: the budget, and the recommendation and whether it was applied."""
        budget = f"p95 ≤ {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else "no latency budget"
        if self.best is None:
            return f"no configuration of {self.model!r} met {budget} without errors; the original one is kept"
        state = "applied" if self.applied else "not applied (the original configuration is back; use --apply)"
        return f"best throughput with {budget}: {self.recommendation}, {state}"

    def __repr__(self) -> str:
        from tritonnb.loadtest.tables import rows_text

        return f"{self.summary()}\n{rows_text(self.runs, self.row_keys)}"

    def _repr_html_(self) -> str:
        from tritonnb.loadtest.tables import tune_html

        return tune_html(self)

    def chart(self) -> Chart:
        """Every configuration as a point (throughput against p95), the Pareto front and the chosen one."""
        from tritonnb.loadtest.charts import tune_chart

        return tune_chart(self)

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (pandas is imported here, and only here)."""
        return rows_dataframe(self.rows, self.row_keys)


def pareto_front(levels: Sequence[Level]) -> list[int]:
    """Indexes of the levels no other error-free level beats on both throughput and p95, by throughput."""
    timed = {i: level.p95_ms for i, level in enumerate(levels) if level.p95_ms is not None and not level.errors}
    candidates = sorted(timed, key=lambda i: (-levels[i].throughput, timed[i]))
    front: list[int] = []
    for i in candidates:
        if not front or timed[i] < timed[front[-1]]:
            front.append(i)
    return sorted(front, key=lambda i: levels[i].throughput)


def configurations(
    max_batch_sizes: Sequence[int], delays_us: Sequence[int], instances: Sequence[int]
) -> list[BatchConfig]:
    """The grid to try; the queue delay only matters with batching, so batch size 0 is tried with delay 0 only."""
    grid = []
    for batch, delay, count in itertools.product(max_batch_sizes, delays_us, instances):
        if batch == 0 and delay != min(delays_us):
            continue
        grid.append(BatchConfig(batch, 0 if batch == 0 else delay, count))
    return grid


def fits(level: Level, max_latency_ms: float | None) -> bool:
    """Whether a level had no errors and, under a budget, a p95 within it."""
    if level.errors:
        return False
    return max_latency_ms is None or (level.p95_ms is not None and level.p95_ms <= max_latency_ms)


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
    """Re-bind ``name`` with each configuration (a hot reload under the same name), load-test it, pick the best.

    ``on_progress`` is called after each configuration with the configurations done, their number and the last run's
    row, a plain dict like those of the result's ``rows``.
    """
    if name in server.repository_models:
        raise SpecError(f"model {name!r} comes from a model repository: tuning re-binds the notebook's models only")
    if name not in server.models:
        raise UnknownModelError.among(name, server.models)
    slot = server.models[name]
    original = slot.spec
    fn, device, timeout_s = slot.fn, slot.device, slot.timeout_s
    served = BatchConfig(original.max_batch_size, original.batch_delay_us, original.instances)
    grid = configurations(max_batch_sizes, delays_us, instances)
    runs: list[TuneRow] = []

    def bind(config: BatchConfig) -> None:
        server.bind(
            fn,
            name,
            inputs=original.inputs,
            outputs=original.outputs,
            max_batch_size=config.max_batch_size,
            batch_delay_us=config.batch_delay_us,
            instances=config.instances,
            device=device,
            timeout_s=timeout_s,
        )

    try:
        for index, config in enumerate(grid):
            bind(config)
            result = run_perf(server, name, concurrency, duration_s, input_data)
            runs += [TuneRow(config, level, fits(level, max_latency_ms)) for level in result.levels]
            if on_progress is not None:
                on_progress(index + 1, len(grid), runs[-1].as_dict())
    except BaseException:  # interrupted or failed: serve what was served before
        bind(served)
        raise
    best = best_run(runs)
    chosen = runs[best].config if apply and best is not None else None
    bind(served if chosen is None else chosen)
    return TuneResult(name, [run.as_dict() for run in runs], best, max_latency_ms, chosen is not None)


def best_run(runs: Sequence[TuneRow]) -> int | None:
    """The index of the fitting run with the highest throughput (None if none fits)."""
    fitting = [i for i, run in enumerate(runs) if run.fits]
    return max(fitting, key=lambda i: runs[i].level.throughput) if fitting else None
