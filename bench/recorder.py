"""What a benchmark run observes: per-LlamaDeployment milestones from watches, and the operator's CPU and memory.

`ReadinessRecorder` runs one thread per watch (LlamaDeployments, and their Deployments, Services,
PodDisruptionBudgets and pods, found by the `llamaops.io/deployment` label) in one namespace and
timestamps, per object, the first moment its three children exist, its pods are Ready, and its
`Ready` condition is True for the current generation. `ProcessSampler` reads `/proc` once a second
for the CPU time and resident memory of a process and its descendants.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

LOGGER = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
LABEL_DEPLOYMENT = "llamaops.io/deployment"
CHILD_KINDS = frozenset({"Deployment", "Service", "PodDisruptionBudget"})
BENCH_USER_AGENT = "llama-operator-bench/1"  # not the operator's `llama-operator/` prefix
WATCH_TIMEOUT_SECONDS = 240  # the server ends each watch after this; it is resumed from its last version
RETRY_SECONDS = 1.0
HTTP_GONE = 410
HTTP_OK_MAX = 299


@dataclass
class ObjectTimeline:
    """Milestones of one LlamaDeployment, as seconds since the epoch (None: not reached)."""

    applied_at: float | None = None
    children_at: float | None = None
    pods_ready_at: float | None = None
    ready_at: float | None = None
    ready_lost: int = 0  # times it left Ready=True after first reaching it
    replicas: int = 1
    ready: bool = False
    children: set[str] = field(default_factory=set)
    ready_pods: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ReadyCounts:
    """How many objects reached each milestone."""

    applied: int
    children: int
    pods_ready: int
    ready: int
    ready_now: int

    def line(self) -> str:
        return (
            f"{self.ready}/{self.applied} Ready (now {self.ready_now}); children of {self.children}, "
            f"pods Ready of {self.pods_ready}"
        )


def _owner(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    if owner:
        return str(owner)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "LlamaDeployment":
            return str(ref["name"])
    return None


def _condition_true(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_ and c.get("status") == "True"), None)


def is_ready(obj: dict[str, Any]) -> bool:
    """`Ready=True` for the object's current generation."""
    status = obj.get("status") or {}
    ready = _condition_true(status.get("conditions"), "Ready")
    if ready is None:
        return False
    observed = ready.get("observedGeneration", status.get("observedGeneration"))
    return bool(observed == (obj.get("metadata") or {}).get("generation"))


