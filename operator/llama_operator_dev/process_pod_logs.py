"""Pure rules of the process-backed kubelet's ``containerLogs`` endpoint (``kubectl logs``).

The apiserver answers ``GET /api/v1/namespaces/NS/pods/POD/log`` by asking the node's kubelet for
``/containerLogs/NS/POD/CONTAINER?tailLines=N&limitBytes=N&previous=true&follow=true&timestamps=true``.
The worker writes each run of a container to ``<pod_dir>/<container>.<run>.log`` (stdout and
stderr together; run 0, 1, ... as it restarts), and keeps every run's file. The current log is
the latest run's, ``previous`` the run before it (a 400, as a kubelet answers, when there is
none). ``tailLines`` keeps the last lines, then ``limitBytes`` the first bytes of those.

Lines carry no time of their own, so ``timestamps``, ``sinceSeconds`` and ``sinceTime`` are
accepted and ignored. Nothing here reads a file: ``process_kubelet_logs.py`` does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

LOG_PATH_PREFIX = "/containerLogs/"
LOG_FILE = re.compile(r"^(?P<container>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<run>\d+)\.log$")
TRUE_VALUES = frozenset({"true", "1"})


@dataclass(frozen=True)
class LogRequest:
    """One containerLogs request, parsed."""

    namespace: str
    pod: str
    container: str
    tail_lines: int | None = None
    limit_bytes: int | None = None
    previous: bool = False
    follow: bool = False


class BadLogRequestError(ValueError):
    """The request cannot be answered as asked (a 400 with this message)."""


def parse_log_request(path: str, query: str) -> LogRequest | None:
    """``/containerLogs/NS/POD/CONTAINER`` and its query -> the request; None for another path.

    Raises ``BadLogRequestError`` for a number that is not a number (or a negative one).
    """
    if not path.startswith(LOG_PATH_PREFIX):
        return None
    parts = [unquote(part) for part in path[len(LOG_PATH_PREFIX) :].split("/")]
    if len(parts) != 3 or not all(parts):  # namespace, pod, container
        return None
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    return LogRequest(
        namespace=parts[0],
        pod=parts[1],
        container=parts[2],
        tail_lines=_count(params, "tailLines"),
        limit_bytes=_count(params, "limitBytes"),
        previous=params.get("previous", "").lower() in TRUE_VALUES,
        follow=params.get("follow", "").lower() in TRUE_VALUES,
    )


def _count(params: dict[str, str], name: str) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError:
        raise BadLogRequestError(f"{name}={params[name]!r} is not a number") from None
    if value < 0:
        raise BadLogRequestError(f"{name}={value} must not be negative")
    return value


def container_runs(file_names: Iterable[str], container: str) -> list[str]:
    """The log files of one container's runs in a pod's folder, oldest run first."""
    runs: list[tuple[int, str]] = []
    for name in file_names:
        match = LOG_FILE.match(name)
        if match is not None and match.group("container") == container:
            runs.append((int(match.group("run")), name))
    return [name for _, name in sorted(runs)]


def chosen_log_file(file_names: Iterable[str], container: str, *, previous: bool) -> str | None:
    """The file to answer with: the latest run's, or (``previous``) the one before it; None when there is none."""
    runs = container_runs(file_names, container)
    wanted = 2 if previous else 1
    return runs[-wanted] if len(runs) >= wanted else None


def log_excerpt(data: bytes, tail_lines: int | None, limit_bytes: int | None) -> bytes:
    """The last ``tail_lines`` lines of ``data`` (a last line without a newline counts), then at most ``limit_bytes``."""
    if tail_lines is not None:
        if tail_lines == 0:
            data = b""
        else:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail_lines:])
    if limit_bytes is not None:
        data = data[:limit_bytes]
    return data


def missing_log_message(request: LogRequest, waiting_reason: str) -> str:
    """A kubelet's 400 when there is no log to answer with."""
    if request.previous:
        return f'previous terminated container "{request.container}" in pod "{request.pod}" not found'
    return f'container "{request.container}" in pod "{request.pod}" is waiting to start: {waiting_reason or "ContainerCreating"}'
