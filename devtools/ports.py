"""Free loopback ports for tests and benchmarks."""

from __future__ import annotations

import random

from tritonnb.triton.ports import port_is_free


def free_loopback_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 now, from below Linux's ephemeral range (32768+), so that no outgoing
    connection of this machine takes one as its source port before a server binds it."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 32000)
        if port not in ports and port_is_free("127.0.0.1", port):
            ports.append(port)
    return ports
