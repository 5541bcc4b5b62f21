"""Hot-binding: one slot per model name; swap the function in place, or reload under the same name."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from tritonnb.errors import BindError, ModelError, SpecError, UnknownModelError, WarmupError
from tritonnb.observe.stream_stats import StreamStats
from tritonnb.serving.served_function import ErrorReporter, ServedFunction, Trampoline
from tritonnb.serving.streaming import StreamTrampoline, first_response
from tritonnb.signature import ModelSpec, arrays_from, sample_inputs
from tritonnb.triton._pytriton import Generation
from tritonnb.triton.channel import ChannelGeneration
from tritonnb.triton.memory import trim_heap

__all__ = [
    "RETIRE_MAX_WAIT_S",
    "RETIRE_QUIET_S",
    "BindResult",
    "LoadedGeneration",
    "ModelControl",
    "ModelSlot",
    "ServedVersion",
    "retire_side_by_side",
    "run_to_the_end",
    "warm_up",
]

RETIRE_QUIET_S = 1.0  # a replaced generation is retired once it has had no request in flight for this long
RETIRE_MAX_WAIT_S = 120.0  # ... or after this long in any case


def warm_up(target: ServedFunction, spec: ModelSpec, batches: int, data: Any = None) -> None:
    """Run ``batches`` batches through the same path requests take, before anyone can call it: generated from the
    inputs, or ``data``, the user's own samples (see ``arrays_from``; then at least one batch)."""
    if batches < 0:
        raise SpecError(f"warm-up batches must be 0 or more, got {batches}")
    trampoline = Trampoline(target, spec.batched)
    rng = np.random.default_rng(0)
    batch_size = spec.max_batch_size if spec.batched else None
    samples = None if data is None else arrays_from(spec, data)
    for number in range(1, max(batches, 1 if samples is not None else 0) + 1):
        request = SimpleNamespace(data=samples if samples is not None else sample_inputs(spec.inputs, batch_size, rng))
        try:
            if spec.stream:  # a stream may never end: its first response is warm-up enough
                first_response(target, request.data)
            else:
                trampoline.handle([request])
        except ModelError as error:
            raise WarmupError(f"warm-up batch {number} of {batches} failed: {error}") from None


def retire_side_by_side(generations: list[LoadedGeneration]) -> None:
    """Retire generations in parallel: a stream's waits about a second on PyTriton's socket polling.

    Plain threads, not an executor: this also runs while the interpreter winds down, when executors refuse work.
    """
    threads = [threading.Thread(target=g.retire, name="tritonnb-retire") for g in generations[1:]]
    for thread in threads:
        thread.start()
    if generations:
        generations[0].retire()
    for thread in threads:
        thread.join()
    trim_heap()


def run_to_the_end(work: Callable[[], None]) -> None:
    """Run ``work`` on a thread of its own and wait for it; a KeyboardInterrupt meanwhile is raised after it ends."""
    failure: list[BaseException] = []
    done = threading.Event()  # not Thread.join: an interrupted join marks a running thread as stopped (3.11)

    def run() -> None:
        try:
            work()
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="tritonnb-load")
    interrupted = False
    while True:  # one try around starting and waiting: an interrupt between the two must not escape
        try:
            if thread.ident is None:
                thread.start()
            done.wait()
            break
        except KeyboardInterrupt:
            interrupted = True
            if thread.ident is None:  # interrupted before the work began: nothing to finish
                raise
    if failure:
        raise failure[0]
    if interrupted:
        raise KeyboardInterrupt


class LoadedGeneration(Protocol):
    """One loaded instance of a model: through a channel (``ChannelGeneration``) or, for a stream, PyTriton's proxy."""

    def load_request(self) -> tuple[str, dict[str, bytes]]: ...
    def attach(self) -> None: ...
    def is_alive(self) -> bool: ...
    def unlink_shared_memory(self) -> None: ...
    def retire(self) -> None: ...


