"""Benchmarks of the streaming path, printed as numbers (docs/benchmarks.md): ``python -m bench``."""
