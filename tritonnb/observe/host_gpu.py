"""GPU figures from NVML, for servers whose metrics carry no DCGM GPU families."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["nvml_gpus"]


@functools.lru_cache(maxsize=1)
def _nvml() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no NVML library, no driver, or no GPU: there is nothing to show
        return None


def nvml_gpus() -> list[dict[str, Any]]:
    """Utilisation, memory and power of each GPU NVML sees; empty where there is none."""
    nvml = _nvml()
    if nvml is None:
        return []
    gpus = []
    for index in range(_read(nvml.nvmlDeviceGetCount) or 0):
        handle = _read(lambda i=index: nvml.nvmlDeviceGetHandleByIndex(i))
        if handle is None:
            continue
        gpu: dict[str, Any] = {"uuid": _read(lambda h=handle: nvml.nvmlDeviceGetUUID(h))}
        memory = _read(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
        if memory is not None:
            gpu["memory_total_bytes"], gpu["memory_used_bytes"] = float(memory.total), float(memory.used)
        for key, query, scale in (
            ("utilization", lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu, 100.0),
            ("power_watts", lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h), 1000.0),
            ("power_limit_watts", lambda h=handle: nvml.nvmlDeviceGetEnforcedPowerLimit(h), 1000.0),
        ):
            value = _read(query)
            if value is not None:
                gpu[key] = value / scale
        gpus.append(gpu)
    return gpus


def _read(query: Callable[[], Any]) -> Any:
    """One NVML query, or None where the GPU or driver does not support it (MIG, some boards)."""
    try:
        return query()
    except Exception:
        return None
