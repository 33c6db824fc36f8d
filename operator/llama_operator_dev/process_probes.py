"""The probes of the process-backed kubelet: targets read from the pod spec, the counting and
scheduling rules of the kubelet (pure), and running one probe against a container.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Manifest = dict[str, Any]
PROBE_USER_AGENT = "kube-probe/process-backed"


@dataclass(frozen=True)
class ProbeTarget:
    """Where and how often one probe checks a container."""

    kind: Literal["httpGet", "tcpSocket", "unsupported"]
    host: str
    port: int
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    period_seconds: float = 10.0
    timeout_seconds: float = 1.0
    initial_delay_seconds: float = 0.0
    failure_threshold: int = 3
    success_threshold: int = 1

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def resolve_port(port: int | str, container: Manifest) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise ValueError(f"container {container.get('name')} has no port named {port!r}")


def probe_target(
    probe: Manifest | None, container: Manifest, pod_ip: str, max_period_seconds: float | None = None
) -> ProbeTarget | None:
    """The probe as the kubelet runs it, or None when the container has none.

    ``max_period_seconds`` shortens long periods (a harness setting for fast tests); the
    thresholds stay as written.
    """
    if not probe:
        return None
    period = float(probe.get("periodSeconds", 10))
    if max_period_seconds is not None:
        period = min(period, max_period_seconds)
    timing = ProbeTarget(
        kind="unsupported",
        host=pod_ip,
        port=0,
        period_seconds=period,
        timeout_seconds=float(probe.get("timeoutSeconds", 1)),
        initial_delay_seconds=float(probe.get("initialDelaySeconds", 0)),
        failure_threshold=int(probe.get("failureThreshold", 3)),
        success_threshold=int(probe.get("successThreshold", 1)),
    )
    if "httpGet" in probe:
        http = probe["httpGet"]
        return replace(
            timing,
            kind="httpGet",
            host=str(http.get("host") or pod_ip),
            port=resolve_port(http["port"], container),
            path=str(http.get("path") or "/"),
            scheme=str(http.get("scheme", "HTTP")).lower(),
            headers=tuple((str(h["name"]), str(h["value"])) for h in http.get("httpHeaders") or []),
        )
    if "tcpSocket" in probe:
        tcp = probe["tcpSocket"]
        return replace(
            timing, kind="tcpSocket", host=str(tcp.get("host") or pod_ip), port=resolve_port(tcp["port"], container)
        )
    return timing


def http_probe_passed(status_code: int) -> bool:
    """The kubelet's rule: any status from 200 to 399 passes."""
    return 200 <= status_code < 400


@dataclass(frozen=True)
class ProbeCounter:
    """Consecutive successes and failures of one probe, and the verdict they add up to."""

    success_threshold: int
    failure_threshold: int
    passing: bool = False
    successes: int = 0
    failures: int = 0

    def observe(self, ok: bool) -> ProbeCounter:
        if ok:
            successes = self.successes + 1
            passing = self.passing or successes >= self.success_threshold
            return replace(self, successes=successes, failures=0, passing=passing)
        failures = self.failures + 1
        passing = self.passing and failures < self.failure_threshold
        return replace(self, successes=0, failures=failures, passing=passing)

    @property
    def failed(self) -> bool:
        """The failure threshold was reached (a startup or liveness probe then restarts the container)."""
        return self.failures >= self.failure_threshold


ProbeKind = Literal["startup", "readiness", "liveness"]
PROBE_KINDS: tuple[ProbeKind, ...] = ("startup", "readiness", "liveness")
AFTER_STARTUP: tuple[ProbeKind, ...] = ("readiness", "liveness")


@dataclass
class ContainerProbes:
    """The probes of one running container: which are due when, and what their results add up to.

    The startup probe runs alone until it passes; then readiness and liveness run. Without a
    startup probe the container counts as started at once; without a readiness probe it is ready
    as soon as it started.
    """

    targets: dict[ProbeKind, ProbeTarget]
    began: float
    counters: dict[ProbeKind, ProbeCounter] = field(default_factory=dict)
    due: dict[ProbeKind, float] = field(default_factory=dict)
    started: bool = False
    ready: bool = False

    @classmethod
    def for_container(
        cls, container: Manifest, pod_ip: str, began: float, max_period_seconds: float | None = None
    ) -> ContainerProbes:
        targets: dict[ProbeKind, ProbeTarget] = {}
        for kind in PROBE_KINDS:
            target = probe_target(container.get(f"{kind}Probe"), container, pod_ip, max_period_seconds)
            if target is not None:
                targets[kind] = target
        started = "startup" not in targets
        return cls(
            targets=targets,
            began=began,
            counters={k: ProbeCounter(t.success_threshold, t.failure_threshold) for k, t in targets.items()},
            due={k: began + t.initial_delay_seconds for k, t in targets.items()},
            started=started,
            ready=started and "readiness" not in targets,
        )

    def active(self) -> list[ProbeKind]:
        return [k for k in (AFTER_STARTUP if self.started else ("startup",)) if k in self.targets]

    def due_now(self, now: float) -> list[ProbeKind]:
        return [k for k in self.active() if self.due[k] <= now]

    def next_due(self) -> float | None:
        times = [self.due[k] for k in self.active()]
        return min(times) if times else None

    def observe(self, kind: ProbeKind, ok: bool, now: float) -> str | None:
        """Count one result; returns why the container must be restarted, when a startup or liveness probe gave up."""
        target = self.targets[kind]
        self.due[kind] = now + target.period_seconds
        counter = self.counters[kind] = self.counters[kind].observe(ok)
        if kind == "startup" and counter.passing:
            self.started = True
            self.ready = "readiness" not in self.targets
            for later in AFTER_STARTUP:
                if later in self.targets:
                    self.due[later] = max(now, self.began + self.targets[later].initial_delay_seconds)
        elif kind == "readiness":
            self.ready = counter.passing
        if kind != "readiness" and counter.failed:
            return f"{kind} probe failed {counter.failures} times"
        return None


def run_probe(target: ProbeTarget) -> tuple[bool, str]:
    """One probe: (passed, what the container answered or why it failed)."""
    if target.kind == "unsupported":
        return True, "probe type not supported by the process-backed kubelet; counted as passing"
    if target.kind == "tcpSocket":
        try:
            with socket.create_connection((target.host, target.port), timeout=target.timeout_seconds):
                return True, f"connected to {target.host}:{target.port}"
        except OSError as error:
            return False, f"{type(error).__name__}: {error}"
    connection: http.client.HTTPConnection
    if target.scheme == "https":  # the kubelet does not verify a probe's certificate
        context = ssl._create_unverified_context()  # noqa: S323 - same as the kubelet
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=target.timeout_seconds, context=context
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=target.timeout_seconds)
    try:
        connection.request("GET", target.path, headers={"User-Agent": PROBE_USER_AGENT, **dict(target.headers)})
        response = connection.getresponse()
        body = response.read(1024).decode("utf-8", errors="replace").strip()
    except (OSError, http.client.HTTPException) as error:
        return False, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    return http_probe_passed(response.status), f"HTTP {response.status}: {body[:200]}"
