"""Triton's statistics API (``/v2/models/[NAME/]stats``, behind the access token), as per-model counters."""

from __future__ import annotations

from tritonnb.http_get import get_json
from tritonnb.observe.metrics_text import PHASES

__all__ = ["counters_from_stats", "fetch_stats"]


def counters_from_stats(stats: dict) -> dict[str, dict[str, float]]:
    """Per-model counters from Triton's statistics API response."""
    result = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        counters = {
            "version": model.get("version", "1"),
            "success": inference.get("success", {}).get("count", 0),
            "failure": inference.get("fail", {}).get("count", 0),
            "inferences": model.get("inference_count", 0),
            "executions": model.get("execution_count", 0),
            **{f"{p}_ns": inference.get(p, {}).get("ns", 0) for p in PHASES},
        }
        result[model["name"]] = counters
    return result


def fetch_stats(http_url: str, token: str | None, model: str | None = None) -> dict[str, dict[str, float]] | None:
    """Per-model counters from the statistics API (all models, or one); None when it is not reachable or refused."""
    headers = {"triton-access-token": token} if token else {}
    path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
    try:
        return counters_from_stats(get_json(f"{http_url}{path}", headers))
    except (OSError, ValueError):
        return None
