"""Pure rules of the process-backed kubelet: how a pod's processes read back as pod status, and
the rest of what a kubelet decides (restarts and back-off, pod addresses, the node's status and lease).

How a pod becomes a command line (paths, volumes, env) is in ``process_pod_paths.py``.

Nothing here touches the API, the clock or a process: callers pass ``now`` and what they
observed, and get plain manifests back. ``process_pod_worker.py`` does the I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Manifest = dict[str, Any]

MAX_TERMINATION_MESSAGE_BYTES = 2048
# A container that ran this long before it exited starts its back-off over (the kubelet's rule: 2 x the cap).
BACKOFF_RESET_FACTOR = 2
POD_CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
CONTAINER_ID_SCHEME = "process://"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
UNSUPPORTED_REASON = "ProcessBackedUnsupported"


# -- restarts ---------------------------------------------------------------------------------


def restart_backoff_seconds(crashes: int, initial_seconds: float = 10.0, max_seconds: float = 300.0) -> float:
    """The kubelet's restart delay after the ``crashes``-th exit in a row: 10 s, 20 s, 40 s ... capped."""
    if crashes <= 0:
        return 0.0
    return float(min(max_seconds, initial_seconds * 2 ** min(crashes - 1, 32)))


def crashes_after_exit(previous_crashes: int, ran_seconds: float, max_seconds: float = 300.0) -> int:
    """Consecutive crashes counting this exit; a container that ran long enough starts over at 1."""
    if ran_seconds >= BACKOFF_RESET_FACTOR * max_seconds:
        return 1
    return previous_crashes + 1


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    return restart_policy == "OnFailure" and exit_code != 0


def should_restart_init(restart_policy: str, exit_code: int) -> bool:
    """A failed init container is run again until it succeeds, unless the pod never restarts (then the pod fails)."""
    return exit_code != 0 and restart_policy != "Never"


def is_sidecar(init_container: Manifest) -> bool:
    """A restartable init container (``restartPolicy: Always``): a sidecar, which runs beside the pod's containers."""
    return init_container.get("restartPolicy") == "Always"


# -- pod addresses ----------------------------------------------------------------------------


@dataclass
class LoopbackAllocator:
    """Hands out one loopback address per pod from a network (Linux routes all of 127/8 to lo).

    Addresses are handed out round-robin, so a pod's address is not reused by the next pod at once.
    """

    network: str = "127.0.1.0/24"
    in_use: set[str] = field(default_factory=set)
    _last: int = -1

    def __post_init__(self) -> None:
        parsed = ipaddress.ip_network(self.network)
        if not parsed.is_loopback or parsed.version != 4:
            raise ValueError(f"pod network {self.network} must be an IPv4 loopback network (inside 127.0.0.0/8)")

    def allocate(self) -> str:
        hosts = [str(host) for host in ipaddress.ip_network(self.network).hosts()]
        for step in range(1, len(hosts) + 1):
            index = (self._last + step) % len(hosts)
            if hosts[index] not in self.in_use:
                self._last = index
                self.in_use.add(hosts[index])
                return hosts[index]
        raise RuntimeError(f"every address of {self.network} is in use ({len(hosts)} pods)")

    def release(self, address: str) -> None:
        self.in_use.discard(address)


# -- status -----------------------------------------------------------------------------------


def termination_message(log_tail: str, max_bytes: int = MAX_TERMINATION_MESSAGE_BYTES) -> str:
    """The end of a container's log as its termination message (FallbackToLogsOnError), at most ``max_bytes``."""
    data = log_tail.strip().encode("utf-8")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    return data[-max_bytes:].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str
    started_at: str
    finished_at: str
    container_id: str = ""

    def manifest(self) -> Manifest:
        manifest: Manifest = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "message": self.message,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.container_id:
            manifest["containerID"] = self.container_id
        return manifest


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


