"""Server settings: PyTriton's precedence (argument > PYTRITON_TRITON_CONFIG_* > default), port choice, the model
repositories served beside the notebook's models, and Triton's Vertex AI routes."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Sequence
from typing import Any

from tritonnb.errors import PortBusyError, SpecError
from tritonnb.triton._pytriton import triton_config_fields, triton_config_from_env
from tritonnb.triton.ports import next_free_port, port_is_free
from tritonnb.triton.repository import Location, find_models, repository_paths

__all__ = [
    "ALL_INTERFACES",
    "DEFAULTS",
    "ENDPOINTS",
    "LOOPBACK",
    "UNSUPPORTED",
    "VERTEX_AI_ROUTES",
    "ServerSettings",
    "VertexAi",
    "is_loopback",
    "resolve_settings",
    "under_jupyterhub",
]

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
ENDPOINTS = ("http", "grpc", "metrics")
DEFAULTS: dict[str, Any] = {
    "http_port": 8000,
    "grpc_port": 8001,
    "metrics_port": 8002,
    "http_address": LOOPBACK,
    "grpc_address": LOOPBACK,
    "metrics_address": LOOPBACK,
    "exit_timeout_secs": 5,  # Triton waits this long for in-flight requests on stop (its own default is 30)
    # latency quantiles (the panels' p50) on /metrics; a metrics_config given as argument or environment replaces it
    "metrics_config": ("summary_latencies=true",),
}

# where Vertex AI's routes are when AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE are not set (as in the exported README)
VERTEX_AI_ROUTES = {"AIP_PREDICT_ROUTE": "/predict", "AIP_HEALTH_ROUTE": "/health"}
VERTEX_AI_DEFAULT_PORT = 8080  # Triton's, when AIP_HTTP_PORT is not set
VERTEX_AI_FIELDS = ("allow_vertex_ai", "vertex_ai_port", "vertex_ai_default_model")  # TritonConfig's
# what JupyterHub sets in a single-user server's environment, and so in its kernels' (see triton.browser_route)
JUPYTERHUB_SIGNS = ("JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_API_TOKEN")
PRIVATE_NOTE = (
    "private serving: inference, metadata and model config need this kernel's access token (header "
    "triton-access-token; gRPC triton-grpc-protocol-triton-access-token); this kernel's clients, panels, "
    "%triton_perf and cards send it; server.access_token has it (new on each start)"
)
PRIVATE_OFF_NOTE = (
    "private serving: off, any user of this machine can call the models (--private or private=True: only with this "
    "kernel's access token)"
)


@dataclasses.dataclass(frozen=True)
class VertexAi:
    """Triton's Vertex AI routes, served beside HTTP and gRPC on a port of their own (on all interfaces: Triton 2.51
    has no address option for them).

    Triton picks the predict route's model when it starts, among the models loaded then; the notebook's models are
    bound later. So ``default_model`` is either a model of a served repository, loaded at start, or else a
    placeholder tritonnb loads at start under that name, which the notebook's model of that name replaces when it is
    bound. Any other model answers there with the header ``X-Vertex-Ai-Triton-Redirect: v2/models/NAME/infer``.
    """

    port: int
    default_model: str
    predict_route: str
    health_route: str
    from_repository: bool  # the default model is a served repository's; else a placeholder until the notebook's

    def environment(self) -> dict[str, str]:
        """What tritonserver reads the routes from."""
        return {"AIP_PREDICT_ROUTE": self.predict_route, "AIP_HEALTH_ROUTE": self.health_route}

    def url(self, route: str) -> str:
        """A route's URL on this machine."""
        return f"http://{LOOPBACK}:{self.port}{route}"


