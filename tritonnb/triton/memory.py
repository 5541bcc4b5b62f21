"""Freed heap memory given back to the system: glibc's ``malloc_trim``, where the C library has it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["trim_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to call
        return None


def trim_heap() -> None:
    """Give the heap's free pages back to the system. A kernel that loads and retires generations for days, each with
    threads of its own, otherwise keeps the pages those threads' allocations freed: its resident size creeps up
    while Python's own objects stay the same (``benchmarks/soak.py``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
