"""Batching sweeps, as the README shows them: ``tune`` re-binds a model with each configuration, load-tests it and
recommends the best. The code lives in ``tritonnb.loadtest.tune``; ``%triton_tune`` calls the same function."""

from tritonnb.loadtest.tune import TuneResult, tune

__all__ = ["TuneResult", "tune"]
