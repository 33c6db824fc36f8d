"""One pod of the process-backed pool, run by its own thread as a kubelet would run it.

The worker gives the pod's ``emptyDir`` volumes host folders (``<pod_dir>/volumes/<name>``)
and its ``persistentVolumeClaim`` volumes the folders of their PVs: until every claim is Bound
(to a PV with a hostPath or local path) the pod stays Pending, its containers waiting
(``ContainerCreating``) with the reason as message, and a ``FailedMount`` event names the claim;
it looks again every few seconds. Then it runs the init containers one after the other, each to completion (a failing one again with
back-off, or the pod fails when it never restarts), then starts the pod's first container as a
local process (paths mapped, bound to the pod's loopback address), runs its startup, readiness
and liveness probes against it, restarts it with back-off when it exits, and on deletion runs
the preStop hook, sends SIGTERM, SIGKILL after the grace period, deletes the pod for good and
removes its emptyDir volumes (never a claim's folder: that lives on with the PV). Everything it
learns goes to the pod's status subresource.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from llama_operator_dev.process_kubelet_api import API_ERRORS, HTTP_NOT_FOUND, KubeletApi
from llama_operator_dev.process_pod_paths import (
    VOLUMES_FOLDER,
    claim_volume_folder,
    container_command,
    container_environment,
    container_mount_folders,
    container_path_map,
    pod_claims,
    pod_volume_folders,
    process_environment,
    unbacked_volumes,
)
from llama_operator_dev.process_pods import (
    CRASH_LOOP_BACK_OFF,
    POD_INITIALIZING,
    Terminated,
    crashes_after_exit,
    exit_reason,
    initial_views,
    is_sidecar,
    pod_event,
    pod_status,
    restart_backoff_seconds,
    should_restart,
    should_restart_init,
    sidecar_refused,
    termination_message,
    unmet_readiness_gates,
)
from llama_operator_dev.process_probes import ContainerProbes, ProbeKind, probe_target, run_probe
from llama_operator_dev.processes import signal_group, tail_lines

LOGGER = logging.getLogger(__name__)

Manifest = dict[str, Any]
MIN_KILL_GRACE_SECONDS = 2.0  # the kubelet's minimum between SIGTERM and SIGKILL
EXIT_POLL_SECONDS = 0.25
STATUS_RETRY_SECONDS = 1.0
START_ERROR_EXIT_CODE = 128
CLAIM_RETRY_SECONDS = 2.0  # how often a pod waiting on its claims looks again


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_status(returncode: int) -> int:
    """A shell-style exit status: killed by signal N reads as 128 + N, as container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class ProbeRecord:
    """One probe the kubelet ran, and the container readiness it reported afterwards."""

    pod: str  # namespace/name
    uid: str
    probe: ProbeKind
    ok: bool
    answer: str
    container_ready: bool
    wall_time: float


@dataclass(frozen=True)
class WorkerSettings:
    path_map: dict[str, Path]
    host_ip: str
    backoff_initial_seconds: float
    backoff_max_seconds: float
    max_probe_period_seconds: float | None
    termination_message_lines: int
    stop_grace_seconds: float
    extra_env: dict[str, str] = field(default_factory=dict)


