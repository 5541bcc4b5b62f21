"""Where a browser reaches this kernel's server: a URL the user gave, or the Jupyter server's proxy.

In a workshop the browser is rarely on the kernel's machine (JupyterHub, a remote lab, Binder, a forwarded port), so
``http://127.0.0.1:8000`` is right for curl inside the kernel and a dead link in the browser. In order:

1. ``%triton start --public-url URL`` / ``tritonnb.start(public_url=URL)``;
2. the ``TRITONNB_PUBLIC_URL`` environment variable;
3. jupyter-server-proxy on the Jupyter server that started this kernel: ``{base_url}proxy/{port}``, with the base URL
   of that server (found by the ``JPY_PARENT_PID`` its kernels get), else ``JUPYTERHUB_SERVICE_PREFIX``.

A URL with ``{port}`` in it stands for every port (``https://gpu-box.example/proxy/{port}``); without it, it is the
HTTP endpoint's own URL (``http://localhost:18000`` for ``ssh -L 18000:localhost:8000``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tritonnb.errors import SpecError
from tritonnb.http_get import get_bytes

__all__ = [
    "PROBE_TIMEOUT_S",
    "PUBLIC_URL_ENV",
    "BrowserRoute",
    "RouteProbe",
    "browser_route",
    "check_public_url",
    "given_public_url",
    "jupyter_server_of_this_kernel",
]

PUBLIC_URL_ENV = "TRITONNB_PUBLIC_URL"
PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class BrowserRoute:
    """How a browser reaches the server: ``http`` is the HTTP endpoint's base URL as the browser sees it (an absolute
    URL, or a path on the page's own origin), ``metrics`` the metrics URL if reachable, ``via`` how it was found."""

    http: str | None = None
    metrics: str | None = None
    via: str = ""
    note: str = ""  # why there is no route, when there is a reason worth telling

    def infer_url(self, model: str) -> str | None:
        """The browser's URL of a model's inference endpoint."""
        return f"{self.http}/v2/models/{model}/infer" if self.http else None


def check_public_url(url: str, source: str) -> str:
    """``url`` without a trailing slash, or SpecError naming ``source`` when it cannot be a browser's URL."""
    text = url.strip().rstrip("/").replace("{{port}}", "{port}")  # {{port}}: how a magic line keeps it from IPython
    parsed = urllib.parse.urlsplit(text.replace("{port}", "1"))
    try:
        parsed.port  # noqa: B018 (a port out of range or not a number raises here)
    except ValueError:
        absolute = False
    else:
        absolute = parsed.scheme in ("http", "https") and bool(parsed.hostname)
    on_this_origin = text.startswith("/") and not text.startswith("//")
    if not (absolute or on_this_origin) or any(c.isspace() or c in "?#" for c in text):
        raise SpecError(
            f"{source} {url!r} is not a browser URL: give http(s)://host[:port][/path] or a path like /user/me/proxy/"
            "{port}, without spaces, query or fragment; {port} stands for each port"
        )
    leftover = text.replace("{port}", "")
    if "{" in leftover or "}" in leftover:
        raise SpecError(f"{source} {url!r}: the only placeholder is {{port}}")
    return text


def given_public_url(public_url: str | None = None) -> tuple[str, str] | None:
    """The checked public URL and where it came from (the argument, else ``$TRITONNB_PUBLIC_URL``), or None; read
    once, when the server starts."""
    for url, source in ((public_url, "--public-url"), (os.environ.get(PUBLIC_URL_ENV), f"${PUBLIC_URL_ENV}")):
        if url:
            return check_public_url(url, source), source
    return None


def browser_route(http_port: int, metrics_port: int, given: tuple[str, str] | None = None) -> BrowserRoute:
    """The route a browser takes to these ports: the ``given_public_url``, else through the Jupyter server."""
    return RouteProbe(http_port, metrics_port, given).result()


def _given(url: str, source: str, http_port: int, metrics_port: int) -> BrowserRoute:
    if "{port}" not in url:
        return BrowserRoute(http=url, via=source)
    return BrowserRoute(
        http=url.replace("{port}", str(http_port)),
        metrics=url.replace("{port}", str(metrics_port)) + "/metrics",
        via=source,
    )


