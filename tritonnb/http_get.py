"""Small HTTP GETs against Triton's REST endpoints (health, metadata, statistics, metrics)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["TIMEOUT_S", "answers_ok", "base_url", "get_bytes", "get_json", "get_text"]

TIMEOUT_S = 1.0


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


def answers_ok(url: str) -> bool:
    """True when the URL answers 200 (health and readiness checks); False otherwise, whatever went wrong."""
    try:
        return get_text(url) is not None
    except OSError:
        return False


def get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    """GET and parse JSON; ValueError when the server refuses, OSError when nothing answers."""
    text = get_text(url, headers)
    if text is None:
        raise ValueError(f"{url} refused the request")
    return json.loads(text)
