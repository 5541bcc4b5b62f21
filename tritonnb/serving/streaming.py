"""Streams: a generator function served as a decoupled Triton model, one response per ``yield``.

PyTriton would drive a sync generator on its one event loop, so a second stream would wait for the first to end; here
each stream runs its generator on a thread of its own, a step at a time. A client that goes away is noticed by the stub
(see ``STREAM_PATCHES`` in ``tritonnb.triton._pytriton``), which leaves a marker file; the generator is closed before
its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from tritonnb.errors import ModelError, OutputError, StreamEnded
from tritonnb.observe.stream_stats import StreamStats
from tritonnb.serving.served_function import InFlight, ServedFunction
from tritonnb.serving.torch_bridge import no_autograd, use_torch_threads
from tritonnb.triton._pytriton import STREAM_PARAMETER, error_response

__all__ = [
    "END",
    "StepThread",
    "StreamTrampoline",
    "close_stream",
    "first_response",
    "is_stream_function",
    "next_response",
    "start_stream",
]

T = TypeVar("T")
END = object()  # what a step returns once the generator is done


def is_stream_function(fn: Callable) -> bool:
    """Whether ``fn`` is a generator function, sync or async (a callable object's ``__call__`` counts)."""
    plain = inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)
    if callable(fn) and not plain:
        fn = type(fn).__call__
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


class StepThread:
    """A daemon thread that runs one stream's generator, a step at a time, for an event loop that awaits each step.

    An async generator runs on this thread's own event loop: blocking in it stalls its own stream only.
    """

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    async def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on this thread and wait for its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._work.put((work, loop, future))
        return await future

    def run_then_end(self, work: Callable[[], Any]) -> None:
        """Run ``work`` (nobody waits for it), then end the thread."""
        self._work.put((work, None, None))
        self._work.put(None)

    def run_async(self, awaitable: Any) -> Any:
        """On this thread: run a coroutine to its end on the thread's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def _run(self) -> None:
        try:
            while (item := self._work.get()) is not None:
                work, loop, future = item
                try:
                    outcome: tuple[str, Any] = ("set_result", work())
                except Exception as error:  # handed to the awaiting side
                    outcome = ("set_exception", error)
                except BaseException as error:  # SystemExit, KeyboardInterrupt: would end PyTriton's event loop
                    outcome = ("set_exception", ModelError(f"a stream step raised {type(error).__name__}: {error}"))
                if loop is not None:
                    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                        loop.call_soon_threadsafe(_settle, future, *outcome)
        finally:
            if self._loop is not None:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()


def _settle(future: asyncio.Future, method: str, value: Any) -> None:
    if not future.done():
        getattr(future, method)(value)


def start_stream(target: ServedFunction, arrays: dict[str, np.ndarray]) -> Iterator | AsyncIterator:
    """Call the function for one stream: its generator (nothing of its body has run yet)."""
    result = target.called(arrays)
    if isinstance(result, (Iterator, AsyncIterator)):
        return result
    message = (
        f"model {target.model_name!r} is served as a stream, but its function returned {type(result).__name__}, "
        "not a generator: yield each response"
    )
    target.report(message)
    raise OutputError(message)


def next_response(target: ServedFunction, stream: Iterator | AsyncIterator, steps: StepThread, sent: int) -> Any:
    """On the stream's thread: run the generator to its next ``yield`` and return that as checked outputs, or END."""
    try:
        use_torch_threads(target.torch_threads)
        with no_autograd():
            item = steps.run_async(stream.__anext__()) if isinstance(stream, AsyncIterator) else next(stream)
    except (StopIteration, StopAsyncIteration):
        return END
    except Exception as error:
        raise target.failure(error, f" after {sent} responses") from None
    return target.checked(item, None)


def first_response(target: ServedFunction, arrays: dict[str, np.ndarray]) -> Any:
    """Run a stream to its first response (or its end) here and close it: a warm-up."""
    steps = StepThread(f"tritonnb-warmup-{target.model_name}")
    done = threading.Event()
    outcome: list[Any] = []

    def run() -> None:
        stream = None
        try:
            stream = start_stream(target, arrays)
            outcome.append(next_response(target, stream, steps, 0))
        except BaseException as error:
            outcome.append(error)
        finally:
            if stream is not None:
                close_stream(stream, steps)
            done.set()

    steps.run_then_end(run)
    done.wait()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def close_stream(stream: Iterator | AsyncIterator | None, steps: StepThread) -> None:
    """On the stream's thread: close the generator (its ``finally`` blocks run); what it raises is dropped."""
    if stream is None:
        return
    with contextlib.suppress(Exception):
        if isinstance(stream, AsyncIterator):
            close = getattr(stream, "aclose", None)
            if close is not None:
                steps.run_async(close())
        else:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


class StreamTrampoline:
    """The stable callable bound into Triton once per loaded generation of a stream; ``target`` is swapped in place.

    A stream keeps the function it started with to its end: a swap reaches new streams only.
    """

    batched = False

    def __init__(self, target: ServedFunction, stats: StreamStats) -> None:
        self.target = target
        self.stats = stats
        self.in_flight = InFlight()  # streams
        self._ended = threading.Event()

    def end_streams(self) -> None:
        """End the streams of this generation before their next step, each with an error to its client: it is
        retired with streams still open (stopped, unbound, or past the longest wait for them)."""
        self._ended.set()

    def handlers(self, instances: int) -> list[Callable[[list], Any]]:
        """One distinct async-generator callable per Triton model instance (what PyTriton streams from)."""

        def handler_for_one_instance() -> Callable[[list], Any]:
            async def handler(requests: list) -> Any:
                async for responses in self.handle(requests):
                    yield responses

            return handler

        return [handler_for_one_instance() for _ in range(instances)]

    async def handle(self, requests: list) -> AsyncIterator[list[dict[str, np.ndarray]]]:
        """Stream the responses to one request (Triton sends a model without batching one request at a time)."""
        if len(requests) != 1:
            raise ModelError(f"a stream answers one request at a time, got {len(requests)}")
        async for response in self._stream(requests[0]):
            yield [response]

    async def _stream(self, request: Any) -> AsyncIterator[dict[str, np.ndarray]]:
        target = self.target  # read once: this stream ends on the function it started with
        marker = (request.parameters or {}).get(STREAM_PARAMETER)
        steps = StepThread(f"tritonnb-stream-{target.model_name}")
        stream: Iterator | AsyncIterator | None = None
        outcome = "cancelled"  # unless it ends otherwise: PyTriton closed this generator, or the client went away
        last = time.monotonic()  # the request's arrival, then each response's
        sent = 0
        self.in_flight.started()
        self.stats.opened()
        try:
            stream = await steps.run(functools.partial(start_stream, target, request.data))
            while not (marker and os.path.exists(marker)):
                if self._ended.is_set():
                    raise StreamEnded(f"model {target.model_name!r} stopped serving while this stream was open")
                response = await steps.run(functools.partial(next_response, target, stream, steps, sent))
                if response is END:
                    outcome = "completed"
                    break
                now = time.monotonic()
                self.stats.responded(now, last, first=sent == 0)
                last = now
                sent += 1
                yield response
        except ModelError as error:  # after the responses sent: the client gets this as the stream's error
            outcome = "cancelled" if isinstance(error, StreamEnded) else "failed"
            yield error_response(str(error))
        except Exception:
            outcome = "failed"
            raise
        finally:
            steps.run_then_end(functools.partial(close_stream, stream, steps))
            if marker:
                with contextlib.suppress(OSError):
                    os.unlink(marker)
            self.stats.closed(outcome)
            self.in_flight.ended()