@dataclass(frozen=True)
class ContainerView:
    """What the kubelet knows about one container, in the shape of its status."""

    name: str
    image: str
    state: Literal["waiting", "running", "terminated"]
    reason: str = ""
    message: str = ""
    started_at: str = ""
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    started: bool = False
    ready: bool = False
    restart_count: int = 0
    pid: int | None = None

    def manifest(self) -> Manifest:
        state: Manifest
        if self.state == "running":
            state = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.manifest()}
        else:
            waiting: Manifest = {"reason": self.reason or "ContainerCreating"}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        status: Manifest = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": state,
            "lastState": {"terminated": self.last_terminated.manifest()} if self.last_terminated else {},
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
        }
        if self.pid is not None:
            status["containerID"] = f"{CONTAINER_ID_SCHEME}{self.pid}"
        return status


def waiting_for_init(container: Manifest) -> ContainerView:
    """A container that waits for the pod's init containers (an init container not run yet, or a container)."""
    return ContainerView(
        name=str(container["name"]), image=str(container.get("image", "")), state="waiting", reason=POD_INITIALIZING
    )


def sidecar_refused(container: Manifest) -> ContainerView:
    """A sidecar init container: not run here, and the pod waits on it for good."""
    return ContainerView(
        name=str(container["name"]),
        image=str(container.get("image", "")),
        state="waiting",
        reason=UNSUPPORTED_REASON,
        message="the process-backed kubelet does not run sidecar (restartPolicy: Always) init containers",
    )


def initial_views(spec: Manifest) -> dict[str, ContainerView]:
    """Every container's status before anything ran, by name: init containers and the first container
    wait for the init containers, the other containers are not run here."""
    init = spec.get("initContainers") or []
    main, *others = spec["containers"]
    views = {str(c["name"]): waiting_for_init(c) for c in init}
    views[str(main["name"])] = (
        waiting_for_init(main)
        if init
        else ContainerView(name=str(main["name"]), image=str(main.get("image", "")), state="waiting")
    )
    for other in others:
        views[str(other["name"])] = ContainerView(
            name=str(other["name"]),
            image=str(other.get("image", "")),
            state="waiting",
            reason=UNSUPPORTED_REASON,
            message="the process-backed kubelet runs the first container of a pod only",
        )
    return views


def completed(view: ContainerView) -> bool:
    return view.state == "terminated" and view.terminated is not None and view.terminated.exit_code == 0


def failed(view: ContainerView) -> bool:
    return view.state == "terminated" and view.terminated is not None and view.terminated.exit_code != 0


def pod_phase(
    restart_policy: str, containers: Sequence[ContainerView], init_containers: Sequence[ContainerView] = ()
) -> str:
    """Pending until every init container completed and a container started (Failed when an init
    container failed and the pod never restarts); Running while one runs or will restart; then
    Succeeded/Failed."""
    if not all(completed(c) for c in init_containers):
        return "Failed" if restart_policy == "Never" and any(failed(c) for c in init_containers) else "Pending"
    if not containers or all(c.state == "waiting" and c.restart_count == 0 for c in containers):
        return "Pending"
    if any(c.state == "running" for c in containers) or restart_policy == "Always":
        return "Running"
    finished = [c.terminated for c in containers if c.state == "terminated" and c.terminated is not None]
    if len(finished) < len(containers):
        return "Running"  # waiting for a restart (OnFailure)
    return "Succeeded" if all(t.exit_code == 0 for t in finished) else "Failed"


def unmet_readiness_gates(pod: Manifest) -> list[str]:
    """The pod's readiness gates whose condition is not True (someone else, e.g. the operator, sets them)."""
    conditions = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    gates = [str(gate["conditionType"]) for gate in (pod.get("spec") or {}).get("readinessGates") or []]
    return [gate for gate in gates if conditions.get(gate) != "True"]


