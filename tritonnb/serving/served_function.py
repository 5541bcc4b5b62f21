"""The callable Triton's handler threads run: numpy in, the user's torch function, numpy out."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import ModelError, ModelTimeout, OutputError, SignatureMismatch, SpecError
from tritonnb.serving.output_check import checked_outputs
from tritonnb.serving.torch_bridge import call_with_tensors, torch_threads, use_torch_threads
from tritonnb.signature import TensorSpec, parameters_of
from tritonnb.triton._pytriton import ERROR_OUTPUT, error_response

__all__ = [
    "MAX_RUNNING_LATE",
    "ErrorReporter",
    "InFlight",
    "ServedFunction",
    "Trampoline",
    "calls_by_keyword",
    "failure_of",
]

ErrorReporter = Callable[[str, str], None]
MAX_RUNNING_LATE = 8  # abandoned calls of one function still running, beyond which requests fail at once


def calls_by_keyword(fn: Callable, inputs: Sequence[TensorSpec]) -> bool:
    """True to call ``fn(**inputs)``, False to call it with inputs in declared order; raise if neither fits."""
    names = [s.name for s in inputs]
    params = parameters_of(fn)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {n for n, p in named.items() if p.default is p.empty}
    positional_only = any(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in params)
    if not positional_only and required <= set(names) and (var_kw or set(names) <= set(named)):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    least = sum(p.default is p.empty for p in positional)
    if not any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in params) and (
        least <= len(names) and (var_pos or len(names) <= len(positional))
    ):
        return False
    shown = ", ".join(str(p) for p in params)
    raise SignatureMismatch(
        f"{getattr(fn, '__name__', 'function')}({shown}) cannot take the inputs {names}: "
        "name its parameters after the inputs, or take them positionally in the declared order"
    )


class ServedFunction:
    """A user function bound to its specs and device; what a hot swap replaces."""

    def __init__(
        self,
        fn: Callable,
        model_name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str,
        report_error: ErrorReporter,
        timeout_s: float | None = None,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise SpecError(f"the timeout must be positive seconds, got {timeout_s}")
        self.fn = fn
        self.model_name = model_name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.device = device
        self.timeout_s = timeout_s
        self.abandoned = 0  # calls that outlived the timeout (a Python thread cannot be killed: they run to their end)
        self._running_late = 0  # abandoned calls still running
        self._late_lock = threading.Lock()
        self._by_keyword = calls_by_keyword(fn, inputs)
        self._report_error = report_error
        self.torch_threads = torch_threads()  # the binding (kernel) thread's setting, applied in handler threads

    def __call__(self, arrays: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
        """Run the function on one set of input arrays (``batch`` samples, None for a model without batching) and
        return its checked outputs; ModelError (OutputError, ModelTimeout) says what went wrong."""
        if self.timeout_s is None:
            return self._run(arrays, batch)
        return self._run_within_timeout(arrays, batch)

    def _run(self, arrays: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
        return self.checked(self.called(arrays), batch)

    def called(self, arrays: dict[str, np.ndarray]) -> Any:
        """What the function returns on ``arrays`` (a generator, for a stream); ModelError if it raised."""
        try:
            use_torch_threads(self.torch_threads)
            return call_with_tensors(self.fn, self._by_keyword, self.inputs, arrays, self.device)
        except Exception as error:
            raise self.failure(error) from None

    def failure(self, error: Exception, context: str = "") -> ModelError:
        """Report the exception being handled (its traceback goes to the server log) and say what it was."""
        self._report_error(self.model_name, traceback.format_exc())
        return ModelError(f"model {self.model_name!r} raised {type(error).__name__}{context}: {error}")

    def checked(self, result: Any, batch: int | None) -> dict[str, np.ndarray]:
        """``result`` as the declared outputs (see ``checked_outputs``); OutputError, reported, if it does not fit."""
        try:
            return checked_outputs(result, self.outputs, batch)
        except OutputError as error:
            message = f"model {self.model_name!r}: {error}"
            self.report(message)
            raise OutputError(message) from None

    def report(self, message: str) -> None:
        """Send a failure's message to the server log (and the model's last error)."""
        self._report_error(self.model_name, message)

    def _run_within_timeout(self, arrays: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
        """Run on a thread of its own and give up waiting after ``timeout_s`` (the call itself runs on)."""
        with self._late_lock:
            if self._running_late >= MAX_RUNNING_LATE:
                raise ModelTimeout(
                    f"model {self.model_name!r}: {self._running_late} calls that outlived the timeout of "
                    f"{self.timeout_s:g} s still run; no new call starts until one returns"
                )
        outcome: list[Any] = []
        done = threading.Event()
        abandoned = False

        def run() -> None:
            try:
                outcome.append(self._run(arrays, batch))
            except BaseException as error:
                outcome.append(error)
            finally:
                with self._late_lock:
                    done.set()
                    if abandoned:
                        self._running_late -= 1

        threading.Thread(target=run, name=f"tritonnb-call-{self.model_name}", daemon=True).start()
        done.wait(self.timeout_s)
        with self._late_lock:
            if not done.is_set():
                abandoned = True
                self.abandoned += 1
                self._running_late += 1
        if abandoned:
            message = (
                f"model {self.model_name!r} did not return within its timeout of {self.timeout_s:g} s; "
                f"the call was abandoned ({self.abandoned} so far) and runs on in the kernel"
            )
            self._report_error(self.model_name, message)
            raise ModelTimeout(message)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]


class InFlight:
    """How many calls of one generation are running, and since when none is: what decides when it may retire."""

    def __init__(self) -> None:
        self._running = 0
        self._last_end = time.monotonic()
        self._lock = threading.Lock()

    def started(self) -> None:
        """A call began."""
        with self._lock:
            self._running += 1

    def ended(self) -> None:
        """A call ended."""
        with self._lock:
            self._running -= 1
            self._last_end = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last call ended; 0 while one runs."""
        with self._lock:
            return 0.0 if self._running else time.monotonic() - self._last_end


