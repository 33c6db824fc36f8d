"""A real llama-server, built from the llama-cpp-python sdist, serving tiny generated models.

The session builds llama-server once with `hack/build-llama-server.sh` (about 5 minutes cold on
2 cores, nothing when cached) and writes the tiny model and its adapters into a temp folder.
The tests skip only when the build is impossible on this machine (no cmake or C++ compiler);
a build that is attempted and fails is a test failure.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from llama_operator_dev.binaries import REPOSITORY_ROOT
from llama_operator_dev.tiny_models import (
    LLAMA_SERVER_BUILD_SCRIPT,
    TinyModelSet,
    find_vocab_file,
    llama_server_install_dir,
    write_tiny_model_set,
)

BUILD_TIMEOUT_SECONDS = 40 * 60
READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class LlamaServerInstall:
    install_dir: Path

    @property
    def binary(self) -> Path:
        return self.install_dir / "bin" / "llama-server"


@pytest.fixture(scope="session")
def llama_server_install() -> LlamaServerInstall:
    """The pinned llama-server, built now if the cache does not have it."""
    install = LlamaServerInstall(llama_server_install_dir())
    if not install.binary.is_file():
        missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"cannot build llama-server here: {', '.join(missing)} not on PATH")
    result = subprocess.run(
        ["bash", str(REPOSITORY_ROOT / LLAMA_SERVER_BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{LLAMA_SERVER_BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    built_dir = Path(result.stdout.strip().splitlines()[-1])
    assert built_dir == install.install_dir, (
        f"the script installed into {built_dir}, Python expects {install.install_dir}"
    )
    return install


@pytest.fixture(scope="session")
def tiny_models(llama_server_install: LlamaServerInstall, tmp_path_factory: pytest.TempPathFactory) -> TinyModelSet:
    vocab = find_vocab_file(install_dir=llama_server_install.install_dir)
    return write_tiny_model_set(tmp_path_factory.mktemp("tiny-models"), vocab)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LlamaServerProcess:
    """One llama-server child process with its log file."""

    binary: Path
    args: Sequence[str]
    log_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    answered_loading: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [str(self.binary), *self.args, "--host", self.host, "--port", str(self.port)]

    def __enter__(self) -> LlamaServerProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        assert self.exit_code() is not None, "llama-server survived stop()"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def exit_code(self) -> int | None:
        assert self.process is not None, "not started"
        return self.process.poll()

    def wait_healthy(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """Poll GET /health until 200; 503 means the model is still loading."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            code = self.exit_code()
            if code is not None:
                pytest.fail(f"llama-server exited with {code} before it was healthy:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=2.0)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == httpx.codes.OK:
                return
            if response is not None and response.status_code == httpx.codes.SERVICE_UNAVAILABLE:
                self.answered_loading = True
            if time.monotonic() >= deadline:
                pytest.fail(f"llama-server not healthy after {timeout_seconds:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def wait_exit(self, timeout_seconds: float) -> int:
        assert self.process is not None, "not started"
        try:
            return self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"llama-server still running after {timeout_seconds:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; never leaves the process behind."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
