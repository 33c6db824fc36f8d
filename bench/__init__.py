"""Benchmarks that run against the local control plane; their numbers go to bench/RESULTS.md."""
