"""Server settings: PyTriton's precedence (argument > PYTRITON_TRITON_CONFIG_* > default) plus port choice."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from tritonnb.errors import PortBusyError, SpecError
from tritonnb.triton._pytriton import triton_config_fields, triton_config_from_env
from tritonnb.triton.ports import next_free_port, port_is_free
from tritonnb.triton.repository import repository_paths

__all__ = [
    "ALL_INTERFACES",
    "DEFAULTS",
    "ENDPOINTS",
    "LOOPBACK",
    "UNSUPPORTED",
    "ServerSettings",
    "is_loopback",
    "resolve_settings",
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


@dataclasses.dataclass
class ServerSettings:
    """The resolved TritonConfig fields, and what the user should be told about them."""

    config: dict[str, Any]
    notes: list[str]
    picked_ports: list[str] = dataclasses.field(default_factory=list)  # endpoints whose port was not asked for
    repositories: tuple[pathlib.Path, ...] = ()  # Triton model repositories served beside the notebook's models

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
    **config: Any,
) -> ServerSettings:
    """Merge defaults, environment and arguments; pick free ports where none was asked for.

    ``model_repository``: one folder or several, each a Triton model repository whose models are served beside the
    notebook's (``PYTRITON_TRITON_CONFIG_MODEL_REPOSITORY`` when not given); checked here, before anything starts.
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
    chosen = {**from_env, **explicit}
    settings = ServerSettings(config={**DEFAULTS, **chosen}, notes=[], repositories=repositories)
    _check_supported(settings.config)
    if ":" in settings.address("http"):
        raise SpecError(
            f"HTTP address {settings.address('http')!r}: PyTriton 0.7.0 cannot run tritonserver with an IPv6 HTTP "
            "address (it builds its own URL from it without brackets); use 127.0.0.1, or IPv6 for gRPC/metrics only"
        )
    taken: set[int] = set()
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
        settings.notes.append("listening on all interfaces: anyone who can reach this machine can call the models")
    return settings
