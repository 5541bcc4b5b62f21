"""Small HTTP GETs against Triton's REST endpoints (health, metadata, statistics, metrics)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = [
    "ACCESS_TOKEN_HEADER",
    "GRPC_ACCESS_TOKEN_HEADER",
    "TIMEOUT_S",
    "answers_ok",
    "base_url",
    "get_bytes",
    "get_json",
    "get_text",
    "own_token",
    "token_headers",
]

TIMEOUT_S = 1.0
ACCESS_TOKEN_HEADER = "triton-access-token"  # Triton's restricted APIs over HTTP (PyTriton's TRITON_ACCESS_HEADER)
GRPC_ACCESS_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"  # the same over gRPC, as metadata


def base_url(url: str) -> str:
    """A server's base URL as given by a user: ``http://`` added when no scheme is, no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the redirect is the answer: urllib raises HTTPError with its status


_NO_REDIRECTS = urllib.request.build_opener(_NoRedirects)  # built once: panels poll several times a second


def get_bytes(
    url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S, follow_redirects: bool = True
) -> bytes:
    """GET a URL's body; ``urllib.error.HTTPError`` for an error answer (and a redirect not followed), OSError when
    nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.urlopen if follow_redirects else _NO_REDIRECTS.open
    with opener(request, timeout=timeout) as response:
        return response.read()


def get_text(url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> str | None:
    """GET a URL; None for a non-200 answer; OSError when nothing answers."""
    try:
        return get_bytes(url, headers, timeout).decode()
    except urllib.error.HTTPError:
        return None


def answers_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    """True when the URL answers 200 (health and readiness checks); False otherwise, whatever went wrong."""
    try:
        return get_text(url, headers) is not None
    except OSError:
        return False


def token_headers(token: str | None, grpc: bool = False) -> dict[str, str]:
    """The header carrying a Triton access token (none without a token); ``grpc``: as gRPC metadata."""
    if not token:
        return {}
    return {GRPC_ACCESS_TOKEN_HEADER if grpc else ACCESS_TOKEN_HEADER: token}


def own_token(url: str) -> str | None:
    """The current access token of the server this process started, when ``url`` (HTTP, with or without its
    scheme or a path) is its HTTP or gRPC endpoint; else None. Read at each call: each start makes a new one."""
    from tritonnb import state

    server = state.server
    if server is None:
        return None
    wanted = base_url(url).split("://", 1)[1].split("/", 1)[0]
    own = {server.http_url.removeprefix("http://"), server.grpc_url.removeprefix("grpc://")}
    if wanted not in own:
        return None
    try:
        return server.access_token
    except AssertionError:  # never launched
        return None


def get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    """GET and parse JSON; ValueError when the server refuses, OSError when nothing answers."""
    text = get_text(url, headers)
    if text is None:
        raise ValueError(f"{url} refused the request")
    return json.loads(text)
