"""Typed rows of load tests and tuning sweeps. Results hand users plain dicts (``as_dict``); the package reads these.

- ``PerfRow``: one concurrency level of a load test: client-side throughput and latency percentiles, errors, and
  Triton's server-side split per request (``queue_ms`` ... ``compute_output_ms``, one per ``metrics_text.PHASES``).
- ``StreamRow``: one level of a streaming model's load test: responses/s, streams/s, time to the first response and
  between responses.
- ``TuneRow``: one run of a tuning sweep: its ``BatchConfig``, the level it measured, and whether it fits the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "BatchConfig",
    "Level",
    "PerfRow",
    "Row",
    "StreamRow",
    "TuneRow",
    "columns",
    "level_from_dict",
    "row_from_dict",
]

_Flat = TypeVar("_Flat", bound="_FlatRow")


class _Columns:
    """A row that reads as named columns."""

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data: one key per column, in column order."""
        raise NotImplementedError

    def values(self, keys: Sequence[str]) -> list[Any]:
        """The values of columns ``keys``, in that order (None for a column this row does not have)."""
        record = self.as_dict()
        return [record.get(key) for key in keys]


class _FlatRow(_Columns):
    """A frozen dataclass whose fields are its columns."""

    def as_dict(self) -> dict[str, Any]:
        """The row as plain data: one key per column, in column order."""
        return {name: getattr(self, name) for name in columns(type(self))}

    @classmethod
    def from_dict(cls: type[_Flat], record: Mapping[str, Any]) -> _Flat:
        """The row of a plain record; keys that are not columns of this row are left out."""
        return cls(**{name: record[name] for name in columns(cls) if name in record})


@dataclasses.dataclass(frozen=True)
class PerfRow(_FlatRow):
    """One concurrency level of a load test: throughput in requests/s, client-side latency percentiles, and Triton's
    average time per request in each server-side phase over the same window (None where the server gave none)."""

    concurrency: int
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int | None
    queue_ms: float | None = None
    compute_input_ms: float | None = None
    compute_infer_ms: float | None = None
    compute_output_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class StreamRow(_FlatRow):
    """One concurrency level of a streaming model's load test: ``throughput`` in responses/s, ``p50_ms``/``p95_ms``
    the time to a stream's first response, ``between_*`` the time between its responses."""

    concurrency: int
    throughput: float
    streams_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    between_p50_ms: float | None
    between_p95_ms: float | None
    errors: int
    requests: int


Level = PerfRow | StreamRow


@dataclasses.dataclass(frozen=True)
class BatchConfig(_FlatRow):
    """A model's batching and instances, as a tuning sweep binds it (``max_batch_size`` 0: no batching)."""

    max_batch_size: int
    batch_delay_us: int
    instances: int


@dataclasses.dataclass(frozen=True)
class TuneRow(_Columns):
    """One run of a tuning sweep: the configuration bound, one level measured with it, and whether it ``fits``
    (no errors, and p95 within the budget if there is one)."""

    config: BatchConfig
    level: Level
    fits: bool

    def as_dict(self) -> dict[str, Any]:
        """The run as plain data: the configuration's columns, the level's, then ``fits``."""
        return {**self.config.as_dict(), **self.level.as_dict(), "fits": self.fits}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TuneRow:
        """The run of a plain record, as ``as_dict`` writes it."""
        return cls(BatchConfig.from_dict(record), level_from_dict(record), record["fits"])


Row = PerfRow | StreamRow | TuneRow


def columns(row_type: type) -> tuple[str, ...]:
    """The columns of a flat row type, in order."""
    return tuple(field.name for field in dataclasses.fields(row_type))


def level_from_dict(record: Mapping[str, Any]) -> Level:
    """The level of a plain record: a stream's when it counts ``streams_per_s``."""
    return (StreamRow if "streams_per_s" in record else PerfRow).from_dict(record)


def row_from_dict(record: Mapping[str, Any]) -> Row:
    """The row of a plain record: a tuning run's when it names a configuration, else a level's."""
    return TuneRow.from_dict(record) if "max_batch_size" in record else level_from_dict(record)
