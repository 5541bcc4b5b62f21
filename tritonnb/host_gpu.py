"""GPU figures from NVML, for servers whose metrics carry no DCGM GPU families."""

from __future__ import annotations

import functools
from typing import Any


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
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append(
            {
                "uuid": nvml.nvmlDeviceGetUUID(handle),
                "utilization": nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                "memory_total_bytes": float(memory.total),
                "memory_used_bytes": float(memory.used),
                "power_watts": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                "power_limit_watts": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            }
        )
    return gpus
