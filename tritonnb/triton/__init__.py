"""The one tritonserver of this kernel, below everything that serves models on it.

Installing and checking PyTriton (``engine``), the short path from each python-backend stub to the kernel
(``channel``, with the files sent to the stub in ``stub/``), every private use of PyTriton (``_pytriton``: the
server process, and streams through its proxy), settings and ports, the process's lifecycle and crash supervision,
its log, model control over gRPC, loading existing model repositories, the server's status, and cleaning up what a
killed kernel left behind (``leftovers``, ``process_exit``).
"""

__all__ = []
