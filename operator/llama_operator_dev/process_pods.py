"""Pure rules of the process-backed kubelet: how a pod becomes a local process, and how that
process reads back as pod status.

Nothing here touches the API, the clock or a process: callers pass ``now`` and what they
observed, and get plain manifests back. ``process_kubelet.py`` does the I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Manifest = dict[str, Any]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})  # noqa: S104 - recognised, then replaced by the pod IP
HOST_FLAGS = ("--host",)
MAX_TERMINATION_MESSAGE_BYTES = 2048
# A container that ran this long before it exited starts its back-off over (the kubelet's rule: 2 x the cap).
BACKOFF_RESET_FACTOR = 2
POD_CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
CONTAINER_ID_SCHEME = "process://"


# -- from pod spec to command line ------------------------------------------------------------


def map_pod_path(value: str, path_map: Mapping[str, Path]) -> str:
    """A path inside the pod -> the host path the harness maps it to; anything else unchanged.

    An entry maps a file exactly (``/models/tiny.gguf``) or a folder and everything below it
    (``/adapters``); the longest matching entry wins.
    """
    if value in path_map:
        return str(path_map[value])
    best_folder, best_target = "", ""
    for prefix, target in path_map.items():
        folder = prefix.rstrip("/")
        if folder and value.startswith(folder + "/") and len(folder) > len(best_folder):
            best_folder, best_target = folder, str(target)
    if not best_folder:
        return value
    return best_target + value[len(best_folder) :]


def expand_references(text: str, environment: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args: defined names are replaced,
    undefined ones stay as written, ``$$`` is a literal ``$``."""
    out: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        match = re.match(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)", text[index:])
        if match and match.group(1) in environment:
            out.append(environment[match.group(1)])
            index += match.end()
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


def rewrite_args(args: Sequence[str], path_map: Mapping[str, Path], pod_ip: str) -> list[str]:
    """Map pod paths to host paths and a wildcard ``--host`` to the pod's own address.

    A ``--host`` that is not a wildcard (say 127.0.0.1) is kept: in a real pod it would bind the
    pod's loopback and be unreachable from the kubelet's probes, and so it is here.
    """
    rewritten: list[str] = []
    previous = ""
    for arg in args:
        if previous in HOST_FLAGS and arg in WILDCARD_HOSTS:
            rewritten.append(pod_ip)
        elif arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            if flag in HOST_FLAGS and value in WILDCARD_HOSTS:
                rewritten.append(f"{flag}={pod_ip}")
            else:
                rewritten.append(f"{flag}={map_pod_path(value, path_map)}")
        else:
            rewritten.append(map_pod_path(arg, path_map))
        previous = arg
    return rewritten


def container_environment(
    container: Manifest, field_values: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """(the container's ``env`` in order, names this kubelet cannot resolve).

    Plain values and ``fieldRef``s to the pod's own fields (``field_values``, e.g.
    ``status.podIP``) are resolved; Secrets and ConfigMaps are not.
    """
    fields = field_values or {}
    values: dict[str, str] = {}
    unresolved: list[str] = []
    for entry in container.get("env") or []:
        name = str(entry["name"])
        source = entry.get("valueFrom")
        if source is None:
            values[name] = expand_references(str(entry.get("value", "")), values)
            continue
        field_path = str((source.get("fieldRef") or {}).get("fieldPath", ""))
        if field_path in fields:
            values[name] = fields[field_path]
        else:
            unresolved.append(name)
    return values, unresolved


def process_environment(
    base: Mapping[str, str], node_extra: Mapping[str, str], container: Mapping[str, str]
) -> dict[str, str]:
    """A pod process' environment: the kubelet's base (PATH, HOME, HOSTNAME), then what the harness
    adds on this node (``ProcessBackedConfig.extra_env``), then the container's own ``env``, which wins."""
    return {**base, **node_extra, **container}


def container_command(
    container: Manifest, path_map: Mapping[str, Path], pod_ip: str, environment: Mapping[str, str] | None = None
) -> list[str]:
    """The argv a container runs as a local process; empty when the pod names no command
    (the image's entrypoint cannot be known without the image)."""
    env = environment if environment is not None else container_environment(container)[0]
    command = [expand_references(part, env) for part in container.get("command") or []]
    args = [expand_references(part, env) for part in container.get("args") or []]
    if not command:
        return []
    return [map_pod_path(command[0], path_map), *rewrite_args([*command[1:], *args], path_map, pod_ip)]


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


def skipped_init_container(container: Manifest, now: str) -> ContainerView:
    """An init container that would download: the harness' path map already did its job."""
    done = Terminated(
        exit_code=0,
        reason="Completed",
        message="not run by the process-backed kubelet: its files come from the harness' path map",
        started_at=now,
        finished_at=now,
    )
    return ContainerView(
        name=str(container["name"]), image=str(container.get("image", "")), state="terminated", terminated=done
    )


def pod_phase(restart_policy: str, containers: Sequence[ContainerView]) -> str:
    """Pending until a container started; Running while one runs or will restart; then Succeeded/Failed."""
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
    desired: Mapping[str, tuple[bool, str]], previous: Iterable[Manifest], now: str
) -> list[Manifest]:
    """The kubelet's own condition types (``type -> (status, reason when False)``); a condition keeps
    its transition time from ``previous`` while its status stays."""
    before = {str(c.get("type")): c for c in previous}
    conditions: list[Manifest] = []
    for type_, (value, reason) in desired.items():
        status = "True" if value else "False"
        old = before.get(type_)
        since = old.get("lastTransitionTime", now) if old is not None and old.get("status") == status else now
        condition: Manifest = {"type": type_, "status": status, "lastTransitionTime": since}
        if not value and reason:
            condition["reason"] = reason
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

    Conditions merge by type, so others' conditions (PodScheduled, readiness gates) stay; Ready
    needs every container ready and every readiness gate True.
    """
    containers_ready = bool(containers) and all(c.ready for c in containers)
    ready_reason = "ContainersNotReady" if not containers_ready else "ReadinessGatesNotReady"
    desired = {
        "PodReadyToStartContainers": (True, ""),
        "Initialized": (True, ""),
        "ContainersReady": (containers_ready, "ContainersNotReady"),
        "Ready": (containers_ready and not unmet_gates, ready_reason),
    }
    return {
        "phase": pod_phase(restart_policy, containers),
        "conditions": kubelet_conditions(desired, previous_conditions, now),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "initContainerStatuses": [c.manifest() for c in init_containers],
        "containerStatuses": [c.manifest() for c in containers],
    }


# -- nodes ------------------------------------------------------------------------------------


def node_status_patch(host_ip: str, node_name: str, now: str, kubelet_version: str) -> Manifest:
    """A Ready node with loopback addresses; capacity and allocatable stay as registered."""
    conditions = [
        ("Ready", "True", "KubeletReady", "the process-backed kubelet is posting ready status"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("NetworkUnavailable", "False", "RouteCreated", "pods use loopback addresses"),
    ]
    return {
        "status": {
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
