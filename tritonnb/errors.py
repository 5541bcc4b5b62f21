"""Every error tritonnb raises on purpose; all derive from ``TritonnbError`` and are exported from ``tritonnb``.

Each also derives from the built-in exception it used to be (``ValueError``, ``KeyError``, ...), so existing
``except`` clauses keep working. The magics show these as a one-line usage error; anything else keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BindError",
    "CellError",
    "EngineError",
    "ExportError",
    "InputError",
    "ModelError",
    "ModelTimeout",
    "NoServerError",
    "OutputError",
    "PerfError",
    "PortBusyError",
    "ServerStartError",
    "SignatureMismatch",
    "SpecError",
    "StreamClosed",
    "StreamEnded",
    "TritonnbError",
    "UnknownModelError",
    "WarmupError",
]


class TritonnbError(Exception):
    """Base of every error tritonnb raises on purpose."""


class NoServerError(TritonnbError, RuntimeError):
    """No Triton server runs in this process (or it was stopped, or it is down)."""


class ServerStartError(TritonnbError, RuntimeError):
    """tritonserver did not come up; the message carries the tail of its log."""


class EngineError(TritonnbError, ImportError):
    """The Triton engine (NVIDIA's PyTriton 0.7.0) is missing or another version; the message names the fix."""


class PortBusyError(TritonnbError, OSError):
    """A port that was asked for explicitly is already taken by another process."""


class UnknownModelError(TritonnbError, KeyError):
    """No model of that name is served."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

    @classmethod
    def among(cls, name: str, served: Iterable[str]) -> UnknownModelError:
        """The error for ``name``, listing the models that are ``served``."""
        return cls(f"no model named {name!r} is served; served: {', '.join(sorted(served)) or 'none'}")


class SpecError(TritonnbError, ValueError):
    """An argument that cannot work as given: a model's name, tensor specs, batching, device or function
    signature, or the URL of a server to watch."""


class SignatureMismatch(SpecError, TypeError):
    """The function's parameters cannot take the declared inputs."""


class InputError(SpecError, TypeError):
    """Inputs given to ``tritonnb.client(NAME)`` do not match the model's inputs."""


class CellError(TritonnbError, ValueError):
    """A ``%%triton_model`` cell does not define a function to serve."""


class BindError(TritonnbError, RuntimeError):
    """Triton refused to load a model; the previous generation, if any, keeps serving."""


class WarmupError(BindError):
    """A warm-up batch failed; the model was not (re)bound."""


class ModelError(TritonnbError, RuntimeError):
    """A served function failed on a request (sent to that request's client, and logged with its traceback)."""


class OutputError(ModelError, TypeError):
    """A served function returned something that does not match its declared outputs."""


class ModelTimeout(ModelError, TimeoutError):
    """A served function did not return within its model's timeout (``--timeout-s``)."""


class StreamEnded(ModelError):
    """A stream ended by the server: its generation was retired (stop, unbind, a crash) while it was open."""


class StreamClosed(TritonnbError, ConnectionError):
    """A stream that ``ModelClient.close()`` ended (a server stop closes every client)."""


class PerfError(TritonnbError, RuntimeError):
    """A load test could not run (the load generator failed, or the input data does not fit)."""


class ExportError(TritonnbError, RuntimeError):
    """A model could not be exported to a model repository; nothing was written."""
