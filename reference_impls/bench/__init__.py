"""Benchmarks: each module reproduces one results file (``python -m reference_impls.bench.<name>``)."""