class Trampoline:
    """The stable callable bound into Triton once per loaded generation; ``target`` is swapped in place.

    A failure is sent to the request it belongs to: when a merged batch fails, each of its requests runs again on
    its own, so one bad request does not fail the others batched with it.
    """

    def __init__(self, target: ServedFunction, batched: bool) -> None:
        self.target = target
        self.batched = batched
        self.in_flight = InFlight()  # requests

    def handlers(self, instances: int) -> list[Callable[[list], list]]:
        """One distinct callable per Triton model instance, all calling this trampoline."""
        return [lambda requests: self.handle(requests) for _ in range(instances)]

    def handle(self, requests: list) -> list[dict[str, np.ndarray]]:
        """PyTriton's request-list interface: merge a dynamic batch, call the target once, split the result.

        When every request failed the same way, that is raised instead: Triton counts a raised batch as failed in its
        statistics and metrics, but a per-request error response as a success.
        """
        self.in_flight.started()
        try:
            responses = self._handle(requests)
            failures = {failure_of(r) for r in responses}
            if len(failures) == 1 and None not in failures:
                raise ModelError(failures.pop())
            return responses
        finally:
            self.in_flight.ended()

    def _handle(self, requests: list) -> list[dict[str, np.ndarray]]:
        target = self.target  # read once: a swap mid-batch must not mix two functions
        if not self.batched or len(requests) == 1:
            return [self._answer(target, r.data) for r in requests]
        sizes = [_batch_size(r.data) for r in requests]
        try:
            merged = {name: np.concatenate([r.data[name] for r in requests]) for name in requests[0].data}
        except ValueError:  # ragged per-sample shapes (-1 dims) cannot be merged: serve them one by one
            return [self._answer(target, r.data) for r in requests]
        try:
            result = target(merged, sum(sizes))
        except ModelTimeout as error:  # running each again would only multiply the wait
            return [error_response(str(error)) for _ in requests]
        except ModelError:
            return [self._answer(target, r.data) for r in requests]
        responses, start = [], 0
        for size in sizes:  # views, like np.split's, but without its per-part overhead (~1 µs each)
            responses.append({name: array[start : start + size] for name, array in result.items()})
            start += size
        return responses

    def _answer(self, target: ServedFunction, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's outputs, or the error response that fails that request alone."""
        try:
            return target(arrays, _batch_size(arrays) if self.batched else None)
        except ModelError as error:
            return error_response(str(error))


def failure_of(response: dict[str, np.ndarray]) -> str | None:
    """The error message of a response that fails its request, else None."""
    error = response.get(ERROR_OUTPUT)
    return None if error is None else error.item(0).decode("utf-8", "replace")


def _batch_size(arrays: dict[str, Any]) -> int | None:
    first = next(iter(arrays.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else None
