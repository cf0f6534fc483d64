"""Benchmarks of the gateway (see docs/benchmarks.md once written)."""
