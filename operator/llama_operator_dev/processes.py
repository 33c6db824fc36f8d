"""Child processes of the dev cluster: start with a log file, probe health, stop for sure.

Every child runs in its own session (and so its own process group), so stopping it signals
the whole group: nothing it forked is left behind. Stopping sends SIGTERM, waits a grace
period, then SIGKILL.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from llama_operator_dev.errors import ProcessExitedError, ReadinessTimeoutError

LOGGER = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 2.0
POLL_INTERVAL_SECONDS = 0.2
TAIL_CHUNK_BYTES = 64 * 1024


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def distinct_loopback_ports(count: int) -> list[int]:
    """``count`` free ports on 127.0.0.1, all different (the OS may hand out one twice between probes)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_loopback_port()
        if port not in chosen:
            chosen.append(port)
    return chosen


def tail_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    if lines <= 0 or not path.exists():
        return ""
    with path.open("rb") as log_file:
        log_file.seek(0, os.SEEK_END)
        position = log_file.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= lines:
            step = min(TAIL_CHUNK_BYTES, position)
            position -= step
            log_file.seek(position)
            data = log_file.read(step) + data
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class HealthEndpoint:
    """An HTTP(S) health URL (``/readyz``, ``/healthz``) and the TLS context to reach it."""

    url: str
    tls: ssl.SSLContext | None = None


def client_tls_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """Verify servers against our CA and, when given, present a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context


def probe_health(endpoint: HealthEndpoint) -> tuple[bool, str]:
    """GET the endpoint once: (healthy, what it answered or why it failed)."""
    parts = urlsplit(endpoint.url)
    if parts.hostname is None or parts.scheme not in {"http", "https"}:
        raise ValueError(f"health URL must be http(s)://host:port/path, got {endpoint.url!r}")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=PROBE_TIMEOUT_SECONDS, context=endpoint.tls
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        body = response.read(2048).decode("utf-8", errors="replace").strip()
    except (OSError, http.client.HTTPException) as error:
        return False, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return response.status == http.HTTPStatus.OK, f"HTTP {response.status}: {body[:500]}"


class ManagedProcess:
    """One long-running child with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.environment = dict(environment) if environment is not None else None
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def start(self) -> int:
        """Start the child in a new session (again, once a previous one ended); returns its pid."""
        if self._child is not None and self._child.poll() is None:
            raise RuntimeError(f"{self.name} was already started (pid {self._child.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._child = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
            )
        LOGGER.debug("started %s (pid %d): %s", self.name, self._child.pid, " ".join(self.command))
        return self._child.pid

    def exit_code(self) -> int | None:
        """None while running (or never started), the exit status once it ended."""
        return self._child.poll() if self._child is not None else None

    def is_running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail_lines(self.log_path, lines)

    def stop(self, grace_seconds: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace_seconds``; returns the exit status."""
        child = self._child
        if child is None:
            return None
        if child.poll() is None:
            signal_group(child.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            signal_group(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                LOGGER.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", self.name, child.pid, grace_seconds)
                signal_group(child.pid, signal.SIGKILL)
                child.wait()
        return child.returncode

    def pause(self) -> None:
        """SIGSTOP the process group: it keeps its sockets open and answers nothing (a frozen host)."""
        if self._child is not None:
            signal_group(self._child.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._child is not None:
            signal_group(self._child.pid, signal.SIGCONT)

    def wait_until_healthy(self, endpoint: HealthEndpoint, timeout_seconds: float) -> float:
        """Poll ``endpoint`` until it answers 200; returns the seconds it took.

        Fails early, with the end of the log, when the process exits meanwhile.
        """
        started = time.monotonic()
        deadline = started + timeout_seconds
        while True:
            healthy, answer = probe_health(endpoint)
            if healthy:
                return time.monotonic() - started
            exit_code = self.exit_code()
            if exit_code is not None:
                raise ProcessExitedError(
                    f"{self.name} exited with status {exit_code} before it became ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ReadinessTimeoutError(
                    f"{self.name} not ready after {timeout_seconds:.0f}s at {endpoint.url} (last answer: {answer}); "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)


def signal_group(process_group: int, signal_number: signal.Signals) -> None:
    """Signal a whole process group; a group that is already gone is fine."""
    try:
        os.killpg(process_group, signal_number)
    except ProcessLookupError:
        LOGGER.debug("process group %d already gone", process_group)
