"""Benchmarks that write reproduced-results JSON (``python -m reference_impls.bench.<name>``)."""
