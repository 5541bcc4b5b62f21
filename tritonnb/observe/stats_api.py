"""Triton's statistics API (``/v2/models/[NAME/]stats``, behind the access token), as per-model counters."""

from __future__ import annotations

from tritonnb.http_get import get_json, token_headers
from tritonnb.observe.metrics_text import PHASES
from tritonnb.signature import version_list

__all__ = ["counters_from_stats", "fetch_stats"]


def counters_from_stats(stats: dict) -> dict[str, dict[str, float]]:
    """Per-model counters from Triton's statistics API response, summed over a model's versions (``version`` lists
    them, e.g. ``"1,2"``)."""
    result: dict[str, dict] = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        counters = {
            "success": inference.get("success", {}).get("count", 0),
            "failure": inference.get("fail", {}).get("count", 0),
            "inferences": model.get("inference_count", 0),
            "executions": model.get("execution_count", 0),
            **{f"{p}_ns": inference.get(p, {}).get("ns", 0) for p in PHASES},
        }
        total = result.setdefault(model["name"], {"version": ""})
        for key, value in counters.items():
            total[key] = total.get(key, 0) + value
        versions = [v for v in (*total["version"].split(","), str(model.get("version", "1"))) if v]
        total["version"] = version_list(versions)
    return result


def fetch_stats(
    http_url: str, token: str | None, model: str | None = None, version: int | None = None
) -> dict[str, dict[str, float]] | None:
    """Per-model counters from the statistics API (all models, or one, or one version of one); None when it is not
    reachable or refused."""
    headers = token_headers(token)
    if model is None:
        path = "/v2/models/stats"
    else:
        path = f"/v2/models/{model}" + ("" if version is None else f"/versions/{version}") + "/stats"
    try:
        return counters_from_stats(get_json(f"{http_url}{path}", headers))
    except (OSError, ValueError):
        return None