def _through_jupyter(server: dict[str, Any] | None, http_port: int, metrics_port: int, proxied: bool) -> BrowserRoute:
    """The route through ``server`` (this kernel's Jupyter server) or JupyterHub's prefix; ``proxied``: whether
    ``server`` has jupyter-server-proxy (see ``_proxy_answers``)."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if server is None and not prefix:
        return BrowserRoute()  # a terminal, a script, or a kernel whose Jupyter server we cannot see
    stripped = (server or {}).get("base_url", prefix or "/").strip("/")
    base_url = f"/{stripped}/" if stripped else "/"
    if server is not None and not proxied:
        return BrowserRoute(
            note=f"the Jupyter server at {server.get('url', base_url)} has no jupyter-server-proxy: install it in that "
            "server's environment and restart it, or give --public-url, for links that work in a remote browser"
        )
    return BrowserRoute(
        http=f"{base_url}proxy/{http_port}",
        metrics=f"{base_url}proxy/{metrics_port}/metrics",
        via=f"jupyter-server-proxy under {base_url}",
    )


def jupyter_server_of_this_kernel() -> dict[str, Any] | None:
    """The running Jupyter server that started this kernel (its ``jpserver-*.json`` info), or None.

    Read straight from Jupyter's runtime folder, as ``jupyter_server.serverapp.list_running_servers`` does: importing
    that module (all of the Jupyter server) took 1.5 s of a kernel's first start."""
    parent = os.environ.get("JPY_PARENT_PID")
    if not parent or not parent.isdigit():
        return None
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # the kernel's environment has no Jupyter at all
        return None
    with contextlib.suppress(OSError, ValueError):
        runtime = pathlib.Path(jupyter_runtime_dir())
        for path in sorted(runtime.glob("jpserver-*.json")):
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(info, dict) and str(info.get("pid")) == parent and _running(int(parent)):
                    return info
    return None


def _running(pid: int) -> bool:
    """Whether a process with this id runs (a server's runtime file can outlive it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _proxy_answers(server: dict[str, Any], port: int) -> bool:
    """Whether ``{base_url}proxy/{port}/`` is a route of that Jupyter server (404 means no jupyter-server-proxy)."""
    url = f"{server['url'].rstrip('/')}/proxy/{port}/v2/health/live"
    token = server.get("token") or os.environ.get("JUPYTERHUB_API_TOKEN")
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        get_bytes(url, headers, PROBE_TIMEOUT_S, follow_redirects=False)  # a redirect to a login page: an answer
        return True
    except urllib.error.HTTPError as error:
        return error.code != 404  # 403, or a redirect to a login page: the route exists, our credentials differ
    except OSError:  # the Jupyter server does not answer: assume its proxy is there, as on JupyterHub
        return True


class RouteProbe:
    """``browser_route``, with its one slow part, the request that checks the Jupyter server's proxy (up to
    ``PROBE_TIMEOUT_S``), on a background thread: started as soon as the ports are known, it runs while tritonserver
    starts. ``result()`` waits for it. The rest (reading the Jupyter server's runtime file) takes a few
    milliseconds and runs in the caller's thread, so that the thread imports nothing."""

    def __init__(self, http_port: int, metrics_port: int, given: tuple[str, str] | None = None) -> None:
        self._route: BrowserRoute | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if given is not None:
            self._route = _given(*given, http_port, metrics_port)
            return
        server = jupyter_server_of_this_kernel()
        if server is None:
            self._route = _through_jupyter(None, http_port, metrics_port, True)
            return
        self._thread = threading.Thread(
            target=self._probe, args=(server, http_port, metrics_port), name="tritonnb-route", daemon=True
        )
        self._thread.start()

    def _probe(self, server: dict[str, Any], http_port: int, metrics_port: int) -> None:
        try:
            self._route = _through_jupyter(server, http_port, metrics_port, _proxy_answers(server, http_port))
        except BaseException as error:  # raised again to whoever asks for the route
            self._error = error

    def result(self) -> BrowserRoute:
        """The route, once found."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._route is not None
        return self._route