class PodWorker:
    """Runs one pod until it is deleted (or the harness stops)."""

    def __init__(
        self,
        pod: Manifest,
        *,
        pod_ip: str,
        settings: WorkerSettings,
        api: KubeletApi,
        pod_dir: Path,
        on_probe: Callable[[ProbeRecord], None],
    ) -> None:
        meta = pod["metadata"]
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        self.pod_ip = pod_ip
        self.pod_dir = pod_dir
        self._settings = settings
        self._api = api
        self._on_probe = on_probe
        self._lock = threading.Lock()
        self._pod = pod
        self._wake = threading.Event()
        self._deleting = False
        self._gone = False
        self._shutdown = False
        self._deleted = False  # the final delete went through (or the pod vanished): its volumes go
        self._process: subprocess.Popen[bytes] | None = None
        self._process_container = ""  # the name of the container whose process runs
        self._start_time = now_rfc3339()
        spec = pod["spec"]
        self._init_names = [str(c["name"]) for c in spec.get("initContainers") or []]
        self._main_name = str(spec["containers"][0]["name"])
        self._other_names = [str(c["name"]) for c in spec["containers"][1:]]
        self._views = initial_views(spec)  # container name -> its status, init containers included
        self._volume_folders = pod_volume_folders(spec, pod_dir)  # claims join once they are Bound
        self._claims = pod_claims(spec)
        self._conditions: list[Manifest] = []  # the kubelet's own conditions, as last written
        self._written: Manifest | None = None
        self._thread = threading.Thread(target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True)
        self.finished = threading.Event()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- control from the kubelet's sync loop --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def observe(self, pod: Manifest) -> None:
        """The pod as the API last listed it; a deletion timestamp starts the termination."""
        with self._lock:
            self._pod = pod
            deleting = pod["metadata"].get("deletionTimestamp") is not None
        if deleting and not self._deleting:
            self._deleting = True
            self._wake.set()

    def forget(self) -> None:
        """The pod is gone from the API (force-deleted): stop its process without a preStop."""
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        """The harness stops: end the process quickly, write nothing more."""
        self._shutdown = True
        self._wake.set()

    def join(self, timeout_seconds: float) -> None:
        self._thread.join(timeout_seconds)

    # -- what the log server reads -------------------------------------------------------------

    @property
    def container_names(self) -> tuple[str, ...]:
        return (*self._init_names, self._main_name, *self._other_names)

    def waiting_reasons(self) -> dict[str, str]:
        """Container -> why it waits (its waiting reason), "" for one that runs or ran."""
        views = dict(self._views)
        return {
            name: (view.reason or "ContainerCreating") if view.state == "waiting" else ""
            for name, view in views.items()
        }

    def is_running(self, container: str) -> bool:
        process = self._process
        return self._process_container == container and process is not None and process.poll() is None

    # -- the pod's life ------------------------------------------------------------------------

    def _snapshot(self) -> Manifest:
        with self._lock:
            return self._pod

    def _interrupted(self) -> bool:
        return self._deleting or self._gone or self._shutdown

    def _wait(self, seconds: float | None) -> bool:
        """Sleep up to ``seconds`` (None: until interrupted), retrying a pending status write; True when interrupted."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._interrupted():
            remaining = STATUS_RETRY_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.wait(min(remaining, STATUS_RETRY_SECONDS))
            self._wake.clear()
            self._write_status()
        return True

    def _set(self, name: str, **changes: Any) -> None:
        self._views[name] = replace(self._views[name], **changes)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._kill(self._settings.stop_grace_seconds)
            if self._deleted or (self._gone and not self._shutdown):
                self._remove_volumes()
            self.finished.set()

    def _serve(self) -> None:
        spec = self._snapshot()["spec"]
        main = spec["containers"][0]
        self._write_status()
        restart_policy = str(spec.get("restartPolicy", "Always"))
        if self._mount_claims() and self._make_volumes(spec) and self._initialize(spec, restart_policy):
            exited = self._run_with_restarts(main, lambda code: should_restart(restart_policy, code), init=False)
            if exited is not None:  # it will not run again: the pod has finished
                self._wait(None)
        if self._shutdown:
            return
        self._terminate_for_deletion(main)

    def _initialize(self, spec: Manifest, restart_policy: str) -> bool:
        """Run the init containers in order, each to completion; False when the pod will not get past them."""
        for container in spec.get("initContainers") or []:
            name = str(container["name"])
            if is_sidecar(container):
                LOGGER.warning("%s: init container %s is a sidecar; not run, the pod waits", self.key, name)
                self._views[name] = sidecar_refused(container)
                self._wait(None)
                return False
            exited = self._run_with_restarts(
                container, lambda code: should_restart_init(restart_policy, code), init=True
            )
            if exited is None:
                return False
            if exited.exit_code != 0:  # restartPolicy Never: the pod has failed
                LOGGER.info("%s: init container %s failed with %d; the pod failed", self.key, name, exited.exit_code)
                self._wait(None)
                return False
        return True

    def _run_with_restarts(
        self, container: Manifest, restart: Callable[[int], bool], *, init: bool
    ) -> Terminated | None:
        """Run the container, again with back-off while ``restart(exit code)``: its last exit, None when interrupted."""
        name = str(container["name"])
        crashes = 0
        restarts = 0
        while not self._interrupted():
            began = time.monotonic()
            exited = self._run_container(container, restarts, init=init)
            if exited is None:
                return None
            done = init and exited.exit_code == 0  # a completed init container reads as ready
            self._set(name, state="terminated", terminated=exited, started=False, ready=done)
            self._write_status()
            if not restart(exited.exit_code):
                return exited
            crashes = crashes_after_exit(crashes, time.monotonic() - began, self._settings.backoff_max_seconds)
            delay = restart_backoff_seconds(
                crashes, self._settings.backoff_initial_seconds, self._settings.backoff_max_seconds
            )
            LOGGER.info("%s: container %s exited with %d; restarting in %.0fs", self.key, name, exited.exit_code, delay)
            self._set(
                name,
                state="waiting",
                reason=CRASH_LOOP_BACK_OFF,
                message=f"back-off {delay:.0f}s restarting failed container={name} pod={self.name}_{self.namespace}({self.uid})",
                last_terminated=exited,
                terminated=None,
                pid=None,
            )
            self._write_status()
            if self._wait(delay):
                return None
            restarts += 1
        return None

    def _run_container(self, container: Manifest, restarts: int, *, init: bool) -> Terminated | None:
        """Run one instance of the container: its exit, or None when the pod is being deleted."""
        name = str(container["name"])
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": str(self._snapshot()["spec"].get("nodeName", "")),
            "status.podIP": self.pod_ip,
            "status.hostIP": self._settings.host_ip,
        }
        environment, unresolved = container_environment(container, fields)
        if unresolved:
            LOGGER.warning("%s: env %s not resolved (Secrets/ConfigMaps are not read here)", self.key, unresolved)
        path_map = self._path_map(container)
        argv = container_command(container, path_map, self.pod_ip, environment)
        started_at = now_rfc3339()
        log_path = self.pod_dir / f"{name}.{restarts}.log"
        if not argv:
            message = "no command in the pod spec: the process-backed kubelet cannot know an image's entrypoint"
            return Terminated(START_ERROR_EXIT_CODE, "StartError", message, started_at, now_rfc3339())
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.pod_dir), "HOSTNAME": self.name}
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        try:
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=process_environment(base_env, self._settings.extra_env, environment, path_map),
                    cwd=self.pod_dir,
                    start_new_session=True,
                )
        except OSError as error:
            message = f"failed to start {argv[0]}: {error}"
            return Terminated(START_ERROR_EXIT_CODE, "StartError", message, started_at, now_rfc3339())
        LOGGER.info("%s: started %s (pid %d) on %s: %s", self.key, name, process.pid, self.pod_ip, " ".join(argv))
        self._process, self._process_container = process, name
        # A running init container has started (it has no probes) and is not ready until it completed.
        self._set(
            name,
            state="running",
            started_at=started_at,
            started=init,
            ready=False,
            restart_count=restarts,
            pid=process.pid,
        )
        self._write_status()
        outcome = self._probe_until_exit(container, process, probed=not init)
        if outcome is None:
            return None
        if outcome:  # a startup or liveness probe failed: the kubelet kills the container
            LOGGER.info("%s: %s; killing the container", self.key, outcome)
            self._kill(self._settings.stop_grace_seconds)
        code = exit_status(process.wait())
        self._process = None
        tail = tail_lines(log_path, self._settings.termination_message_lines)
        message = termination_message(f"{outcome}\n{tail}" if outcome else tail)
        return Terminated(code, exit_reason(code), message, started_at, now_rfc3339(), f"process://{process.pid}")

    # -- volumes -------------------------------------------------------------------------------

    def _mount_claims(self) -> bool:
        """Wait until every claim of the pod is Bound to a PV with a host folder; False when interrupted."""
        told = ""
        while True:
            waiting: list[str] = []
            for volume_name, claim_name in sorted(self._claims.items()):
                folder = self._claim_folder(claim_name)
                if isinstance(folder, Path):
                    self._volume_folders[volume_name] = folder
                else:
                    waiting.append(folder)
            message = "; ".join(waiting)
            if message != told:
                self._tell_waiting(message)
                told = message
            if not waiting:
                return True
            if self._wait(CLAIM_RETRY_SECONDS):
                return False

    def _claim_folder(self, claim_name: str) -> Path | str:
        """The host folder of one claim, or why there is none yet."""
        try:
            claim = self._api.read(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim_name}")
            volume_name = str(((claim or {}).get("spec") or {}).get("volumeName") or "")
            volume = self._api.read(f"/api/v1/persistentvolumes/{volume_name}") if volume_name else None
        except API_ERRORS as error:
            return f'reading persistentvolumeclaim "{claim_name}" failed: {error}'
        folder = claim_volume_folder(claim_name, claim, volume)
        if isinstance(folder, Path) and not folder.is_dir():
            return f'the folder {folder} of persistentvolume "{volume_name}" (claim "{claim_name}") does not exist'
        return folder

    def _tell_waiting(self, message: str) -> None:
        """Show why the pod waits on its volumes (or that it no longer does) on the waiting containers and as an event."""
        for name, view in list(self._views.items()):
            if view.state == "waiting" and view.reason in ("", "ContainerCreating", POD_INITIALIZING):
                self._set(name, message=message)
        self._write_status()
        if not message:
            LOGGER.info("%s: volumes %s mounted", self.key, sorted(self._claims))
            return
        LOGGER.info("%s: waiting for its volumes: %s", self.key, message)
        pod = self._snapshot()
        node_name = str(pod["spec"].get("nodeName", ""))
        event = pod_event(
            pod, node_name, "FailedMount", f"Unable to attach or mount volumes: {message}", now=now_rfc3339()
        )
        try:
            self._api.create_event(event)
        except API_ERRORS as error:
            LOGGER.warning("%s: the FailedMount event was not written: %s", self.key, error)

    def _make_volumes(self, spec: Manifest) -> bool:
        for folder in self._volume_folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        unbacked = unbacked_volumes(spec, self._settings.path_map, self._volume_folders)
        if unbacked:
            LOGGER.warning(
                "%s: volumes %s are neither emptyDir nor a claim and no path_map entry covers their mounts: left unmapped",
                self.key,
                unbacked,
            )
        return True

    def _path_map(self, container: Manifest) -> dict[str, Path]:
        """The container's path map: its emptyDir mounts (made now: a subPath may be new) and the static entries."""
        mounts = container_mount_folders(container, self._volume_folders)
        for folder in mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        return container_path_map(self._settings.path_map, mounts)

    def _remove_volumes(self) -> None:
        """Remove the emptyDir folders (all under ``<pod_dir>/volumes``); claims' folders live elsewhere and stay."""
        volumes = self.pod_dir / VOLUMES_FOLDER
        try:
            shutil.rmtree(volumes)
        except FileNotFoundError:
            return
        except OSError as error:
            LOGGER.warning("%s: removing the pod's volumes in %s failed: %s", self.key, volumes, error)
            return
        LOGGER.info("%s: removed the pod's volumes", self.key)

    def _probe_until_exit(self, container: Manifest, process: subprocess.Popen[bytes], *, probed: bool) -> str | None:
        """Probe until the process exits ("") or a probe gives up (why); None when the pod is being deleted.

        Unless ``probed`` (init containers), only wait for the exit.
        """
        name = str(container["name"])
        probes = ContainerProbes.for_container(
            container if probed else {"name": name},
            self.pod_ip,
            time.monotonic(),
            self._settings.max_probe_period_seconds,
        )
        while True:
            if probed:
                self._set(name, started=probes.started, ready=probes.ready)
            self._write_status()
            if process.poll() is not None:
                return ""
            if self._interrupted():
                return None
            for kind in probes.due_now(time.monotonic()):
                ok, answer = run_probe(probes.targets[kind])
                gave_up = probes.observe(kind, ok, time.monotonic())
                self._record(kind, ok, answer, probes.ready)
                if gave_up:
                    return f"{gave_up}: {answer}"
            next_due = probes.next_due()
            sleep = EXIT_POLL_SECONDS if next_due is None else min(next_due - time.monotonic(), EXIT_POLL_SECONDS)
            self._wake.wait(max(sleep, 0.01))
            self._wake.clear()

    def _record(self, kind: ProbeKind, ok: bool, answer: str, ready: bool) -> None:
        self._on_probe(ProbeRecord(self.key, self.uid, kind, ok, answer, ready, time.time()))

    # -- termination ---------------------------------------------------------------------------

    def _terminate_for_deletion(self, main: Manifest) -> None:
        """preStop (of the main container), SIGTERM, SIGKILL after the grace period, then the final delete.

        An init container being run when the deletion came is stopped the same way, without a preStop.
        """
        process = self._process
        if self._gone:
            self._kill(MIN_KILL_GRACE_SECONDS)
            return
        pod = self._snapshot()
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        deadline = time.monotonic() + float(grace)
        if process is not None and process.poll() is None:
            name = self._process_container
            self._set(name, ready=False)
            self._write_status()
            if name == self._main_name:
                self._pre_stop(main, deadline)
            if self._shutdown:
                return
            LOGGER.info("%s: SIGTERM to %s, pid %d (grace %ss)", self.key, name, process.pid, grace)
            self._kill(max(deadline - time.monotonic(), MIN_KILL_GRACE_SECONDS))
            code = exit_status(process.wait())
            started_at = self._views[name].started_at
            done = Terminated(code, exit_reason(code), "", started_at, now_rfc3339(), f"process://{process.pid}")
            self._set(name, state="terminated", terminated=done, started=False, ready=False)
            self._write_status()
        while not self._shutdown:
            try:
                self._api.delete_pod_now(self.namespace, self.name, self.uid)
            except API_ERRORS as error:
                LOGGER.warning("%s: final delete failed (%s); retrying", self.key, error)
                time.sleep(STATUS_RETRY_SECONDS)
                continue
            LOGGER.info("%s: deleted", self.key)
            self._deleted = True
            return

    def _pre_stop(self, container: Manifest, deadline: float) -> None:
        hook = (container.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in hook:
            seconds = min(float(hook["sleep"].get("seconds", 0)), max(deadline - time.monotonic(), 0.0))
            LOGGER.info("%s: preStop sleep %.0fs", self.key, seconds)
            end = time.monotonic() + seconds
            while not self._shutdown and time.monotonic() < end:
                self._wake.wait(end - time.monotonic())
                self._wake.clear()
        elif "httpGet" in hook:
            probe = {"httpGet": hook["httpGet"], "timeoutSeconds": max(int(deadline - time.monotonic()), 1)}
            target = probe_target(probe, container, self.pod_ip)
            if target is not None:
                ok, answer = run_probe(target)
                LOGGER.info("%s: preStop %s -> %s", self.key, target.url, answer if ok else f"failed: {answer}")
        elif hook:
            LOGGER.warning(
                "%s: preStop %s is not supported by the process-backed kubelet; skipped", self.key, sorted(hook)
            )

    def _kill(self, grace_seconds: float) -> None:
        """SIGTERM the container's process group, SIGKILL it after ``grace_seconds``."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            LOGGER.warning("%s: pid %d ignored SIGTERM for %.0fs; killing it", self.key, process.pid, grace_seconds)
            signal_group(process.pid, signal.SIGKILL)
            process.wait()

    # -- status --------------------------------------------------------------------------------

    def _build_status(self) -> Manifest:
        pod = self._snapshot()
        return pod_status(
            pod_ip=self.pod_ip,
            host_ip=self._settings.host_ip,
            start_time=self._start_time,
            restart_policy=str(pod["spec"].get("restartPolicy", "Always")),
            init_containers=[self._views[name] for name in self._init_names],
            containers=[self._views[name] for name in [self._main_name, *self._other_names]],
            unmet_gates=unmet_readiness_gates(pod),
            previous_conditions=self._conditions,
            now=now_rfc3339(),
        )

    def _write_status(self) -> None:
        """PATCH pods/status when what we would report changed (retried on the next call after an error)."""
        if self._shutdown or self._gone:
            return
        status = self._build_status()
        if status == self._written:
            return
        try:
            self._api.patch_pod_status(self.namespace, self.name, status)
        except ApiException as error:
            if error.status == HTTP_NOT_FOUND:
                self.forget()
                return
            LOGGER.warning("%s: status write failed: %s", self.key, error)
            return
        except API_ERRORS as error:
            LOGGER.warning("%s: status write failed: %s", self.key, error)
            return
        self._conditions = status["conditions"]
        self._written = status
