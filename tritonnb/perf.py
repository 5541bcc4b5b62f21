"""Load tests, as the README shows them: ``run_perf`` measures a served model, ``compare_versions`` several of its
versions, ``plot`` draws several runs on one chart. The code lives in ``tritonnb.loadtest.perf``; ``%triton_perf``
calls the same functions."""

from tritonnb.loadtest.perf import Endpoint, PerfResult, VersionComparison, compare_versions, plot, run_perf

__all__ = ["Endpoint", "PerfResult", "VersionComparison", "compare_versions", "plot", "run_perf"]
