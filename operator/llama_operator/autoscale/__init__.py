"""Autoscaling on Prometheus queue metrics: pure decision, per-engine queries, and the I/O that drives them."""
