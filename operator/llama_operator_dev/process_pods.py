"""Pure rules of the process-backed kubelet: how a pod becomes local processes, and how those
processes read back as pod status.

Paths: a pod names paths inside its own filesystem; the harness maps them to host paths. Two
sources make up a container's path map: the static ``path_map`` of the harness config, and the
pod's ``emptyDir`` volumes, each a host folder under the pod's folder
(``<pod_dir>/volumes/<volume>``) that the container's ``volumeMounts`` place at their mount
paths. For any path the longest matching entry wins; a static entry wins over a mount of the
same path. Mapping applies to whole arguments and to pod paths *inside* command/args strings
and env values (a ``sh -c`` script, ``name=/adapters/a/v1``), at path boundaries only (see
``map_pod_text``). Host folders should not contain whitespace or quotes: a mapped path lands
inside shell scripts as plain text.

Nothing here touches the API, the clock or a process: callers pass ``now`` and what they
observed, and get plain manifests back. ``process_pod_worker.py`` does the I/O.
"""

from __future__ import annotations

import ipaddress
import posixpath
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
VOLUMES_FOLDER = "volumes"  # <pod_dir>/volumes/<volume name>: the pod's emptyDir volumes
# A pod path inside text starts after one of these (or at the start of the text) ...
PATH_START_AFTER = frozenset(" \t\n\r'\"=:(<>;|&,")
# ... and ends before anything that cannot continue a file name (end, "/", whitespace, quotes, ...).
PATH_NAME_CHARACTER = re.compile(r"[\w.~+@%-]")
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
UNSUPPORTED_REASON = "ProcessBackedUnsupported"


# -- from pod spec to command line ------------------------------------------------------------


