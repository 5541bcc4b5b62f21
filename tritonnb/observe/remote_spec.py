"""A model's spec as any Triton server reports it, for models tritonnb did not bind (a repository's, a deployed
server's): the same ``ModelSpec`` a binding has, so load tests treat both alike."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tritonnb.errors import NoServerError, SpecError, UnknownModelError
from tritonnb.http_get import get_bytes, own_token, token_headers
from tritonnb.signature import DTYPE_OF_TRITON, ModelSpec, TensorSpec

__all__ = ["TIMEOUT_S", "remote_spec"]

TIMEOUT_S = 10.0


def remote_spec(http_url: str, name: str, token: str | None = None) -> ModelSpec:
    """Model ``name``'s inputs and outputs (``GET /v2/models/NAME``) and batching (``GET .../config``) on the
    server at ``http_url``; ``token`` is sent along for a server that restricts them (a private one does). None:
    the current token of the server this process started, when ``http_url`` is its endpoint."""
    base = f"{http_url.rstrip('/')}/v2/models/{urllib.parse.quote(name, safe='')}"
    headers = token_headers(token if token is not None else own_token(http_url))
    metadata, config = _get(base, headers, name, http_url), _get(f"{base}/config", headers, name, http_url)
    max_batch_size = int(config.get("max_batch_size", 0) or 0)
    batcher = config.get("dynamic_batching") or {}
    instances = sum(int(group.get("count", 1) or 1) for group in config.get("instance_group", [])) or 1
    decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled", False))
    try:
        return ModelSpec(
            name,
            tuple(_tensor(t, max_batch_size > 0, name) for t in metadata.get("inputs", [])),
            tuple(_tensor(t, max_batch_size > 0, name) for t in metadata.get("outputs", [])),
            max_batch_size,
            int(batcher.get("max_queue_delay_microseconds", 0) or 0),
            instances,
            stream=decoupled and max_batch_size == 0,  # tritonnb streams unbatched models only
        )
    except SpecError as error:
        raise SpecError(f"model {name!r} at {http_url}: {error}") from None


def _tensor(entry: dict[str, Any], batched: bool, model: str) -> TensorSpec:
    dtype = DTYPE_OF_TRITON.get(entry["datatype"])
    if dtype is None:
        raise SpecError(
            f"{entry['name']!r} is {entry['datatype']}, which tritonnb does not handle "
            f"(it does {', '.join(DTYPE_OF_TRITON)})"
        )
    shape = [int(d) for d in entry["shape"]]
    dims = shape[1:] if batched else shape  # the metadata's shape includes the batch dim of a batching model
    if not dims:
        raise SpecError(f"{entry['name']!r} has no dims per sample (shape {shape}); tritonnb needs at least one")
    return TensorSpec(entry["name"], dtype, tuple(dims))


def _get(url: str, headers: dict[str, str], name: str, http_url: str) -> dict[str, Any]:
    try:
        return json.loads(get_bytes(url, headers, TIMEOUT_S))
    except urllib.error.HTTPError as error:
        raise UnknownModelError(f"model {name!r} at {http_url}: {_triton_error(error)}") from None
    except ValueError as error:  # an answer that is not JSON, or a bad URL
        raise NoServerError(f"{url} did not answer as a Triton server does: {error}") from None
    except OSError as error:
        reason = getattr(error, "reason", None) or error
        raise NoServerError(f"no Triton server answers at {http_url}: {reason}") from None


def _triton_error(error: urllib.error.HTTPError) -> str:
    """Triton's own message (``{"error": ...}``), else the HTTP status."""
    try:
        return str(json.loads(error.read())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"HTTP {error.code} {error.reason}"