class ModelControl(Protocol):
    """What a slot needs from the server: load and unload models and ask for readiness."""

    def load_model(self, name: str, config: str, files: dict[str, bytes]) -> None: ...
    def unload_model(self, name: str) -> None: ...
    def is_model_ready(self, name: str) -> bool: ...


@dataclasses.dataclass
class BindResult:
    """What one bind did: ``loaded`` (first time), ``reloaded`` (config changed) or ``swapped`` (function only)."""

    action: str
    seconds: float


@dataclasses.dataclass
class ServedVersion:
    """One version of a model: the function serving it, its device and per-call timeout, and how often it was bound."""

    fn: Callable
    device: str
    timeout_s: float | None
    target: ServedFunction
    binds: int = 0


SlotTrampoline = Trampoline | StreamTrampoline


class ModelSlot:
    """A served model name: its spec (one for every version: Triton keeps one config per model), its versions side by
    side, and the loaded generation serving them all."""

    def __init__(self, spec: ModelSpec, workspace: pathlib.Path, control: ModelControl, report_error: ErrorReporter):
        self.spec = spec
        self.versions: dict[int, ServedVersion] = {}
        self.binds = 0
        self.stub_restarts = 0  # loaded again after its python backend stub died
        self.heal_after = 0.0  # time.monotonic() before which the server does not try to load it again
        self.last_error: str | None = None
        self.loading = False  # True while a reload under this name is in progress (the old one still serves)
        self._workspace = workspace
        self._control = control
        self._report_error = report_error
        self.stream_stats = StreamStats()  # of every generation, while it streams
        self._stream_trampolines: weakref.WeakSet[StreamTrampoline] = weakref.WeakSet()  # of loaded generations
        self._generation: LoadedGeneration | None = None
        self._trampolines: dict[int, SlotTrampoline] = {}  # the current generation's, by version
        self._generation_number = 0
        self._pending_retire: dict[LoadedGeneration, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model's name in Triton."""
        return self.spec.name

    @property
    def newest(self) -> ServedVersion | None:
        """The newest version served: the one Triton answers when a request names no version."""
        return self.versions[max(self.versions)] if self.versions else None

    @property
    def fn(self) -> Callable | None:
        """The newest version's function."""
        return self.newest.fn if self.newest else None

    @property
    def device(self) -> str:
        """The newest version's device."""
        return self.newest.device if self.newest else "cpu"

    @property
    def timeout_s(self) -> float | None:
        """The newest version's per-call timeout."""
        return self.newest.timeout_s if self.newest else None

    def version_list(self) -> str:
        """The versions served, e.g. ``1,2``."""
        return ",".join(str(v) for v in sorted(self.versions))

    def require_version(self, version: int | None) -> None:
        """UnknownModelError unless ``version`` is served (None: any, the newest)."""
        if version is not None and version not in self.versions:
            raise UnknownModelError(
                f"model {self.name!r} has no version {version}; it serves version(s) {self.version_list()}"
            )

    def bind(
        self,
        fn: Callable,
        spec: ModelSpec,
        device: str,
        warmup: int = 0,
        timeout_s: float | None = None,
        version: int = 1,
        warmup_data: Any = None,
    ) -> BindResult:
        """Serve ``fn`` as ``version`` of this slot's model: swap in place if that version serves with the same spec,
        else load (beside the other versions, which keep serving).

        With ``warmup`` > 0 the function first runs that many generated batches (of ``warmup_data``, the user's own
        samples, when given: then at least one); if one fails, nothing changes.
        ``timeout_s``: a call that takes longer fails its requests (the function itself runs on).
        """
        started = time.perf_counter()
        self._check_version(spec, version)
        target = self._served(fn, spec, device, timeout_s)
        warm_up(target, spec, warmup, warmup_data)
        with self._lock:
            self._check_version(spec, version)  # again: another bind may have added a version meanwhile
            trampoline = self._trampolines.get(version)
            if trampoline is not None and spec == self.spec and self.is_serving():
                trampoline.target = target
                self._record(version, fn, spec, device, timeout_s, target)
                action = "swapped"
            else:
                action = "reloaded" if version in self.versions else "loaded"
                targets = {number: served.target for number, served in self.versions.items()}
                targets[version] = target

                def load_and_record() -> None:
                    self._load(spec, targets)
                    self._record(version, fn, spec, device, timeout_s, target)

                self._load_to_the_end(load_and_record)
        return BindResult(action, time.perf_counter() - started)

    def _check_version(self, spec: ModelSpec, version: int) -> None:
        others = sorted(v for v in self.versions if v != version)
        if others and spec != self.spec:
            raise SpecError(
                f"version {version} of model {spec.name!r} must keep the inputs, outputs and batching of the versions "
                f"served beside it ({', '.join(map(str, others))}): Triton keeps one config per model. Served: "
                f"{self.spec.describe()}; asked for: {spec.describe()}. Unbind those versions first, or use another "
                "model name"
            )
        if spec.stream and (others or version != 1):
            raise SpecError(f"model {spec.name!r} streams: a stream is served as version 1 alone")

    def _record(
        self, version: int, fn: Callable, spec: ModelSpec, device: str, timeout_s: float | None, target: ServedFunction
    ) -> None:
        binds = self.versions[version].binds if version in self.versions else 0
        if spec != self.spec:  # an equal spec keeps the old object: each card kept in IPython's Out shares it
            self.spec = spec
        self.versions[version] = ServedVersion(fn, device, timeout_s, target, binds + 1)
        self.binds += 1

    def reload(self) -> None:
        """Load every version again (after a server restart, or a stub that died): a generation still loaded keeps
        serving until Triton has switched to the new one, then retires once quiet."""
        if not self.versions:
            return
        with self._lock:
            self.end_streams()  # their stubs are gone: nobody reads them any more
            for served in self.versions.values():
                served.target = self._served(served.fn, self.spec, served.device, served.timeout_s)
            targets = {number: served.target for number, served in self.versions.items()}
            self._load_to_the_end(lambda: self._load(self.spec, targets))

    def _load_to_the_end(self, load: Callable[[], None]) -> None:
        """Run a load with ``loading`` set, to the end even if the kernel is interrupted meanwhile: once Triton has
        loaded the new generation, a switch left half done would leave it routing requests to a stub nobody answers."""
        self.loading = True
        try:
            run_to_the_end(load)
        finally:
            self.loading = False

    def unbind(self, version: int | None = None) -> bool:
        """Stop serving ``version`` (the others serve on, loaded again), or every version: unload the model from
        Triton and stop its threads. Returns whether the model is gone."""
        if version is not None and len(self.versions) > 1:
            with self._lock:
                targets = {n: s.target for n, s in self.versions.items() if n != version}
                self._load_to_the_end(lambda: self._load(self.spec, targets))
                del self.versions[version]
            return False
        with self._lock:
            self.end_streams()  # an open stream would hold Triton's unload up
            try:
                if self._generation is not None:
                    self._control.unload_model(self.name)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline and self._control.is_model_ready(self.name):
                        time.sleep(0.05)
            finally:
                self.retire_all()
        return True

    def retire_all(self) -> None:
        """Stop every generation's threads now, side by side (model unbound)."""
        retire_side_by_side(self.take_generations())

    def take_generations(self) -> list[LoadedGeneration]:
        """Hand every generation (current and awaiting retirement) to the caller to retire, their open streams
        ended; the slot keeps none."""
        self.end_streams()
        taken = []
        for generation in list(self._pending_retire):
            cancelled = self._pending_retire.pop(generation, None)
            if cancelled is not None:  # its retirement thread had not got to it: it is ours now
                cancelled.set()
                taken.append(generation)
        if self._generation is not None:
            taken.append(self._generation)
        self._generation, self._trampolines = None, {}
        return taken

    def end_streams(self) -> None:
        """End the open streams of every generation (see ``StreamTrampoline.end_streams``)."""
        for trampoline in list(self._stream_trampolines):
            trampoline.end_streams()

    def is_serving(self) -> bool:
        """Whether this process's side of the current generation is alive."""
        return self._generation is not None and self._generation.is_alive()

    def idle_for(self) -> float:
        """Seconds since the current generation last had a request in flight (0 while one is)."""
        return min((t.in_flight.idle_for() for t in self._trampolines.values()), default=float("inf"))

    def _served(self, fn: Callable, spec: ModelSpec, device: str, timeout_s: float | None) -> ServedFunction:
        return ServedFunction(fn, spec.name, spec.inputs, spec.outputs, device, self._record_error, timeout_s)

    def _load(self, spec: ModelSpec, targets: dict[int, ServedFunction]) -> None:
        """Load a new generation serving ``targets`` (by version) and switch Triton and this slot to it (the
        previous one retires once quiet)."""
        self._generation_number += 1
        trampolines: dict[int, SlotTrampoline] = {}
        for number, target in targets.items():
            if spec.stream:
                trampolines[number] = StreamTrampoline(target, self.stream_stats)
                self._stream_trampolines.add(trampolines[number])
            else:
                trampolines[number] = Trampoline(target, spec.batched)
        generation: LoadedGeneration
        workspace = self._workspace / f"g{self._generation_number}"
        handlers = {number: t.handlers(spec.instances) for number, t in trampolines.items()}
        if spec.stream:  # any number of responses per request: PyTriton's proxy (version 1 alone)
            generation = Generation(
                spec.name, handlers[1], spec.inputs, spec.outputs, spec.max_batch_size, spec.batch_delay_us, workspace
            )
        else:
            generation = ChannelGeneration(
                spec.name, handlers, spec.inputs, spec.outputs, spec.max_batch_size, spec.batch_delay_us, workspace
            )
        config, files = generation.load_request()
        try:
            self._control.load_model(spec.name, config, files)
            generation.attach()
        except Exception as error:
            generation.retire()
            raise BindError(f"Triton could not load model {spec.name!r}: {error}") from error
        previous, previous_trampolines = self._generation, list(self._trampolines.values())
        self._generation, self._trampolines = generation, trampolines
        if previous is not None:
            # Triton now routes new requests to the new generation; the old one finishes what it holds
            cancelled = self._pending_retire[previous] = threading.Event()
            quiet_s = RETIRE_QUIET_S + self.spec.batch_delay_us / 1e6  # requests its batcher may still hold
            threading.Thread(
                target=self._retire_when_quiet,
                args=(previous, previous_trampolines, quiet_s, cancelled),
                daemon=True,
            ).start()

    def _retire_when_quiet(
        self,
        generation: LoadedGeneration,
        trampolines: list[SlotTrampoline],
        quiet_s: float,
        cancelled: threading.Event,
    ) -> None:
        switched = time.monotonic()
        while not cancelled.wait(0.2):
            now = time.monotonic()
            # quiet: no call for quiet_s, counted from the switch on
            idle = min((t.in_flight.idle_for() for t in trampolines), default=float("inf"))
            quiet = now - switched >= quiet_s and idle >= quiet_s
            if quiet or now - switched > RETIRE_MAX_WAIT_S:
                for trampoline in trampolines:
                    if isinstance(trampoline, StreamTrampoline):
                        trampoline.end_streams()  # a stream still open past the wait: ended with an error
                self._retire(generation)
                return

    def _retire(self, generation: LoadedGeneration) -> None:
        cancelled = self._pending_retire.pop(generation, None)
        if cancelled is not None:  # whoever pops it first retires it, exactly once
            cancelled.set()
            generation.retire()
            trim_heap()

    def _record_error(self, model_name: str, text: str) -> None:
        self.last_error = text
        self._report_error(model_name, text)
