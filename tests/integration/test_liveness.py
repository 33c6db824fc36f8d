"""Liveness on a control plane of this module's own, whose apiserver the test kills: the operator's liveness
endpoint turns 500 once the apiserver has not answered for the limit, and the outage logs no traceback."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import poll_until, skip_without_binaries
from tests.integration.operator_process import running_operator

API_DOWN_SECONDS = 10  # the operator's limit here (60 s by default)


@pytest.fixture
def own_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A plane whose apiserver may die: never the shared one."""
    skip_without_binaries()
    with ControlPlane(tmp_path / "plane") as plane:
        yield plane


def liveness(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_liveness_fails_when_the_apiserver_is_gone(
    own_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_OPERATOR_API_DOWN_SECONDS", str(API_DOWN_SECONDS))
    with own_plane.new_api_client() as api_client, running_operator(own_plane, api_client, tmp_path) as operator:
        assert operator.process is not None
        args = list(map(str, operator.process.args))  # the command line it was started with
        url = args[args.index("--liveness") + 1]
        assert liveness(url) == 200
        os.kill(own_plane.pids["kube-apiserver"], signal.SIGKILL)
        poll_until(lambda: True if liveness(url) == 500 else None, API_DOWN_SECONDS + 40, "liveness to fail")
        log = (operator.log_dir / f"operator-{operator.starts}.log").read_text(errors="replace")
    assert "no answer from the Kubernetes API for" in log
    assert "Traceback" not in log, "an outage is logged as lines of our errors, not as tracebacks"
    assert "urllib3" not in log
