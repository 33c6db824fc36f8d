"""Builds a test run starts in the background instead of before it (pytest plugin).

KEDA's operator and adapter take about ten minutes to build from a cold Go cache, and a test run leaves
about one of the two cores idle while its integration tests wait on pods and engines. So `make test`
does not build KEDA first: a module marked ``pytest.mark.background_build("KEDA")`` makes the run start
``nice -n 19 hack/build-upstream.sh KEDA`` right after collection (only when the binaries are missing and
the module is selected), and moves that module's tests to the end of the run; its fixture calls
``wait_for_background_build``, which reports progress with the elapsed time while it waits and fails with
the build's log when the build failed. A build still running when the run ends is stopped (the script
leaves the old state or complete binaries).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from llama_operator_dev.binaries import REPOSITORY_ROOT, cache_root
from llama_operator_dev.keda import keda_binaries

MARK = "background_build"
BUILD_SCRIPT = REPOSITORY_ROOT / "hack" / "build-upstream.sh"
PROGRESS_SECONDS = 60.0
POLL_SECONDS = 2.0
# A project -> whether its binaries are present.
BUILT: dict[str, Callable[[], bool]] = {"KEDA": lambda: keda_binaries() is not None}


@dataclass
class Build:
    project: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


_BUILDS_KEY = pytest.StashKey[dict[str, Build]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARK}(project): the module needs a build the run starts in the background (tests/background_builds.py)",
    )
    config.stash[_BUILDS_KEY] = {}


def _project(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker(MARK)
    if marker is None:
        return None
    (project,) = marker.args
    if project not in BUILT:
        raise pytest.UsageError(f"{MARK}({project!r}): known projects are {', '.join(BUILT)}")
    return str(project)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    projects = [_project(item) for item in items]
    later = [item for item, project in zip(items, projects, strict=True) if project is not None]
    if not later:
        return
    items[:] = [item for item, project in zip(items, projects, strict=True) if project is None] + later
    for project in dict.fromkeys(p for p in projects if p is not None):
        if not BUILT[project]():
            config.stash[_BUILDS_KEY][project] = _start(project)


def _start(project: str) -> Build:
    log_dir = cache_root() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"build-upstream-{project}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        ["nice", "-n", "19", "bash", str(BUILD_SCRIPT), project],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Build(project, process, log_path, log_file, time.monotonic())


def wait_for_background_build(
    config: pytest.Config, project: str, say: Callable[[str], None], timeout_seconds: float = 1800.0
) -> None:
    """Return once the run's background build of ``project`` (if it started one) has finished."""
    build = config.stash[_BUILDS_KEY].get(project)
    if build is None:
        return
    said_at = 0.0
    while build.process.poll() is None:
        elapsed = time.monotonic() - build.started
        if elapsed - said_at >= PROGRESS_SECONDS or said_at == 0.0:
            said_at = max(elapsed, 1e-3)
            last = build.log_tail(1).strip() or "started"
            say(f"waiting for the background build of {project} ({elapsed:.0f} s so far): {last}")
        if elapsed > timeout_seconds:
            pytest.fail(f"the background build of {project} ran past {timeout_seconds:.0f} s:\n{build.log_tail()}")
        time.sleep(POLL_SECONDS)
    elapsed = time.monotonic() - build.started
    if build.process.returncode != 0:
        pytest.fail(
            f"the background build of {project} failed (exit {build.process.returncode}) after {elapsed:.0f} s; "
            f"{build.log_path}:\n{build.log_tail()}"
        )
    say(f"background build of {project} done in {elapsed:.0f} s")


def pytest_unconfigure(config: pytest.Config) -> None:
    for build in config.stash.get(_BUILDS_KEY, {}).values():
        if build.process.poll() is None:
            os.killpg(build.process.pid, signal.SIGTERM)
            try:
                build.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(build.process.pid, signal.SIGKILL)
                build.process.wait()
        build.log_file.close()
