"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.terminal import terminal_writer

# The `ledger` fixture and the figures printed at the end of a run; builds started beside the run.
pytest_plugins = ["tests.reliability", "tests.background_builds"]


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Write a line to the test log even when output is captured (`pytest -q` in CI): what a real engine
    answered, or a figure the test measured (cases run, kill points survived), without a failure."""
    return terminal_writer(request.config, request.node.name)
