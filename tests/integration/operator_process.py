"""The operator under test: `llama-operator run` as a child process, as a user would start it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import install_crd, poll_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """`llama-operator run` as a child process, as a user would start it."""

    def __init__(self, kubeconfig: Path, log_dir: Path, extra_args: Sequence[str] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.liveness_url = ""

    def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start `llama-operator run`, with `env` added to this process's environment for this start only."""
        self.starts += 1
        liveness = free_port()
        self.liveness_url = f"http://127.0.0.1:{liveness}/healthz"
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_operator.cli", "run", "--liveness", f"http://127.0.0.1:{liveness}/healthz",
             "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1", "--log-level", "debug", *self.extra_args],
            env={**os.environ, **(env or {}), "KUBECONFIG": str(self.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def alive() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"operator exited with {self.process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2) as response:
                    return True if response.status == 200 else None
            except OSError:
                return None

        poll_until(alive, 60, "the operator's liveness endpoint")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def liveness(self) -> int:
        """The HTTP status of the operator's liveness endpoint now (0: no answer)."""
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def log(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-40:]) if path.exists() else ""


@contextmanager
def running_operator(
    plane: ControlPlane, api_client: Any, log_dir: Path, extra_args: Sequence[str] = ()
) -> Iterator[OperatorProcess]:
    """The CRD installed and `llama-operator run` against the plane."""
    install_crd(api_client)
    process = OperatorProcess(plane.kubeconfig_path, log_dir, extra_args)
    process.start()
    try:
        yield process
    finally:
        process.stop()
