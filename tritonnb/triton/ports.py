"""Port probing: is a TCP port free on an address, and which is the next free one."""

from __future__ import annotations

import socket
from collections.abc import Collection

from tritonnb.errors import PortBusyError

__all__ = ["next_free_port", "port_is_free"]


def port_is_free(address: str, port: int) -> bool:
    """True when a listening socket could bind ``address:port`` right now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "busy"
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def next_free_port(address: str, start: int, avoid: Collection[int] = ()) -> int:
    """The first free port at or after ``start`` that is not in ``avoid``."""
    for port in range(start, 65536):
        if port not in avoid and port_is_free(address, port):
            return port
    raise PortBusyError(f"no free port on {address} at or above {start}")
