"""The states a server and a model can be in, as shown by status, panels and ``tritonnb.metrics()``.

Both are ``str`` enums: a state compares equal to its name (``ServerState.READY == "READY"``), prints as it, and goes
into JSON as it, so status dictionaries stay plain data.
"""

from __future__ import annotations

import enum

__all__ = ["ModelState", "ServerState"]


class _NamedState(str, enum.Enum):
    """A state that formats and hashes as its value (``f"{state}"`` gives ``READY``) on every supported Python."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __hash__(self) -> int:  # as its value's, so a state and its name find the same dict entry
        return hash(self.value)


class ServerState(_NamedState):
    """A Triton server's state: this kernel's own, or one watched by URL."""

    READY = "READY"
    NOT_READY = "NOT READY"  # answers, but its readiness endpoint says not ready
    RECOVERING = "RECOVERING"  # restarting after tritonserver exited by itself
    DOWN = "DOWN"  # tritonserver exited, or does not answer
    STOPPED = "STOPPED"  # stopped on purpose


class ModelState(_NamedState):
    """A model's state, as Triton reports it (``LOADING`` also while tritonnb swaps in a new generation)."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"

    @classmethod
    def from_triton(cls, name: str | None) -> ModelState:
        """The state Triton's repository index names; UNAVAILABLE for none or one this release does not know."""
        try:
            return cls(name or cls.UNAVAILABLE)
        except ValueError:
            return cls.UNAVAILABLE
