"""A streaming model's figures, counted in the kernel as its streams run: what its panel row shows."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import numpy as np

__all__ = ["KEPT", "WINDOW_S", "StreamFigures", "StreamStats"]

WINDOW_S = 10.0  # rates and percentiles cover the last this many seconds
KEPT = 4096  # time samples kept per figure (the percentiles of a busy window are of its last ones)


@dataclasses.dataclass(frozen=True)
class StreamFigures:
    """A streaming model's figures: streams open now and in all, responses, and the last ``WINDOW_S`` seconds'
    responses per second, time to first response and time between responses (p50 and p95, ms; None: no data).
    Times are measured in the kernel, from a request's arrival to each ``yield``."""

    active: int
    streams: int
    responses: int
    failed: int
    cancelled: int
    responses_per_s: float | None
    first_response_ms: dict[str, float] | None
    between_responses_ms: dict[str, float] | None


class StreamStats:
    """Counts and timings of one model's streams, shared by its generations (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.streams = self.responses = self.failed = self.cancelled = 0
        self._first_seen: float | None = None
        self._first: collections.deque[tuple[float, float]] = collections.deque(maxlen=KEPT)
        self._between: collections.deque[tuple[float, float]] = collections.deque(maxlen=KEPT)
        self._per_second: collections.deque[list[int]] = collections.deque()  # [whole second, responses in it]

    def opened(self) -> None:
        """A stream began."""
        with self._lock:
            self.active += 1
            self.streams += 1

    def responded(self, now: float, since: float, first: bool) -> None:
        """A response was yielded ``now``; ``since``: the stream's start (first response) or its last response."""
        with self._lock:
            self.responses += 1
            self._first_seen = now if self._first_seen is None else self._first_seen
            second = int(now)
            if self._per_second and self._per_second[-1][0] == second:
                self._per_second[-1][1] += 1
            else:
                self._per_second.append([second, 1])
            while self._per_second[0][0] < second - WINDOW_S:
                self._per_second.popleft()
            (self._first if first else self._between).append((now, now - since))

    def closed(self, outcome: str) -> None:
        """A stream ended: ``completed``, ``failed`` or ``cancelled``."""
        with self._lock:
            self.active -= 1
            self.failed += outcome == "failed"
            self.cancelled += outcome == "cancelled"

    def figures(self, now: float | None = None) -> StreamFigures:
        """The figures now (see StreamFigures)."""
        now = time.monotonic() if now is None else now
        since = now - WINDOW_S
        with self._lock:
            recent = sum(count for second, count in self._per_second if second >= since)
            rate = None
            if self._first_seen is not None:  # over the window, or the time since the first response if shorter
                rate = recent / min(WINDOW_S, max(now - self._first_seen, 1.0))
            return StreamFigures(
                self.active,
                self.streams,
                self.responses,
                self.failed,
                self.cancelled,
                rate,
                _percentiles_ms([v for t, v in self._first if t >= since]),
                _percentiles_ms([v for t, v in self._between if t >= since]),
            )


def _percentiles_ms(seconds: list[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    p50, p95 = np.percentile(np.asarray(seconds) * 1e3, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}
