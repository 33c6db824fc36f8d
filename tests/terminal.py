"""Lines to the terminal while pytest captures output."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def terminal_writer(config: pytest.Config, name: str) -> Callable[[str], None]:
    """Lines to the terminal even while output is captured (for a fixture broader than one test)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"[{name}] {line}")

    return write