class ReadinessRecorder:
    """Watch threads over one namespace; `counts()` and `wait()` for the caller, `timelines()` at the end."""

    def __init__(self, new_api_client: Callable[[], Any], namespace: str) -> None:
        self._new_api_client = new_api_client
        self.namespace = namespace
        self._objects: dict[str, ObjectTimeline] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str, Any] = {}

    # -- caller side -----------------------------------------------------------------------

    def start(self) -> None:
        for kind in ("LlamaDeployment", "Deployment", "Service", "PodDisruptionBudget", "Pod"):
            thread = threading.Thread(target=self._watch_loop, args=(kind,), name=f"watch-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            responses = list(self._responses.values())
        for response in responses:
            shutdown = getattr(response, "shutdown", None)  # unblocks a read in another thread (urllib3 >= 2.3)
            if shutdown is not None:
                shutdown()
        for thread in self._threads:
            thread.join(timeout=5)

    def applied(self, name: str, at: float) -> None:
        with self._changed:
            self._timeline(name).applied_at = at
            self._changed.notify_all()

    def counts(self) -> ReadyCounts:
        with self._changed:
            return self._counts()

    def wait(self, until: Callable[[ReadyCounts], bool], timeout_seconds: float) -> ReadyCounts:
        """Block until `until(counts)` holds or the timeout passes; the counts at that moment."""
        with self._changed:
            self._changed.wait_for(lambda: until(self._counts()), timeout=timeout_seconds)
            return self._counts()

    def timelines(self) -> dict[str, ObjectTimeline]:
        with self._changed:
            return {
                name: ObjectTimeline(
                    t.applied_at, t.children_at, t.pods_ready_at, t.ready_at, t.ready_lost, t.replicas, t.ready
                )
                for name, t in self._objects.items()
            }

    # -- state -----------------------------------------------------------------------------

    def _timeline(self, name: str) -> ObjectTimeline:
        return self._objects.setdefault(name, ObjectTimeline())

    def _counts(self) -> ReadyCounts:
        objects = [t for t in self._objects.values() if t.applied_at is not None]
        return ReadyCounts(
            applied=len(objects),
            children=sum(t.children_at is not None for t in objects),
            pods_ready=sum(t.pods_ready_at is not None for t in objects),
            ready=sum(t.ready_at is not None for t in objects),
            ready_now=sum(t.ready for t in objects),
        )

    def _handle(self, kind: str, event_type: str, obj: dict[str, Any], at: float) -> None:
        meta = obj.get("metadata") or {}
        owner = str(meta.get("name")) if kind == "LlamaDeployment" else _owner(obj)
        if owner is None:
            return
        with self._changed:
            timeline = self._timeline(owner)
            deleted = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
            if kind == "LlamaDeployment":
                timeline.replicas = int((obj.get("spec") or {}).get("replicas", 1))
                ready = not deleted and is_ready(obj)
                if timeline.ready and not ready:
                    timeline.ready_lost += 1
                timeline.ready = ready
                if ready and timeline.ready_at is None:
                    timeline.ready_at = at
            elif kind == "Pod":
                pod_ready = _condition_true((obj.get("status") or {}).get("conditions"), "Ready") is not None
                if pod_ready and not deleted:
                    timeline.ready_pods.add(str(meta.get("name")))
                else:
                    timeline.ready_pods.discard(str(meta.get("name")))
            elif deleted:
                timeline.children.discard(kind)
            else:
                timeline.children.add(kind)
            if timeline.children_at is None and timeline.children >= CHILD_KINDS:
                timeline.children_at = at
            if timeline.pods_ready_at is None and len(timeline.ready_pods) >= timeline.replicas:
                timeline.pods_ready_at = at
            self._changed.notify_all()

    # -- watches ---------------------------------------------------------------------------

    def _list_call(self, kind: str, api_client: Any) -> Callable[..., Any]:
        namespace, selector = self.namespace, LABEL_DEPLOYMENT
        calls: dict[str, Callable[..., Any]] = {
            "LlamaDeployment": lambda **kw: kube_client.CustomObjectsApi(api_client).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, **kw
            ),
            "Deployment": lambda **kw: kube_client.AppsV1Api(api_client).list_namespaced_deployment(
                namespace, label_selector=selector, **kw
            ),
            "Service": lambda **kw: kube_client.CoreV1Api(api_client).list_namespaced_service(
                namespace, label_selector=selector, **kw
            ),
            "PodDisruptionBudget": lambda **kw: kube_client.PolicyV1Api(
                api_client
            ).list_namespaced_pod_disruption_budget(namespace, label_selector=selector, **kw),
            "Pod": lambda **kw: kube_client.CoreV1Api(api_client).list_namespaced_pod(
                namespace, label_selector=selector, **kw
            ),
        }
        return calls[kind]

    def _watch_loop(self, kind: str) -> None:
        api_client = self._new_api_client()
        api_client.user_agent = BENCH_USER_AGENT
        list_call = self._list_call(kind, api_client)
        resource_version: str | None = None
        try:
            while not self._stopping.is_set():
                try:
                    resource_version = self._watch_once(kind, list_call, resource_version)
                except (ApiException, HTTPError, OSError, ValueError) as error:
                    if self._stopping.is_set():
                        return
                    if isinstance(error, ApiException) and error.status == HTTP_GONE:
                        resource_version = None  # too old: start over from the current state
                    LOGGER.warning("watch of %s failed (%s); retrying", kind, error)
                    self._stopping.wait(RETRY_SECONDS)
        finally:
            api_client.close()

    def _watch_once(self, kind: str, list_call: Callable[..., Any], resource_version: str | None) -> str | None:
        """One watch request until the server ends it; the last resource version seen (None after 410 Gone)."""
        options: dict[str, Any] = {"allow_watch_bookmarks": True, "timeout_seconds": WATCH_TIMEOUT_SECONDS}
        if resource_version is not None:
            options["resource_version"] = resource_version
        response = list_call(watch=True, _preload_content=False, **options)
        raw = getattr(response, "response", response)  # the urllib3 response behind the client's wrapper
        with self._changed:
            self._responses[kind] = raw
        try:
            if not 200 <= int(raw.status) <= HTTP_OK_MAX:
                raise ApiException(status=raw.status, reason=raw.reason)
            for event in _events(raw):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == HTTP_GONE:
                        return None
                    raise ApiException(status=obj.get("code", 0), reason=obj.get("message", "watch error"))
                resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                if event.get("type") != "BOOKMARK":
                    self._handle(kind, str(event.get("type")), obj, time.time())
        finally:
            with self._changed:
                self._responses.pop(kind, None)
            raw.release_conn()
        return resource_version


def _events(response: Any) -> Iterator[dict[str, Any]]:
    for line in iter_resp_lines(response):
        if line.strip():
            yield json.loads(line)


# -- the operator's CPU and memory ---------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces), numbered from 3."""
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[int]:
    """The process and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system time of the process, plus that of its children it has waited for."""
    fields = _stat_fields(pid)
    utime, stime, cutime, cstime = (int(fields[index]) for index in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class UsageSample:
    at: float
    cpu_seconds: float
    rss_bytes: int


class ProcessSampler:
    """CPU seconds and RSS of a process tree, once a second, in a thread."""

    def __init__(self, pid: int, interval_seconds: float = 1.0) -> None:
        self.pid = pid
        self.interval_seconds = interval_seconds
        self.samples: list[UsageSample] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sample-{pid}", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def sample(self) -> UsageSample | None:
        """Read the tree now; None once the process is gone."""
        try:
            pids = _descendants(self.pid)
            cpu = _cpu_seconds(self.pid) + sum(_cpu_seconds(pid) for pid in pids if pid != self.pid)
            rss = sum(_rss_bytes(pid) for pid in pids)
        except (OSError, ValueError):
            return None
        sample = UsageSample(time.time(), cpu, rss)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_seconds):
            if self.sample() is None:
                return

    def cpu_seconds_between(self, start: float, end: float) -> float:
        """CPU time used between two moments, from the last sample at or before `start` to the first at or
        after `end` (so at most a sampling interval more on each side); 0 without samples."""
        before = [s for s in self.samples if s.at <= start] or self.samples[:1]
        after = [s for s in self.samples if s.at >= end] or self.samples[-1:]
        return after[0].cpu_seconds - before[-1].cpu_seconds if before and after else 0.0

    def rss_between(self, start: float, end: float) -> tuple[int, int]:
        """(max, median) resident bytes between two moments; (0, 0) without samples."""
        values = [s.rss_bytes for s in self.samples if start <= s.at <= end]
        return (max(values), int(statistics.median(values))) if values else (0, 0)
