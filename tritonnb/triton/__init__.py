"""The one tritonserver of this kernel, below everything that serves models on it.

Installing and checking PyTriton (``engine``), every private use of PyTriton (``_pytriton``, with the stub's helper
module sent beside each model), settings and ports, the process's lifecycle and crash supervision, its log, model
control over gRPC, loading existing model repositories, the server's status, and cleaning up what a killed kernel
left behind (``leftovers``, ``process_exit``).
"""

__all__ = []
