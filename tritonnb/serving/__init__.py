"""Serving the notebook's functions on the kernel's Triton: one ``ModelSlot`` per model name (``binding``), the
trampoline Triton's handler threads call (``served_function``, ``streaming``), the torch <-> numpy bridge and the
output checks; ``server.Server`` puts them together with the process below (``tritonnb.triton``).
"""

__all__ = []
