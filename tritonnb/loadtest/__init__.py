"""Load tests and batching sweeps: a load generator, ``run_perf`` and ``tune`` returning result dataclasses, and
the tables and matplotlib charts those results show themselves with. Nothing here imports the UI."""

__all__ = []