def kubelet_conditions(
    desired: Mapping[str, tuple[bool, str]],
    previous: Iterable[Manifest],
    now: str,
    messages: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """The kubelet's own condition types (``type -> (status, reason when False)``, ``messages`` when
    False); a condition keeps its transition time from ``previous`` while its status stays."""
    before = {str(c.get("type")): c for c in previous}
    conditions: list[Manifest] = []
    for type_, (value, reason) in desired.items():
        status = "True" if value else "False"
        old = before.get(type_)
        since = old.get("lastTransitionTime", now) if old is not None and old.get("status") == status else now
        condition: Manifest = {"type": type_, "status": status, "lastTransitionTime": since}
        if not value and reason:
            condition["reason"] = reason
        if not value and (messages or {}).get(type_):
            condition["message"] = (messages or {})[type_]
        conditions.append(condition)
    return conditions


def pod_status(
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    restart_policy: str,
    init_containers: Sequence[ContainerView],
    containers: Sequence[ContainerView],
    unmet_gates: Sequence[str],
    previous_conditions: Iterable[Manifest],
    now: str,
) -> Manifest:
    """The part of the pod's ``status`` a kubelet owns, as a strategic-merge patch body.

    Conditions merge by type, so others' conditions (PodScheduled, readiness gates) stay;
    Initialized needs every init container completed (exit code 0), Ready needs every container
    ready and every readiness gate True.
    """
    incomplete = [c.name for c in init_containers if not completed(c)]
    unready = [c.name for c in containers if not c.ready]
    containers_ready = bool(containers) and not unready
    ready_reason = "ContainersNotReady" if not containers_ready else "ReadinessGatesNotReady"
    desired = {
        "PodReadyToStartContainers": (True, ""),
        "Initialized": (not incomplete, "ContainersNotInitialized"),
        "ContainersReady": (containers_ready, "ContainersNotReady"),
        "Ready": (containers_ready and not unmet_gates, ready_reason),
    }
    unready_message = f"containers with unready status: [{' '.join(unready)}]"
    messages = {
        "Initialized": f"containers with incomplete status: [{' '.join(incomplete)}]",
        "ContainersReady": unready_message,
        "Ready": unready_message if unready else f"readiness gates not True: [{' '.join(unmet_gates)}]",
    }
    return {
        "phase": pod_phase(restart_policy, containers, init_containers),
        "conditions": kubelet_conditions(desired, previous_conditions, now, messages),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "initContainerStatuses": [c.manifest() for c in init_containers],
        "containerStatuses": [c.manifest() for c in containers],
    }


# -- nodes ------------------------------------------------------------------------------------


def node_status_patch(
    host_ip: str, node_name: str, now: str, kubelet_version: str, kubelet_port: int | None = None
) -> Manifest:
    """A Ready node with loopback addresses; capacity and allocatable stay as registered.

    ``kubelet_port``: where the kubelet's HTTPS server listens (the apiserver proxies pods/log there).
    """
    conditions = [
        ("Ready", "True", "KubeletReady", "the process-backed kubelet is posting ready status"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("NetworkUnavailable", "False", "RouteCreated", "pods use loopback addresses"),
    ]
    node_status: Manifest = {
        "conditions": [
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for type_, status, reason, message in conditions
        ],
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": node_name}],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "process://local",
            "kernelVersion": "",
            "osImage": "process-backed",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }
    if kubelet_port is not None:
        node_status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": kubelet_port}}
    return {"status": node_status}


def pod_event(
    pod: Manifest, node_name: str, reason: str, message: str, *, now: str, type_: str = "Warning"
) -> Manifest:
    """A core/v1 Event about ``pod`` from the kubelet of ``node_name`` (say FailedMount)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": "kubelet", "host": node_name},
        "reportingComponent": "kubelet",
        "reportingInstance": node_name,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def node_lease(node_name: str, node_uid: str, duration_seconds: int, now_micro: str) -> Manifest:
    """The coordination.k8s.io Lease the node lifecycle controller reads as the node's heartbeat."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node_name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration_seconds, "renewTime": now_micro},
    }