def map_pod_path(value: str, path_map: Mapping[str, Path]) -> str:
    """A whole path inside the pod -> the host path the harness maps it to; anything else unchanged.

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


def map_pod_text(text: str, path_map: Mapping[str, Path]) -> str:
    """Pod paths inside a string (an argument, a shell script, an env value) -> host paths.

    A text equal to an entry maps whole (that is how a bare command such as ``vllm`` maps).
    Otherwise every absolute entry maps where it appears at a path boundary: preceded by the start
    of the text, whitespace, a quote or one of ``= : ( < > ; | & ,``, and followed by the end,
    ``/`` or any character that cannot continue a file name (whitespace, quotes, ``:`` ...).
    Entries are tried longest first, and mapped text is never looked at again. So in
    ``local_dir='/models/model'`` and ``support=/adapters/support/v1`` the paths map, while
    ``/modelsX``, ``/models.bak``, ``/opt/models`` and ``hf://models/x`` stay as written.
    """
    if text in path_map:
        return str(path_map[text])
    entries = sorted(
        ((key.rstrip("/"), str(target)) for key, target in path_map.items() if key.startswith("/") and key.rstrip("/")),
        key=lambda entry: len(entry[0]),
        reverse=True,
    )
    out: list[str] = []
    copied = index = 0
    while index < len(text):
        if text[index] == "/" and (index == 0 or text[index - 1] in PATH_START_AFTER):
            match = next((entry for entry in entries if _path_at(text, index, entry[0])), None)
            if match is not None:
                out += [text[copied:index], match[1]]
                index = copied = index + len(match[0])
                continue
        index += 1
    out.append(text[copied:])
    return "".join(out)


def _path_at(text: str, index: int, path: str) -> bool:
    end = index + len(path)
    return text.startswith(path, index) and (end == len(text) or not PATH_NAME_CHARACTER.match(text[end]))


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
    """Map pod paths to host paths (``map_pod_text``) and a wildcard ``--host`` to the pod's own address.

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
                rewritten.append(f"{flag}={map_pod_text(value, path_map)}")
        else:
            rewritten.append(map_pod_text(arg, path_map))
        previous = arg
    return rewritten


def container_environment(
    container: Manifest, field_values: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """(the container's ``env`` in order, as the pod sees it; names this kubelet cannot resolve).

    Plain values and ``fieldRef``s to the pod's own fields (``field_values``, e.g.
    ``status.podIP``) are resolved; Secrets and ConfigMaps are not. Paths are not mapped here:
    ``$(VAR)`` references expand to what the pod would see, and the result is mapped once.
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
    base: Mapping[str, str],
    node_extra: Mapping[str, str],
    container: Mapping[str, str],
    path_map: Mapping[str, Path] | None = None,
) -> dict[str, str]:
    """A pod process' environment: the kubelet's base (PATH, HOME, HOSTNAME), then what the harness
    adds on this node (``ProcessBackedConfig.extra_env``), then the container's own ``env``, which wins.

    The container's values name pod paths and are mapped with ``path_map``; the base and the
    node's values are host values already.
    """
    mapped = {name: map_pod_text(value, path_map) for name, value in container.items()} if path_map else container
    return {**base, **node_extra, **mapped}


def container_command(
    container: Manifest, path_map: Mapping[str, Path], pod_ip: str, environment: Mapping[str, str] | None = None
) -> list[str]:
    """The argv a container runs as a local process; empty when the pod names no command
    (the image's entrypoint cannot be known without the image).

    ``$(VAR)`` references expand first, with the pod's view of ``environment``; paths map after.
    """
    env = environment if environment is not None else container_environment(container)[0]
    command = [expand_references(part, env) for part in container.get("command") or []]
    args = [expand_references(part, env) for part in container.get("args") or []]
    if not command:
        return []
    return [map_pod_text(command[0], path_map), *rewrite_args([*command[1:], *args], path_map, pod_ip)]


# -- volumes ----------------------------------------------------------------------------------


def pod_volume_folders(spec: Manifest, pod_dir: Path) -> dict[str, Path]:
    """The pod's ``emptyDir`` volumes -> their host folders (``<pod_dir>/volumes/<name>``).

    Other volume kinds (persistentVolumeClaim, configMap, secret, projected ...) are not backed.
    """
    return {
        str(volume["name"]): pod_dir / VOLUMES_FOLDER / str(volume["name"])
        for volume in spec.get("volumes") or []
        if "emptyDir" in volume
    }


def container_mount_folders(container: Manifest, volume_folders: Mapping[str, Path]) -> dict[str, Path]:
    """The container's mounts of backed volumes: mount path -> host folder (``subPath`` below the volume)."""
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        folder = volume_folders.get(str(mount["name"]))
        mount_path = str(mount["mountPath"]).rstrip("/")
        if folder is None or not mount_path:
            continue
        sub_path = posixpath.normpath(str(mount.get("subPath") or "."))
        if sub_path.startswith(("/", "..")):  # the API refuses these; never leave the volume
            continue
        mounts[mount_path] = folder if sub_path == "." else folder / sub_path
    return mounts


def container_path_map(static: Mapping[str, Path], mounts: Mapping[str, Path]) -> dict[str, Path]:
    """One container's path map: its volume mounts plus the harness' static entries.

    Lookups take the longest matching entry, so a static file (``/models/tiny.gguf``) still beats a
    ``/models`` mount; a static entry for the mount path itself replaces the mount.
    """
    static_paths = {key.rstrip("/") for key in static}
    return {**{path: folder for path, folder in mounts.items() if path not in static_paths}, **static}


def unbacked_volumes(spec: Manifest, static: Mapping[str, Path], volume_folders: Mapping[str, Path]) -> list[str]:
    """Volumes mounted into a container this kubelet runs (init containers and the first container)
    that have no host folder and no static entry at, above or below the mount path."""
    static_paths = [key.rstrip("/") for key in static if key.startswith("/")]
    names: set[str] = set()
    for container in [*(spec.get("initContainers") or []), *spec["containers"][:1]]:
        for mount in container.get("volumeMounts") or []:
            name, mount_path = str(mount["name"]), str(mount["mountPath"]).rstrip("/")
            covered = any(
                path == mount_path or mount_path.startswith(path + "/") or path.startswith(mount_path + "/")
                for path in static_paths
            )
            if name not in volume_folders and not covered:
                names.add(name)
    return sorted(names)


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
