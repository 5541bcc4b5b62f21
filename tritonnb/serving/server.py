"""The kernel's server as the API sees it: the tritonserver process with the notebook's models and the models of
existing repositories served on it; and the one such server of this process (``start``, ``stop``, ``server``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tritonnb import state
from tritonnb.errors import BindError, PortBusyError, ServerStartError, SpecError
from tritonnb.observe.monitor import ModelFacts
from tritonnb.serving.binding import BindResult, ModelSlot, retire_side_by_side
from tritonnb.serving.registry import ModelRegistry
from tritonnb.serving.status import server_status
from tritonnb.serving.streaming import is_stream_function
from tritonnb.signature import DEFAULT_MAX_BATCH_SIZE, TensorSpec
from tritonnb.states import ModelState, ServerState
from tritonnb.triton.browser_route import given_public_url
from tritonnb.triton.leftovers import record_owner
from tritonnb.triton.lifecycle import TritonServer
from tritonnb.triton.repository import RepositoryModel, RepositoryModels, failure_text
from tritonnb.triton.settings import ServerSettings, resolve_settings

START_ATTEMPTS = 3  # a port picked as free can be taken before tritonserver binds it (a second kernel starting)


class Server(TritonServer):
    """A background tritonserver owned by this process, and the models it serves for us.

    After a crash, tritonserver is started again on the same ports and every model is bound again (see
    ``TritonServer``); a model whose python backend stub died is loaded again. The models of
    ``settings.repositories`` (Triton model repositories) are served beside the notebook's: ``load_repositories()``
    loads them after the first start, and every restart loads them again.
    """

    def __init__(
        self, settings: ServerSettings, restart_on_crash: bool = True, public_url: tuple[str, str] | None = None
    ) -> None:
        super().__init__(settings, restart_on_crash, public_url)
        self.registry = ModelRegistry(self.sockets, self, self._report_model_error, self.log.write)
        self.repositories = RepositoryModels(settings.repositories, self.control, self.log.write)
        self._start()

    @property
    def models(self) -> dict[str, ModelSlot]:
        """The notebook's models, by name."""
        return self.registry.slots

    @property
    def repository_models(self) -> dict[str, RepositoryModel]:
        """The models loaded from ``settings.repositories``, by name."""
        return self.repositories.models

    # -- models ----------------------------------------------------------------------------------------
    def bind(
        self,
        fn: Callable,
        name: str,
        *,
        inputs: Sequence[TensorSpec | str] | None = None,
        outputs: Sequence[TensorSpec | str] | None = None,
        max_batch_size: int | None = None,
        batch_delay_us: int = 0,
        instances: int = 1,
        device: str | None = None,
        warmup: int = 0,
        timeout_s: float | None = None,
        stream: bool | None = None,
        version: int = 1,
        warmup_data: Any = None,
    ) -> BindResult:
        """Serve ``fn`` as ``version`` of model ``name``, beside the versions already served; binding the same name
        and version again hot-swaps it.

        ``warmup`` batches, generated from the inputs (or of ``warmup_data``, the user's own samples), run through
        ``fn`` before Triton may route a request to it.
        ``timeout_s``: requests whose call of ``fn`` takes longer get an error (the call itself runs on).
        ``stream``: serve ``fn`` as a stream (None: when it is a generator function); see ``tritonnb.bind``.
        """
        with self._lifecycle:  # waits for a recovery in progress
            self._check_ready()
            streams = is_stream_function(fn) if stream is None else stream
            if streams and timeout_s is not None:
                raise SpecError(f"model {name!r} streams: a timeout applies to functions that return once")
            if max_batch_size is None:
                max_batch_size = 0 if streams else DEFAULT_MAX_BATCH_SIZE
            served = self.repositories.clashing_with(name)
            if served is not None:
                raise SpecError(
                    f"model name {name!r} clashes with model {served.name!r} of the model repository "
                    f"{str(served.repository)!r}: Triton would serve one in place of the other; choose another name"
                )
            spec_options = {"max_batch_size": max_batch_size, "batch_delay_us": batch_delay_us, "instances": instances}
            return self.registry.bind(
                fn, name, inputs, outputs, spec_options, streams, device, warmup, timeout_s, version, warmup_data
            )

    def unbind(self, name: str, version: int | None = None) -> None:
        """Stop serving ``version`` of model ``name`` (None: every version); other models keep serving."""
        with self._lifecycle:
            self.registry.unbind(name, version)

    def model_states(self) -> dict[str, ModelState]:
        """Each of the notebook's models' state as Triton reports it (READY or UNAVAILABLE)."""
        return self.registry.states()

    def model_facts(self) -> dict[str, ModelFacts]:
        """What the monitor shows of each model beyond Triton's figures, by name: the notebook's models, then the
        repositories'."""
        facts = {}
        for name, slot in self.models.items():
            figures = slot.stream_stats.figures() if slot.spec.stream else None
            facts[name] = ModelFacts("notebook", slot.spec, slot.device, slot.version_list(), slot.loading, figures)
        for name, model in self.repository_models.items():
            facts[name] = ModelFacts("repository", model.spec, version=model.version)
        return facts

    def load_repositories(self) -> None:
        """Load every model of the served model repositories; BindError naming each that failed, with Triton's
        reason (the server and the other models serve on)."""
        with self._lifecycle:
            self._check_ready()
            unloaded = self.repositories.load(list(self.models))
            self._note_model_copies()
        if unloaded:
            raise BindError(f"{failure_text(unloaded)}\nThe server runs on, with the other models.")

    # -- what the model slots need (see binding.ModelControl) --------------------------------------------
    def load_model(self, name: str, config: str, files: dict[str, bytes]) -> None:
        """Load (or reload) a model from a config and files; returns when it is ready."""
        self.control.load_model(name, config, files)
        self._note_model_copies()

    def _note_model_copies(self) -> None:
        """Note the folders the running stubs serve from, Triton's copies of the loaded models (for a cloud
        repository's model, its download): the stop removes them, and so does the next start after a kill -9."""
        assert self._process is not None
        self._process.remember_stubs()
        record_owner(self.home, model_copies=self._process.model_copies)

    def unload_model(self, name: str) -> None:
        """Ask Triton to unload a model."""
        self.control.unload_model(name)

    def is_model_ready(self, name: str) -> bool:
        """Whether Triton reports the model ready."""
        return self.control.is_model_ready(name)

    def _report_model_error(self, model_name: str, text: str) -> None:
        self.log.write(f"[tritonnb] model {model_name!r} raised:\n{text.rstrip()}")

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """State, URLs, version, uptime, crash recovery, models and model repositories (with their models), as
        plain data."""
        return server_status(self)

    # -- the lifecycle's hooks ---------------------------------------------------------------------------
    def _before_end_process(self) -> None:
        with state.lock:
            clients = list(state.clients)
        for client in clients:  # their idle connections would hold tritonserver's exit up
            try:
                client.close()
            except Exception:  # nothing may keep tritonserver from being stopped
                continue

    def _before_stop(self) -> None:
        self.registry.end_streams()  # each client of an open stream gets an error saying why

    def _after_stop(self) -> Callable[[], None]:
        generations = self.registry.take_generations()
        return lambda: retire_side_by_side(generations)

    def _serve_again(self) -> list[str]:
        failed = self.registry.serve_again()
        unloaded = self.repositories.load(list(self.models))
        self._note_model_copies()
        problems = ["these models could not be bound again: " + _listed(failed)] if failed else []
        if unloaded:
            problems.append(failure_text(unloaded))
        return problems

    def _heal(self) -> None:
        """Load again every model whose python backend stub died (unless the server is busy or not ready)."""
        if not self._lifecycle.acquire(blocking=False):
            return
        try:
            if self.state == ServerState.READY and self._process is not None:
                self.registry.heal(self._process.live_stubs())
        finally:
            self._lifecycle.release()


