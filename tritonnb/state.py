"""The process-wide state of tritonnb, all in one place.

A kernel (any Python process) holds:

- ``server``: the one Triton server this process started (``tritonnb.start()`` or the first ``%%triton_model``
  cell), or None. ``tritonnb.serving.server`` sets and clears it.
- ``pollers``: one ``tritonnb.observe.poller.Poller`` per watched server, keyed by its (HTTP URL, metrics URL).
  Every panel and strip watching that server shares it, so the server is polled once however many widgets watch it.
- ``monitors``: the ``tritonnb.observe.monitor.Monitor`` behind ``tritonnb.metrics()``, per watched server. Kept
  apart from the pollers' on purpose: its rates cover the time since the caller's previous ``metrics()`` call, not
  since the last background poll.
- ``strips``: the live strip under each model's card, by model name; running the cell again replaces it.
- ``cards``: the card of each model's last bind, by (name, version), which ``tritonnb.card(name)`` returns.
- ``clients``: every ``tritonnb.client(...)`` still referenced. Their kept-alive HTTP connections are closed before
  tritonserver stops, which would otherwise wait its whole exit timeout for them.

Python logging's own global state is touched in one place too: ``tritonnb.triton.logs`` puts a single handler on
PyTriton's and tritonnb's loggers while any server log is open, and gives them back afterwards.

Everything else hangs off these objects. ``lock`` guards ``pollers`` and ``monitors``, which widgets and the user's
thread may reach at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonnb.model_client import ModelClient
    from tritonnb.observe.monitor import Monitor
    from tritonnb.observe.poller import Poller
    from tritonnb.serving.server import Server
    from tritonnb.ui.card import ModelCard
    from tritonnb.ui.panel import ModelStrip

__all__ = ["cards", "clients", "lock", "monitors", "pollers", "server", "strips"]

server: Server | None = None
pollers: dict[tuple[str, str], Poller] = {}
monitors: dict[tuple[str, str], Monitor] = {}
strips: dict[str, ModelStrip] = {}
cards: dict[tuple[str, int], ModelCard] = {}
clients: weakref.WeakSet[ModelClient] = weakref.WeakSet()
lock = threading.Lock()
