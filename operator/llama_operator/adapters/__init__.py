"""Adapter rollouts: a pure state machine (rollout.py) and the I/O that drives it (smoke.py)."""
