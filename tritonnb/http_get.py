"""Small HTTP GETs against Triton's REST endpoints (health, metadata, statistics, metrics)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

TIMEOUT_S = 1.0


def base_url(url: str) -> str:
    """A server's base URL as given by a user: ``http://`` added when no scheme is, no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def get_text(url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> str | None:
    """GET a URL; None for a non-200 answer; OSError when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()
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
