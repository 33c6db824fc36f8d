"""Count API requests server-side, from the kube-apiserver's audit log (JSON lines, Metadata level).

Each request is counted once, at its `ResponseComplete` stage. Watches are left out: a watch is one
long-running stream, not a request per change. Reads are get/list, writes create/update/patch/delete;
a request's time is when the apiserver received it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

READ_VERBS = frozenset({"get", "list"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Reviews are `create` requests the apiserver answers without storing anything: questions, counted as reads.
REVIEW_RESOURCES = frozenset({"selfsubjectaccessreviews", "subjectaccessreviews", "selfsubjectrulesreviews",
                              "tokenreviews", "localsubjectaccessreviews"})  # fmt: skip
OPERATOR_USER_AGENT_PREFIXES = ("kopf/", "llama-operator/")
HTTP_TOO_MANY_REQUESTS = 429


@dataclass(frozen=True)
class AuditRequest:
    """One completed, non-watch request."""

    received_at: float  # seconds since the epoch
    verb: str
    username: str
    user_agent: str
    resource: str  # "pods", "deployments/status", ...; the path for non-resource URLs such as /version
    code: int

    @property
    def agent(self) -> str:
        """The product part of the user agent: `kopf`, `kube-controller-manager`, `OpenAPI-Generator`, ..."""
        return self.user_agent.split("/", 1)[0] or "(none)"

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS and self.resource not in REVIEW_RESOURCES

    @property
    def is_read(self) -> bool:
        return self.verb in READ_VERBS or (self.verb == "create" and self.resource in REVIEW_RESOURCES)


def audit_log_files(path: Path) -> list[Path]:
    """The log and its rotated backups (`audit-<time>.log` beside it), oldest first."""
    backups = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
    return [*backups, path] if path.exists() else backups


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def read_audit_log(path: Path) -> Iterator[AuditRequest]:
    """Every completed request except watches, from the log and its rotated backups."""
    for file in audit_log_files(path):
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                if '"ResponseComplete"' not in line:
                    continue
                event = json.loads(line)
                verb = event.get("verb", "")
                if event.get("stage") != "ResponseComplete" or verb == "watch":
                    continue
                ref = event.get("objectRef") or {}
                resource = "/".join(part for part in (ref.get("resource"), ref.get("subresource")) if part)
                if not ref:
                    resource = str(event.get("requestURI", "")).split("?", 1)[0]
                yield AuditRequest(
                    received_at=_timestamp(event["requestReceivedTimestamp"]),
                    verb=verb,
                    username=(event.get("user") or {}).get("username", ""),
                    user_agent=event.get("userAgent", ""),
                    resource=resource,
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                )


def by_operator_user_agent(request: AuditRequest) -> bool:
    """The operator's requests by user agent: kopf's own client, and the operator's Kubernetes client."""
    return request.user_agent.startswith(OPERATOR_USER_AGENT_PREFIXES)


def by_user(username: str) -> Callable[[AuditRequest], bool]:
    """Requests of one identity (the operator runs with its own client certificate in the benchmarks)."""
    return lambda request: request.username == username


@dataclass
class RequestCounts:
    """Reads and writes in one time window, with what they were."""

    reads: int = 0
    writes: int = 0
    throttled: int = 0  # answered 429 Too Many Requests
    by_kind: Counter[str] = field(default_factory=Counter)  # "patch llamadeployments/status" -> count
    by_agent: Counter[str] = field(default_factory=Counter)  # user-agent product -> count

    @property
    def total(self) -> int:
        return self.reads + self.writes

    def add(self, request: AuditRequest) -> None:
        if request.is_read:
            self.reads += 1
        elif request.is_write:
            self.writes += 1
        else:
            return
        if request.code == HTTP_TOO_MANY_REQUESTS:
            self.throttled += 1
        self.by_kind[f"{request.verb} {request.resource}"] += 1
        self.by_agent[request.agent] += 1

    def summary(self, top: int = 4) -> str:
        """`12 reads, 3 writes (patch llamadeployments/status 3, ...)`."""
        kinds = ", ".join(f"{kind} {count}" for kind, count in self.by_kind.most_common(top))
        return f"{self.reads} reads, {self.writes} writes" + (f" ({kinds})" if kinds else "")


def count_requests(
    requests: Iterable[AuditRequest], start: float, end: float, selected: Callable[[AuditRequest], bool]
) -> RequestCounts:
    """Reads and writes of the `selected` requests received in [start, end)."""
    counts = RequestCounts()
    for request in requests:
        if start <= request.received_at < end and selected(request):
            counts.add(request)
    return counts


def count_by_client(requests: Iterable[AuditRequest], start: float, end: float) -> Counter[str]:
    """Reads and writes per client (`user (user-agent product)`) received in [start, end): who loaded the apiserver."""
    clients: Counter[str] = Counter()
    for request in requests:
        if start <= request.received_at < end and (request.is_read or request.is_write):
            clients[f"{request.username} ({request.agent})"] += 1
    return clients
