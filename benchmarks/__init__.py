"""Benchmarks of advi_jax against its peers (run as scripts or `python -m benchmarks.<name>`)."""
