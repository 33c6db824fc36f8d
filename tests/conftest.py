"""Fixtures shared by every test suite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest_plugins = ["tests.reliability"]  # the `ledger` fixture and the figures printed at the end of a run


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Write a line to the test log even when output is captured (`pytest -q` in CI): what a real engine
    answered, or a figure the test measured (cases run, kill points survived), without a failure."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():  # the terminal's own file is captured during a test
            reporter.ensure_newline()
            reporter.write_line(f"[{request.node.name}] {line}")

    return write
