"""tritonnb: serve PyTorch functions from a notebook with NVIDIA Triton Inference Server.

``%load_ext tritonnb`` registers the magics; the same features are plain functions here. Heavy imports (PyTriton,
torch) happen on first use, so loading the extension stays cheap. Errors the kit raises on purpose derive from
``TritonnbError`` and live in ``errors``.

The package, by layer (each imports only the layers below it):

- Two front ends at the top: this module (the Python API) and ``magics`` (``%%triton_model``, ``%triton``,
  ``%triton_perf``, ``%triton_tune``), which parses lines and calls the Python API; beside them the documented
  modules ``perf`` and ``tune``, ``model_client`` (what ``tritonnb.client`` returns) and ``__main__``
  (``python -m tritonnb install``).
- ``ui``: what the notebook shows. ``card`` (what a bind shows), ``report`` (status text), the ipywidgets ``panel``,
  ``fleet_panel`` and per-model strip with their ``controls``, ``render`` (their HTML), ``live_chart``,
  ``progress``, and ``cell``, which runs a ``%%triton_model`` cell and picks its function.
- ``deploy``: a served model written to a Triton model repository (``export``, ``capture``, ``torchscript``,
  ``model_config``, ``layout``) with what runs it elsewhere (``compose``, ``kubernetes``, ``templates/``).
- ``loadtest``: load tests and batching sweeps that return dataclasses (``perf``, ``loadgen``, ``tune``), and the
  ``tables`` and ``charts`` those results show themselves with.
- ``serving``: the notebook's functions on the server. ``server.Server`` (what ``tritonnb.server()`` returns) puts
  together the process below, the ``registry`` of models (one ``binding.ModelSlot`` per name: swap in place, or load
  a new generation and retire the old one once quiet) and ``status``. The trampoline the kernel's channel threads call
  is ``served_function`` (numpy -> torch via ``torch_bridge`` -> the function -> numpy, with ``output_check``) and,
  for generators, ``streaming``.
- ``triton``: the one tritonserver of this kernel. ``lifecycle`` (start, stop, restart, crash hooks), ``supervisor``
  (crash recovery), ``settings``, ``ports``, ``logs``, ``model_control`` (gRPC, with the access token),
  ``repository`` (existing model repositories served beside the notebook's models), ``browser_route`` (reaching the
  ports through Jupyter), ``leftovers`` and ``process_exit`` (nothing outlives the kernel), ``engine`` (installs
  PyTriton beside any numpy: ``python -m tritonnb install``), ``channel`` (the short path from each python-backend
  stub to the kernel: one unix socket and one kernel thread per stub) and ``_pytriton``, the only module touching
  PyTriton's private names (the server process; streams through its proxy), with the files both send to the stub
  (``stub/``).
- ``observe``: what a server is doing, as plain data: ``monitor`` (snapshots) and ``poller`` (shared by panels),
  from ``metrics_text``, ``stats_api``, ``host_gpu`` and ``stream_stats``; ``remote_spec`` reads a model's spec from
  the server that serves it.
- At the bottom, shared by all: ``errors``, ``states`` (server and model states), ``signature`` (tensor specs),
  ``http_get``, and ``state``, the process-wide state (the server, pollers, clients and strips this process holds;
  it imports the types it holds for type checking only).
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tritonnb import state
from tritonnb.errors import (
    BindError,
    CellError,
    EngineError,
    ExportError,
    InputError,
    ModelError,
    ModelTimeout,
    NoServerError,
    OutputError,
    PerfError,
    PortBusyError,
    ServerStartError,
    SignatureMismatch,
    SpecError,
    StreamClosed,
    StreamEnded,
    TritonnbError,
    UnknownModelError,
    WarmupError,
)
from tritonnb.states import ModelState, ServerState

if TYPE_CHECKING:
    from tritonnb.deploy.export import ExportResult
    from tritonnb.model_client import ModelClient
    from tritonnb.serving.server import Server
    from tritonnb.signature import TensorSpec
    from tritonnb.ui.card import ModelCard
    from tritonnb.ui.fleet_panel import FleetPanel
    from tritonnb.ui.panel import Panel

__all__ = [
    "BindError",
    "CellError",
    "EngineError",
    "ExportError",
    "InputError",
    "ModelError",
    "ModelState",
    "ModelTimeout",
    "NoServerError",
    "OutputError",
    "PerfError",
    "PortBusyError",
    "ServerStartError",
    "ServerState",
    "SignatureMismatch",
    "SpecError",
    "StreamClosed",
    "StreamEnded",
    "TritonnbError",
    "UnknownModelError",
    "WarmupError",
    "bind",
    "card",
    "client",
    "export",
    "metrics",
    "panel",
    "perf",
    "restart",
    "serve_forever",
    "server",
    "start",
    "stop",
    "tune",
    "unbind",
]
DOCUMENTED_MODULES = ("perf", "tune")  # reachable as tritonnb.perf etc. after ``import tritonnb`` alone


def __getattr__(name: str) -> Any:
    """The documented modules, imported on first use so that ``%load_ext tritonnb`` stays cheap."""
    if name in DOCUMENTED_MODULES:
        return importlib.import_module(f"tritonnb.{name}")
    raise AttributeError(f"module 'tritonnb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *DOCUMENTED_MODULES})


__version__ = "0.1.0"


def start(restart_on_crash: bool = True, **options: Any) -> Server:
    """Start the background Triton server, or return the running one.

    Options: ``http_port``, ``grpc_port``, ``metrics_port``, ``public``, ``log_verbose``, ``model_repository``,
    ``public_url`` and any other ``pytriton.triton.TritonConfig`` field. Precedence: argument >
    ``PYTRITON_TRITON_CONFIG_*`` > default.
    ``public_url`` (else ``$TRITONNB_PUBLIC_URL``) is where a browser reaches the HTTP port, for port forwarding or a
    reverse proxy (``{port}`` in it stands for each port); without it, cards and panels link through
    jupyter-server-proxy when the kernel runs under a Jupyter server (JupyterHub, a remote lab, Binder).
    ``model_repository`` (one folder or a list) serves the models of existing Triton model repositories
    (``DIR/<model>/config.pbtxt``, ``DIR/<model>/<version>/...``) beside the notebook's; each restart loads them
    again. A folder that is missing or holds no model raises before anything starts; a model that fails to load
    raises ``BindError`` with Triton's reason, and the server runs on with the others.
    If tritonserver exits without being asked, it is started again on the same ports with every model bound again
    (after 3 exits within 60 s it gives up and says so), and a model whose python backend stub died is loaded
    again; ``restart_on_crash=False`` turns both off.
    """
    from tritonnb.serving import server as serving

    return serving.start(restart_on_crash=restart_on_crash, **options)


def stop() -> float | None:
    """Stop the server and every model; return the seconds it took (None if none ran)."""
    from tritonnb.serving import server as serving

    return serving.stop()


def server() -> Server | None:
    """The server this process started, or None."""
    from tritonnb.serving import server as serving

    return serving.server()


def restart() -> float:
    """Restart the server on the same ports and bind every model again; return the seconds it took."""
    current = server()
    if current is None:
        raise NoServerError("no Triton server runs; start one with tritonnb.start()")
    return current.restart()


def bind(
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
    version: int | None = None,
    warmup_data: Any = None,
) -> ModelCard:
    """Serve ``fn`` as Triton model ``name`` (starting the server if needed); binding a name again hot-swaps it.

    ``version``: serve ``fn`` as that version of the model, beside the versions already served (each answers at
    ``/v2/models/NAME/versions/N/infer``; the URL without a version answers with the newest). Versions share one
    spec: inputs, outputs and batching, as Triton keeps one config per model. Without it, version 1.

    ``inputs``/``outputs`` are specs like ``"x:float32[-1,64]"`` (dims per sample; the batch dim is implied when
    ``max_batch_size`` > 0). Without inputs, each parameter becomes a ``float32[-1]`` input; without outputs, one
    ``output:float32[-1]``. ``fn`` gets torch tensors on ``device`` (CUDA when available) and may return a tensor,
    a tuple or a dict of tensors or numpy arrays. ``warmup`` generated batches run through ``fn`` before Triton
    may route a request to it (and before a swap takes effect); a failing warm-up raises and changes nothing.
    ``warmup_data``: warm up with your own samples instead (a dict of arrays by input name, one array for a one-input
    model, or an .npz file; a batch, or one sample), ``warmup`` times, at least once: for a model whose generated
    inputs mean nothing (PNG bytes, say).

    Every result is checked against the declared outputs (dtype, per-sample dims, batch size): a mismatch fails that
    request with a message naming the output, and the other requests of its batch still get their results. With
    ``timeout_s``, a request whose call takes longer gets an error; the call itself runs on (threads cannot be
    killed), so the default is no timeout. ``max_batch_size`` defaults to 32 (0: no batching).

    A generator function (``yield``, sync or async) is served as a stream: a decoupled model that sends each ``yield``
    as one response, as soon as it is yielded, and ends the stream when the generator returns (``stream=True`` also
    serves a function that returns an iterator). A stream is not batched; a client that goes away closes its
    generator; a swap reaches new streams while running ones finish on the function they started with.
    """
    from tritonnb.ui.card import ModelCard

    current = server() or start()
    result = current.bind(
        fn,
        name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        batch_delay_us=batch_delay_us,
        instances=instances,
        device=device,
        warmup=warmup,
        timeout_s=timeout_s,
        stream=stream,
        version=1 if version is None else version,
        warmup_data=warmup_data,
    )
    slot = current.models[name]
    served = slot.versions[1 if version is None else version]
    shown = ModelCard(
        slot.spec,
        served.device,
        current.http_url,
        current.grpc_url,
        result,
        getattr(fn, "__name__", "function"),
        served.timeout_s,
        current.browser_route,
        # the card names its version where the URL without one could reach another
        version if version is not None or len(slot.versions) > 1 else None,
        slot.version_list(),
    )
    with state.lock:
        state.cards[(name, 1 if version is None else version)] = shown
    return shown


def card(name: str, version: int | None = None) -> ModelCard:
    """The card of model ``name``'s last bind (of ``version``; None: of the newest version): the same object
    ``tritonnb.bind`` returned and ``%%triton_model`` showed."""
    current = server()
    if current is None:
        raise NoServerError("no Triton server runs")
    if name not in current.models:
        raise UnknownModelError.among(name, current.models)
    slot = current.models[name]
    slot.require_version(version)
    with state.lock:
        found = state.cards.get((name, max(slot.versions) if version is None else version))
    if found is None:
        raise UnknownModelError(f"model {name!r} has no card here: it was not bound from this process's API")
    return found


def unbind(name: str, version: int | None = None) -> None:
    """Stop serving model ``name`` (``version``: that version alone; the others serve on); other models keep
    serving."""
    current = server()
    if current is None:
        raise NoServerError("no Triton server runs")
    current.unbind(name, version)
    with state.lock:
        for key in [k for k in state.cards if k[0] == name and version in (None, k[1])]:
            del state.cards[key]


def client(name: str, version: int | None = None) -> ModelClient:
    """A callable for model ``name`` on the running server: numpy arrays or torch tensors in, dict of arrays out.
    ``version``: that version of the model (None: the newest)."""
    from tritonnb.model_client import ModelClient

    current = server()
    if current is None:
        raise NoServerError("no Triton server runs")
    if name not in current.models and name not in current.repository_models:
        raise UnknownModelError.among(name, [*current.models, *current.repository_models])
    if name in current.models:
        current.models[name].require_version(version)
    return ModelClient(name, current.http_url, current.grpc_url, version)


def export(
    name: str,
    directory: str | os.PathLike,
    *,
    version: int | None = None,
    model_format: str = "python",
    force: bool = False,
) -> ExportResult:
    """Write served model ``name`` to the Triton model repository ``directory``, with what runs it elsewhere.

    ``directory/name/config.pbtxt`` and ``directory/name/<version>/`` load in any ``tritonserver --model-repository``;
    beside them: ``docker-compose.yml``, a ``Dockerfile``, ``serve_here.sh``, a ``README.md`` and Kubernetes manifests
    (a KServe InferenceService, a Deployment + Service). ``model_format``: ``python`` (the function with everything it
    uses) or ``torchscript`` (traced; no Python in the fleet). Each export adds a version; an existing one is replaced
    only with ``force=True``. ExportError says what could not be exported; nothing is then written.
    """
    from tritonnb.deploy.export import export as export_model

    return export_model(name, directory, version=version, model_format=model_format, force=force)


def panel(
    url: str | None = None,
    *,
    urls: Sequence[str] | None = None,
    metrics_url: str | None = None,
    token: str | None = None,
    interval_s: float = 1.0,
) -> Panel | FleetPanel:
    """A live dashboard of this kernel's server, or of any Triton server at ``url`` (metrics on port + 2 unless
    ``metrics_url`` is given; ``token`` for its statistics API if it restricts it).

    ``urls``: a fleet view instead, one row per server (health, models, req/s, p50, failures), e.g. a teacher
    watching a room of attendees' servers. Each server is polled once however many panels watch it.
    """
    from tritonnb.observe.monitor import target_for

    if urls is not None:
        from tritonnb.ui.fleet_panel import FleetPanel

        if url is not None or metrics_url is not None:
            raise SpecError("give either url (and metrics_url) or urls, not both")
        if not urls or isinstance(urls, str):
            raise SpecError("urls takes a list of Triton HTTP URLs, at least one")
        return FleetPanel([target_for(u, None, token, server()) for u in urls], interval_s)
    from tritonnb.ui.panel import Panel

    return Panel(target_for(url, metrics_url, token, server()), interval_s)


def metrics(url: str | None = None, *, metrics_url: str | None = None, token: str | None = None) -> dict[str, Any]:
    """The current health, per-model figures and host figures as plain data (rates cover the time since the
    previous call for the same server; None on the first)."""
    from tritonnb.observe.monitor import Monitor, target_for

    target = target_for(url, metrics_url, token, server())
    with state.lock:
        monitor = state.monitors.get(target.key)
        if monitor is None or monitor.target != target:
            monitor = state.monitors[target.key] = Monitor(target)
    return monitor.poll().as_dict()


def serve_forever(poll_s: float = 1.0) -> None:
    """Block while the server runs (for scripts); Ctrl+C stops it. Returns if tritonserver dies.

    On the main thread, Ctrl+C only sets a flag: a KeyboardInterrupt raised in the middle of a state check could
    leave a lock of the process handle held, and the stop then waited on it for ever.
    """
    current = server()
    if current is None:
        raise NoServerError("nothing to serve: bind a model first")
    interrupted = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    except ValueError:  # not the main thread: Ctrl+C stays the main thread's own
        previous = None
    try:
        while not interrupted.is_set() and current.state == ServerState.READY:
            interrupted.wait(poll_s)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        stop()


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext tritonnb``: register the magics (no server starts yet)."""
    from tritonnb.magics import TritonMagics

    ipython.register_magics(TritonMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext tritonnb``: stop the server."""
    stop()