@dataclasses.dataclass
class ServerSettings:
    """The resolved TritonConfig fields, and what the user should be told about them."""

    config: dict[str, Any]
    notes: list[str]
    picked_ports: list[str] = dataclasses.field(default_factory=list)  # endpoints whose port was not asked for
    repositories: tuple[Location, ...] = ()  # Triton model repositories served beside the notebook's models
    vertex_ai: VertexAi | None = None  # Triton's Vertex AI routes, when asked for
    private: bool = False  # inference, metadata and model config need the access token too

    def port(self, endpoint: str) -> int:
        """The port of ``http``, ``grpc`` or ``metrics``."""
        return int(self.config[f"{endpoint}_port"])

    def address(self, endpoint: str) -> str:
        """The address ``endpoint`` binds (metrics default to the HTTP address, as in Triton)."""
        return str(self.config.get(f"{endpoint}_address") or self.config.get("http_address") or ALL_INTERFACES)

    @property
    def public(self) -> bool:
        """True when any endpoint listens beyond loopback."""
        return not all(is_loopback(self.address(e)) for e in ENDPOINTS)

    def url_host(self, endpoint: str) -> str:
        """The host to put in a URL that reaches ``endpoint`` from this machine (IPv6 in brackets)."""
        address = self.address(endpoint)
        if address in ("0.0.0.0", ""):
            return LOOPBACK
        if address == "::":
            return "[::1]"
        return f"[{address}]" if ":" in address else address


UNSUPPORTED = {
    "allow_http": (False, "tritonnb checks health, serves cards and panels over HTTP"),
    "allow_grpc": (False, "tritonnb loads models through Triton's gRPC model-control API"),
    "grpc_use_ssl": (True, "tritonnb's own gRPC client talks to the local server without TLS"),
}


def _check_supported(config: dict[str, Any]) -> None:
    for key, (value, reason) in UNSUPPORTED.items():
        if config.get(key) == value:
            raise SpecError(f"{key}={value} is not supported: {reason}")
    if config.get("log_file"):
        raise SpecError("log_file is not supported: tritonnb keeps Triton's log itself (%triton logs, server.log.path)")


def under_jupyterhub() -> bool:
    """Whether this kernel runs under JupyterHub (one machine, many users), by the variables JupyterHub sets."""
    return any(os.environ.get(name) for name in JUPYTERHUB_SIGNS)


