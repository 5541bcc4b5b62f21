"""The notebook's models on the server, by name: bind, unbind, serve again after a restart, heal dead stubs."""

from __future__ import annotations

import pathlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from tritonnb.errors import SpecError, UnknownModelError
from tritonnb.serving.binding import BindResult, LoadedGeneration, ModelControl, ModelSlot
from tritonnb.serving.served_function import ErrorReporter
from tritonnb.serving.torch_bridge import resolve_device
from tritonnb.signature import DEFAULT_OUTPUT, ModelSpec, TensorSpec, as_specs, default_inputs
from tritonnb.states import ModelState
from tritonnb.triton.engine import check_bytes_supported

__all__ = ["HEAL_RETRY_S", "RESERVED_NAMES", "SOCKET_PATH_MAX", "SOCKET_SUFFIX_MAX", "ModelRegistry"]

HEAL_RETRY_S = 10.0  # after a model failed to load again, wait this long before the next try
SOCKET_PATH_MAX = 107  # AF_UNIX paths are limited to 108 bytes with the terminating NUL
SOCKET_SUFFIX_MAX = len("/g999/_0_99-server.sock")  # PyTriton names sockets <workspace>/<model>_0_<i>-server.sock
RESERVED_NAMES = {"stats"}  # GET /v2/models/stats is Triton's statistics endpoint, not a model's metadata


class ModelRegistry:
    """One ``ModelSlot`` per model name the notebook serves, their workspaces under ``sockets``."""

    def __init__(
        self, sockets: pathlib.Path, control: ModelControl, report_error: ErrorReporter, log: Callable[[str], None]
    ) -> None:
        self.slots: dict[str, ModelSlot] = {}
        self._sockets = sockets
        self._control = control
        self._report_error = report_error
        self._log = log

    def bind(
        self,
        fn: Callable,
        name: str,
        inputs: Sequence[TensorSpec | str] | None,
        outputs: Sequence[TensorSpec | str] | None,
        spec_options: dict[str, int],
        stream: bool,
        device: str | None,
        warmup: int,
        timeout_s: float | None,
        version: int = 1,
        warmup_data: Any = None,
    ) -> BindResult:
        """Serve ``fn`` as ``version`` of model ``name`` (see ``Server.bind``); binding it again hot-swaps it."""
        self._check_name(name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SpecError(f"a model version is a whole number from 1 on, got {version!r}")
        input_specs = as_specs(inputs, "input") or default_inputs(fn)
        output_specs = as_specs(outputs, "output") or (DEFAULT_OUTPUT,)
        spec = ModelSpec(name, input_specs, output_specs, **spec_options, stream=stream)
        check_bytes_supported([s.name for s in (*input_specs, *output_specs) if s.dtype == "bytes"])
        resolved_device = resolve_device(device)
        clash = next((n for n in self.slots if n.lower() == name.lower() and n != name), None)
        if clash:
            raise SpecError(f"model names are case-insensitive in Triton: {name!r} clashes with {clash!r}")
        slot = self.slots.get(name)
        if slot is None:
            workspace = self._sockets / f"m{secrets.token_hex(3)}"
            slot = self.slots[name] = ModelSlot(spec, workspace, self._control, self._report_error)
        try:
            return slot.bind(fn, spec, resolved_device, warmup, timeout_s, version, warmup_data)
        except BaseException:
            if not slot.versions:  # never served: forget it
                self.slots.pop(name, None)
            raise

    def unbind(self, name: str, version: int | None = None) -> None:
        """Stop serving ``version`` of model ``name`` (None: every version); UnknownModelError if the notebook serves
        no such model or version."""
        slot = self.slots.get(name)
        if slot is None:
            raise UnknownModelError.among(name, self.slots)
        slot.require_version(version)
        gone = True
        try:
            gone = slot.unbind(version)
        finally:  # its threads are retired either way; Triton may still list it if the unload failed
            if gone:
                self.slots.pop(name, None)

    def states(self) -> dict[str, ModelState]:
        """Each model's state as Triton reports it (READY or UNAVAILABLE)."""
        return {
            name: ModelState.READY if self._control.is_model_ready(name) else ModelState.UNAVAILABLE
            for name in self.slots
        }

    def serve_again(self) -> dict[str, Exception]:
        """Load every model again on a relaunched server; those that failed, with why (the others serve)."""
        failed = {}
        for name, slot in list(self.slots.items()):
            try:
                slot.reload()
            except Exception as error:  # one model that cannot load must not keep the others down
                failed[name] = error
        return failed

    def heal(self, live_stubs: dict[str, int]) -> None:
        """Load again every model with fewer live python backend stubs than instances (``live_stubs`` by name)."""
        now = time.monotonic()
        for name, slot in list(self.slots.items()):
            if not slot.versions or slot.loading or now < slot.heal_after:
                continue
            if slot.is_serving() and live_stubs[name] >= slot.spec.instances * len(slot.versions):
                continue
            why = "a python backend stub died" if slot.is_serving() else "it was not bound again after a restart"
            self._log(f"[tritonnb] model {name!r}: {why}; loading the model again")
            try:
                slot.reload()
                slot.stub_restarts += 1
            except Exception as error:
                slot.heal_after = now + HEAL_RETRY_S
                self._log(f"[tritonnb] model {name!r} could not be loaded again: {error}")

    def end_streams(self) -> None:
        """Every open stream gets an error saying the server stops."""
        for slot in self.slots.values():
            slot.end_streams()

    def take_generations(self) -> list[LoadedGeneration]:
        """Every model's generations, still to be retired (the slots keep their functions and specs), once the
        process has ended: their tensor-store memory, which the dead stubs cannot unlink, is unlinked here."""
        generations = [g for slot in self.slots.values() for g in slot.take_generations()]
        for generation in generations:
            generation.unlink_shared_memory()
        return generations

    def _check_name(self, name: str) -> None:
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise SpecError(f"bad model name {name!r}: use letters, digits, '.', '_' and '-'")
        if name.lower() in RESERVED_NAMES:
            raise SpecError(f"model name {name!r} is reserved by Triton's HTTP API; choose another")
        room = SOCKET_PATH_MAX - len(str(self._sockets)) - len("/m000000") - SOCKET_SUFFIX_MAX
        if len(name) > room:
            raise SpecError(
                f"model name {name!r} is too long: at most {room} characters fit in a unix socket path here"
            )