def _listed(failed: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {error}" for name, error in failed.items())


# -- the process-wide server (held in tritonnb.state) ------------------------------------------------------
def start(restart_on_crash: bool = True, **options: Any) -> Server:
    """Start the background server (see ``resolve_settings`` for options), or return the running one.

    Ports left out are picked free; if one is taken before tritonserver binds it (another kernel starting at the
    same moment), new ones are picked and it starts again.
    """
    current = state.server
    if current is not None and current.state != ServerState.STOPPED:
        if options or not restart_on_crash:
            raise ServerStartError(f"a server already runs at {current.http_url}; stop() it first to change options")
        return current
    public_url = given_public_url(options.pop("public_url", None))  # a bad one fails before anything starts
    attempt = 1
    while True:
        settings = resolve_settings(**options)
        try:
            started = state.server = Server(settings, restart_on_crash=restart_on_crash, public_url=public_url)
            break
        except PortBusyError:
            if not settings.picked_ports or attempt == START_ATTEMPTS:
                raise
            attempt += 1
    if settings.repositories:
        started.load_repositories()  # a model that fails to load raises; the server runs on
    return started


def stop() -> float | None:
    """Stop the background server; return the seconds it took, or None if none ran."""
    current = state.server
    if current is None:
        return None
    seconds = current.stop()
    state.server = None
    return seconds


def server() -> Server | None:
    """The server started by this process (its ``state`` says if it is READY or DOWN), or None."""
    current = state.server
    return current if current is not None and current.state != ServerState.STOPPED else None


__all__ = ["Server", "server", "start", "stop"]