def is_loopback(address: str) -> bool:
    """Whether an address (or ``localhost``) only reaches this machine: 127.0.0.0/8 or ::1."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def resolve_settings(
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    public: bool = False,
    log_verbose: int | None = None,
    model_repository: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    vertex_ai_port: int | None = None,
    vertex_ai_default_model: str | None = None,
    private: bool | None = None,
    **config: Any,
) -> ServerSettings:
    """Merge defaults, environment and arguments; pick free ports where none was asked for.

    ``model_repository``: one folder or several, each a Triton model repository whose models are served beside the
    notebook's (``PYTRITON_TRITON_CONFIG_MODEL_REPOSITORY`` when not given), or an object store's URL (``s3://``,
    ``gs://``, ``as://``); checked here, before anything starts.

    ``vertex_ai_port``: also serve Vertex AI's routes there (``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``; ``/predict``
    and ``/health`` when unset); the predict route runs ``vertex_ai_default_model`` (see ``VertexAi``), which may be
    left out when the served repositories hold exactly one model.

    ``private``: inference, metadata and model config need the server's access token too (as model control and
    statistics always do), so that other users of a shared machine cannot call or read the models; server health
    stays open. None: on under JupyterHub, off elsewhere.
    """
    unknown = sorted(set(config) - triton_config_fields())
    if unknown:
        raise SpecError(
            f"unknown server option(s) {', '.join(unknown)}: see pytriton.triton.TritonConfig for the names"
        )
    explicit = {
        k: v
        for k, v in dict(
            config, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, log_verbose=log_verbose
        ).items()
        if v is not None
    }
    if public:
        explicit.update({f"{e}_address": ALL_INTERFACES for e in ENDPOINTS})
    from_env = triton_config_from_env()
    env_repository = from_env.pop("model_repository", None)
    repositories = repository_paths(model_repository if model_repository is not None else env_repository)
    # Vertex AI's fields, from the environment (PYTRITON_TRITON_CONFIG_*) unless given here
    vertex = {key: source.pop(key) for source in (from_env, explicit) for key in VERTEX_AI_FIELDS if key in source}
    vertex_ai = _vertex_ai(
        vertex_ai_port if vertex_ai_port is not None else vertex.get("vertex_ai_port"),
        vertex_ai_default_model or vertex.get("vertex_ai_default_model"),
        bool(vertex.get("allow_vertex_ai")),
        repositories,
    )
    chosen = {**from_env, **explicit}
    if vertex_ai is not None:
        chosen.update(
            allow_vertex_ai=True, vertex_ai_port=vertex_ai.port, vertex_ai_default_model=vertex_ai.default_model
        )
    elif os.environ.get("AIP_MODE") == "PREDICTION":  # Triton would turn to Vertex AI's routes alone
        chosen.update(allow_vertex_ai=False, allow_http=True, allow_grpc=True)
    settings = ServerSettings(
        config={**DEFAULTS, **chosen},
        notes=[],
        repositories=repositories,
        vertex_ai=vertex_ai,
        private=under_jupyterhub() if private is None else bool(private),
    )
    _check_supported(settings.config)
    if ":" in settings.address("http"):
        raise SpecError(
            f"HTTP address {settings.address('http')!r}: PyTriton 0.7.0 cannot run tritonserver with an IPv6 HTTP "
            "address (it builds its own URL from it without brackets); use 127.0.0.1, or IPv6 for gRPC/metrics only"
        )
    taken: set[int] = set()
    if vertex_ai is not None:
        if not port_is_free(ALL_INTERFACES, vertex_ai.port):
            raise PortBusyError(f"Vertex AI port {vertex_ai.port} is already in use by another process; choose another")
        taken.add(vertex_ai.port)
        settings.notes.append(
            f"Vertex AI routes on port {vertex_ai.port} of all interfaces (Triton has no address option for them): "
            f"POST {vertex_ai.predict_route} runs {vertex_ai.default_model!r}, GET {vertex_ai.health_route}"
        )
    for endpoint in ENDPOINTS:
        key = f"{endpoint}_port"
        port, address = settings.port(endpoint), settings.address(endpoint)
        if key in chosen:
            if port in taken or not port_is_free(address, port):
                raise PortBusyError(
                    f"{endpoint} port {port} on {address} is already in use by another process; "
                    f"choose another (--{endpoint}-port) or leave it out to get a free one"
                )
        else:
            settings.picked_ports.append(endpoint)
            if port in taken or not port_is_free(address, port):
                free = next_free_port(address, port + 1, avoid=taken | {settings.port(e) for e in ENDPOINTS})
                settings.notes.append(f"{endpoint} port {port} is busy; using {free} instead")
                settings.config[key] = port = free
        taken.add(port)
    if settings.public:
        reach = "has this kernel's token" if settings.private else "can reach this machine"
        settings.notes.append(f"listening on all interfaces: anyone who {reach} can call the models")
    if settings.private:
        settings.notes.append(PRIVATE_NOTE)
    else:
        settings.notes.append(PRIVATE_OFF_NOTE)
    return settings


def _vertex_ai(
    port: int | str | None, default_model: str | None, allowed: bool, repositories: Sequence[Location]
) -> VertexAi | None:
    """Triton's Vertex AI routes, if asked for (a port, or ``allow_vertex_ai``: ``AIP_HTTP_PORT`` or 8080)."""
    if port is None and not allowed:
        if default_model:
            raise SpecError("vertex_ai_default_model needs vertex_ai_port: the port of Vertex AI's routes")
        return None
    if port is None:
        port = os.environ.get("AIP_HTTP_PORT") or VERTEX_AI_DEFAULT_PORT
    found, _ = find_models(repositories)
    if not default_model:
        if len(found) != 1:
            raise SpecError(
                "vertex_ai_port needs vertex_ai_default_model=NAME (--vertex-ai-default-model): the model Vertex AI's "
                "predict route runs. Triton picks it when it starts, before the notebook's models are bound (then "
                "NAME answers once its cell has run); other models answer there with the header "
                "X-Vertex-Ai-Triton-Redirect: v2/models/<name>/infer"
            )
        default_model = next(iter(found))
    routes = {name: os.environ.get(name) or route for name, route in VERTEX_AI_ROUTES.items()}
    for name, route in routes.items():
        if not route.startswith("/"):
            raise SpecError(f"{name}={route!r}: a route starts with '/'")
    return VertexAi(
        port=int(port),
        default_model=default_model,
        predict_route=routes["AIP_PREDICT_ROUTE"],
        health_route=routes["AIP_HEALTH_ROUTE"],
        from_repository=default_model in found,
    )
