"""Plain-text views of a server's status for ``%triton status`` and ``%triton models``."""

from __future__ import annotations

from typing import Any

from tritonnb.states import ModelState

__all__ = ["format_models", "format_status"]


def format_models(status: dict[str, Any]) -> str:
    """One line per model: the notebook's (name, state, versions, device, binds), then the model repositories' (name,
    state, versions, repository, and why one is not ready)."""
    models = status["models"]
    from_repositories = status.get("repository_models", {})
    if not models and not from_repositories:
        return "no models are served"
    width = max(len(n) for n in [*models, *from_repositories])
    lines = [
        f"{name:<{width}}  {m['state']:<11}  v{m['version'] or '-':<5}  {m['device']:<6}  binds={m['binds']}"
        for name, m in models.items()
    ]
    for name, m in from_repositories.items():
        line = f"{name:<{width}}  {m['state']:<11}  v{m['version'] or '-':<5}  from repository {m['repository']}"
        reason = m["reason"].strip().splitlines()
        lines.append(line + (f": {reason[0]}" if reason and m["state"] != ModelState.READY else ""))
    return "\n".join(lines)


def format_status(status: dict[str, Any]) -> str:
    """State, pid, version, uptime, endpoints, log file, model repositories and models."""
    lines = [
        f"Triton {status['version']}: {status['state']} (pid {status['pid']}, up {status['uptime_s']:.0f} s)",
        f"  HTTP     {status['http_url']}",
        f"  gRPC     {status['grpc_url'].removeprefix('grpc://')}",
        f"  metrics  {status['metrics_url']}",
        *_vertex_ai_lines(status.get("vertex_ai")),
        *_browser_line(status["browser"]),
        f"  log      {status['log_file']}",
    ]
    lines += [f"  repo     {path}" for path in status.get("repositories", [])]
    if status["public"]:
        lines.append("  listening on all interfaces")
    if status.get("private"):
        lines.append("  private: inference, metadata and model config need this kernel's access token")
    restart = "on" if status["restart_on_crash"] else "off"
    lines.append(f"  restart on crash: {restart}; restarts so far: {status['restarts']}")
    if status["recovery"]:
        lines.append(f"  {status['recovery']}")
    if status["crashes"]:
        last = status["crashes"][-1]
        lines.append("  last log lines before the last crash:")
        lines += ["    " + line for line in last["log_tail"].splitlines()[-5:]]
    lines.append("models:")
    lines += ["  " + line for line in format_models(status).splitlines()]
    return "\n".join(lines)


def _browser_line(route: dict[str, Any]) -> list[str]:
    """Where a browser reaches the server, when it is not on this machine."""
    return [f"  browser  {route['http']} ({route['via']})"] if route["http"] else []


def _vertex_ai_lines(routes: dict[str, str] | None) -> list[str]:
    """Vertex AI's routes, when the server serves them."""
    if not routes:
        return []
    return [
        f"  Vertex AI predict {routes['predict_url']} (model {routes['default_model']})",
        f"  Vertex AI health  {routes['health_url']}",
    ]
