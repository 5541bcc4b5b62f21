"""Development-only helpers for tests, benchmarks and scripts; not part of the installed package."""
