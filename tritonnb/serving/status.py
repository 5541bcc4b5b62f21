"""A server's status as plain data: state, URLs, crash recovery, the notebook's models and the repositories'."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from tritonnb.states import ModelState, ServerState

if TYPE_CHECKING:
    from tritonnb.serving.server import Server

__all__ = ["server_status"]


def server_status(server: Server) -> dict[str, Any]:
    """What ``Server.status()`` returns (and ``%triton status`` shows)."""
    ready = server.state == ServerState.READY
    states = server.registry.states() if ready else {}
    if ready:
        server.repositories.refresh()
    else:
        server.repositories.mark_unavailable()
    return {
        "state": server.state,
        "pid": server.pid,
        "version": server.version,
        "uptime_s": round(server.uptime_s, 1),
        "http_url": server.http_url,
        "grpc_url": server.grpc_url,
        "metrics_url": server.metrics_url,
        "vertex_ai": _vertex_ai(server),
        "public": server.settings.public,
        "private": server.settings.private,
        "browser": dataclasses.asdict(server.browser_route),
        "log_file": str(server.log.path),
        "restart_on_crash": server.supervisor.enabled,
        "restarts": server.supervisor.restarts,
        "recovery": server.supervisor.summary(),
        "crashes": [c.as_dict() for c in list(server.supervisor.crashes)[-5:]],
        "models": {
            name: {
                "state": states.get(name, ModelState.UNAVAILABLE),
                "device": slot.device,
                "version": slot.version_list(),
                "binds": slot.binds,
                "stub_restarts": slot.stub_restarts,
            }
            for name, slot in server.models.items()
        },
        "repositories": [str(path) for path in server.settings.repositories],
        "repository_models": {name: model.as_dict() for name, model in server.repository_models.items()},
    }


def _vertex_ai(server: Server) -> dict[str, str] | None:
    """Where Vertex AI's routes answer, and which model the predict route runs; None when they are off."""
    routes = server.settings.vertex_ai
    if routes is None:
        return None
    return {
        "predict_url": routes.url(routes.predict_route),
        "health_url": routes.url(routes.health_route),
        "default_model": routes.default_model,
    }
