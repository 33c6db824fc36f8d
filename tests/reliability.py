"""The reliability ledger: what the hardening suite measured, counted across the whole run.

Tests record what they proved through the `ledger` fixture: a kill point survived, an outage survived, a
hostile input refused (and how), fuzz cases run, pods admitted under a Pod Security level. At the end of
every run the four figures the hardening issue names are printed in one line (so they appear in CI
output), with the minimum each must reach:

    reliability: kill points survived 64 (>= 50) | outages survived 7 kinds (>= 5) | ...

With `LLAMA_OPERATOR_RELIABILITY_MINIMUMS=1` (`make test`, `make reliability`: runs of the whole suite) a
figure below its minimum fails the run. With `LLAMA_OPERATOR_RELIABILITY_REPORT=FILE` (`make
reliability`) the run writes FILE: every figure, every entry behind it, and the command that produced it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KILL_POINTS = "kill points survived"
OUTAGES = "outages survived"
HOSTILE = "hostile inputs refused"
FUZZ = "fuzz cases"
POD_SECURITY = "pods admitted under Pod Security"
MINIMUMS = {KILL_POINTS: 50, OUTAGES: 5, HOSTILE: 70, FUZZ: 10_000}
UNITS = {OUTAGES: "kinds"}
MINIMUMS_ENV = "LLAMA_OPERATOR_RELIABILITY_MINIMUMS"
REPORT_ENV = "LLAMA_OPERATOR_RELIABILITY_REPORT"


@dataclass(frozen=True)
class Entry:
    key: str  # what was proved (a kill point, an outage kind, a manifest id): counted once per run
    count: int  # how many it stands for (fuzz cases run); 1 for most
    how: str  # how it held: the refusal's message, the recovery seen
    test: str  # the test that recorded it


@dataclass
class Ledger:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: defaultdict(dict))

    def record(self, figure: str, key: str, how: str, test: str, count: int = 1) -> None:
        self.entries[figure][key] = Entry(key, count, how, test)

    def total(self, figure: str) -> int:
        if figure == OUTAGES:  # kinds of outage, however often each was survived
            return len(self.entries[figure])
        return sum(entry.count for entry in self.entries[figure].values())

    def summary(self) -> str:
        parts = []
        for figure, minimum in MINIMUMS.items():
            unit = f" {UNITS[figure]}" if figure in UNITS else ""
            parts.append(f"{figure} {self.total(figure)}{unit} (>= {minimum})")
        return "reliability: " + " | ".join(parts)

    def short(self) -> list[str]:
        """The figures under their minimum, as `figure: n < minimum`."""
        return [f"{f}: {self.total(f)} < {m}" for f, m in MINIMUMS.items() if self.total(f) < m]

    def report(self, command: str, seconds: float) -> str:
        lines = [
            "# Reliability",
            "",
            "Written by the test suite (`tests/reliability.py`), not by hand: every figure below is what this",
            "run proved, each entry the test that proved it.",
            "",
            f"Produced by `{command}` on {time.strftime('%Y-%m-%d', time.gmtime())} in {seconds / 60:.0f} min.",
            "",
            "| figure | count | minimum |",
            "|---|---:|---:|",
        ]
        for figure in (*MINIMUMS, POD_SECURITY):
            unit = f" {UNITS[figure]}" if figure in UNITS else ""
            minimum = f">= {MINIMUMS[figure]}" if figure in MINIMUMS else ""
            lines.append(f"| {figure} | {self.total(figure)}{unit} | {minimum} |")
        for figure in (*MINIMUMS, POD_SECURITY):
            entries = sorted(self.entries[figure].values(), key=lambda e: (e.test, e.key))
            lines += ["", f"## {figure[0].upper()}{figure[1:]} ({self.total(figure)})", ""]
            if not entries:
                lines.append("None recorded in this run.")
                continue
            lines += ["| what | how it held | test |", "|---|---|---|"]
            lines += [f"| {_cell(e.key)} | {_cell(e.how)} | `{e.test}` |" for e in entries]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= 300 else flat[:297] + "..."


_LEDGER_KEY = pytest.StashKey[Ledger]()
_STARTED_KEY = pytest.StashKey[float]()


class Recorder:
    """A test's view of the run's ledger: it fills in the test's name."""

    def __init__(self, ledger: Ledger, test: str) -> None:
        self._ledger = ledger
        self._test = test

    def kill_point(self, point: str, how: str) -> None:
        self._ledger.record(KILL_POINTS, point, how, self._test)

    def outage(self, kind: str, how: str) -> None:
        self._ledger.record(OUTAGES, kind, how, self._test)

    def hostile(self, case: str, how: str) -> None:
        self._ledger.record(HOSTILE, case, how, self._test)

    def fuzz(self, cases: int, how: str) -> None:
        self._ledger.record(FUZZ, self._test, how, self._test, count=cases)

    def admitted(self, pod: str, level: str) -> None:
        self._ledger.record(POD_SECURITY, f"{pod} ({level})", f"admitted by a namespace enforcing {level}", self._test)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LEDGER_KEY] = Ledger()
    config.stash[_STARTED_KEY] = time.monotonic()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """Records what the test proved once it passes: a failing test records nothing."""
    pending = Ledger()
    yield Recorder(pending, request.node.nodeid)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        for figure, entries in pending.entries.items():
            request.config.stash[_LEDGER_KEY].entries[figure].update(entries)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if call.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]  # read by the ledger fixture's teardown
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    ledger = config.stash[_LEDGER_KEY]
    terminalreporter.write_line(ledger.summary())
    if os.environ.get(MINIMUMS_ENV) == "1" and ledger.short():
        terminalreporter.write_line("reliability figures below their minimum: " + "; ".join(ledger.short()), red=True)
    path = os.environ.get(REPORT_ENV)
    if path:
        command = os.environ.get("LLAMA_OPERATOR_RELIABILITY_COMMAND") or " ".join(["pytest", *sys.argv[1:]])
        seconds = time.monotonic() - config.stash[_STARTED_KEY]
        Path(path).write_text(ledger.report(command, seconds), encoding="utf-8")
        terminalreporter.write_line(f"reliability report written to {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ledger = session.config.stash[_LEDGER_KEY]
    if os.environ.get(MINIMUMS_ENV) == "1" and ledger.short() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
