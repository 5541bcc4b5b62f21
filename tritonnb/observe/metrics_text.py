"""Triton's Prometheus ``/metrics`` text, parsed into per-model counters, failures, host and GPU figures.

The median request duration comes from ``nv_inference_request_summary_us{model,version,quantile="0.5"}``, which
Triton 2.51 exposes only with ``--metrics-config summary_latencies=true`` (tritonnb's own server turns it on). It is
a sliding window of 60 s (measured): a model with no request in the last minute reads ``NaN``, left out here.

A model served as several versions side by side has one sample per version: counters are summed over them, the
median is the slowest version's, and ``version`` lists them (``"1,2"``).
"""

from __future__ import annotations

import collections
import math

from prometheus_client.parser import text_string_to_metric_families

from tritonnb.signature import version_list

__all__ = ["MEDIAN", "PHASES", "parse_metrics"]

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
MEDIAN = "nv_inference_request_summary_us"


def parse_metrics(text: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict, list]:
    """Split Prometheus text into per-model counters (summed over versions), failures by reason, host figures and
    GPUs."""
    per_model: dict[str, dict[str, float]] = collections.defaultdict(dict)
    versions: dict[str, set[str]] = collections.defaultdict(set)
    failures: dict[str, dict[str, float]] = collections.defaultdict(dict)
    host: dict[str, float] = {}
    gpus: dict[str, dict[str, float]] = collections.defaultdict(dict)
    model_families = {
        "nv_inference_request_success": "success",
        "nv_inference_count": "inferences",
        "nv_inference_exec_count": "executions",
        "nv_inference_pending_request_count": "pending",
        **{f"nv_inference_{p}_duration_us": f"{p}_ns" for p in PHASES},
    }
    host_families = {
        "nv_cpu_utilization": "cpu_utilization",
        "nv_cpu_memory_total_bytes": "memory_total_bytes",
        "nv_cpu_memory_used_bytes": "memory_used_bytes",
    }
    gpu_families = {
        "nv_gpu_utilization": "utilization",
        "nv_gpu_memory_total_bytes": "memory_total_bytes",
        "nv_gpu_memory_used_bytes": "memory_used_bytes",
        "nv_gpu_power_usage": "power_watts",
        "nv_gpu_power_limit": "power_limit_watts",
    }
    for family in text_string_to_metric_families(text):
        name = family.name  # the parser names counter samples <family>_total; match on the family
        for sample in family.samples:
            if sample.name not in (name, f"{name}_total"):
                continue
            labels, value = sample.labels, sample.value
            if name == MEDIAN and "model" in labels:
                if labels.get("quantile") == "0.5" and not math.isnan(value):
                    figures = per_model[labels["model"]]
                    figures["p50_ms"] = max(figures.get("p50_ms", 0.0), value / 1000)
            elif name == "nv_inference_request_failure" and "model" in labels:
                reasons = failures[labels["model"]]
                reason = labels.get("reason", "OTHER")
                reasons[reason] = reasons.get(reason, 0.0) + value
            elif name in model_families and "model" in labels:
                key, figures = model_families[name], per_model[labels["model"]]
                figures[key] = figures.get(key, 0.0) + (value * 1000 if key.endswith("_ns") else value)
                versions[labels["model"]].add(labels.get("version", "1"))
            elif name in host_families:
                host[host_families[name]] = value
            elif name in gpu_families:
                gpus[labels.get("gpu_uuid", "gpu")][gpu_families[name]] = value
    for model, numbers in versions.items():
        per_model[model]["version"] = version_list(numbers)  # type: ignore[assignment]
    gpu_list = [{"uuid": uuid, **values} for uuid, values in gpus.items()]
    if not host.get("memory_total_bytes"):  # Triton samples the host every 2 s: zeros until its first sample
        host = {}
    return dict(per_model), dict(failures), host, gpu_list
