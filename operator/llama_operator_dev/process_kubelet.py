"""The process-backed kubelet: real local processes for the pods of one CPU node pool.

KWOK plays the kubelet of the fake GPU pools: their pods are Running whatever their args say.
For the nodes labelled ``llamaops.io/process-backed=true`` (KWOK is told to leave them alone)
this component plays the kubelet instead, so a llama.cpp pod the operator renders really runs:

- it keeps those nodes Ready: a node status with Ready conditions and a ``kube-node-lease``
  Lease per node, renewed every ``lease_renew_seconds``;
- it watches the pods bound to them and runs each pod's first container as a local process:
  the container's command and args, with pod paths mapped to host files by ``path_map`` (for
  example ``/app/llama-server`` to a built binary, ``/models`` to a folder of generated GGUF
  files), ``--host 0.0.0.0`` bound to the pod's own loopback address (one per pod, from
  ``pod_network``; ports are kept, as each pod has its own address);
- each ``emptyDir`` volume of a pod is a host folder under the pod's folder, mapped at its
  containers' mount paths (a static ``path_map`` entry for the same or a longer path wins); pod
  paths are also mapped inside command/args strings and env values, so a ``sh -c`` script works;
- each ``persistentVolumeClaim`` volume is the folder of the claim's PV (hostPath or local; the
  dev cluster's default StorageClass provisions ``/tmp/hostpath_pv/<uuid>``, ``storage.py``),
  mapped the same way; the pod waits (Pending, ``ContainerCreating``, a ``FailedMount`` event
  naming the claim) until the claim is Bound. ``readOnly`` is not enforced (see
  ``process_pod_paths.py``), and a claim's folder is never removed with a pod;
- with ``server_files``, an HTTPS server on 127.0.0.1 serves ``containerLogs`` from the workers'
  log files, and each node's ``daemonEndpoints.kubeletEndpoint.Port`` names it: the apiserver
  proxies ``pods/log`` (``kubectl logs``, ``read_namespaced_pod_log``) there
  (``process_kubelet_logs.py``);
- init containers run first, in order, each to completion (a failing one again with the
  kubelet's back-off; with ``restartPolicy: Never`` the pod fails), and the pod stays Pending,
  ``Initialized=False``, until they all completed;
- readiness comes from the pod's own startup/readiness/liveness probes, run against the process;
- an exit is reported as ``terminated`` (exit code, the last log lines as message) and the
  container restarts with the kubelet's back-off (10 s, 20 s, ... capped), ``CrashLoopBackOff``
  in between;
- a deleted pod gets its preStop hook (sleep or HTTP GET), SIGTERM, SIGKILL after the grace
  period, the kubelet's final delete (grace 0), and its volume folders are removed.

Status goes through the pods/status subresource, as a kubelet writes it. ``stop()`` ends every
process it started.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kubernetes.client import ApiClient

from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet_api import API_ERRORS, KubeletApi, Manifest
from llama_operator_dev.process_kubelet_logs import KubeletLogServer, KubeletServerFiles, PodLogSource
from llama_operator_dev.process_pod_worker import PodWorker, ProbeRecord, WorkerSettings
from llama_operator_dev.process_pods import LoopbackAllocator, node_lease, node_status_patch

LOGGER = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 5
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"  # the mark of a KWOK fake node (see pools.node_manifest)
TERMINAL_PHASES = ("Succeeded", "Failed")


def _default_node_labels() -> dict[str, str]:
    return {PROCESS_BACKED_LABEL: "true"}


@dataclass(frozen=True)
class ProcessBackedConfig:
    """What the harness tells the process-backed kubelet.

    ``path_map`` maps paths inside a pod to host paths: an exact file (``/models/tiny.gguf``) or a
    folder and everything below it (``/adapters``); it comes before a pod's own emptyDir volume
    mounted at the same path, and the longest match wins. ``extra_env`` is the environment this node adds
    to every pod process (say, where a stand-in finds its files); a pod's own ``env`` wins.
    """

    path_map: Mapping[str, Path]
    extra_env: Mapping[str, str] = field(default_factory=dict)
    node_labels: Mapping[str, str] = field(default_factory=_default_node_labels)
    pod_network: str = "127.0.1.0/24"
    host_ip: str = "127.0.0.1"
    restart_backoff_initial_seconds: float = 10.0
    restart_backoff_max_seconds: float = 300.0
    # Shortens probe periods longer than this (tests: the rendered 10 s startup period is slow
    # for a model that loads in a second); thresholds stay as rendered.
    max_probe_period_seconds: float | None = None
    lease_renew_seconds: float = 10.0
    lease_duration_seconds: int = 40
    node_status_seconds: float = 60.0
    resync_seconds: float = 2.0
    termination_message_lines: int = 20
    stop_grace_seconds: float = 5.0  # SIGTERM -> SIGKILL when the harness itself stops
    kubelet_version: str = "v0.0.0-process-backed"

    @property
    def node_selector(self) -> str:
        return ",".join(f"{key}={value}" for key, value in sorted(self.node_labels.items()))


def _now(micro: bool = False) -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


class ProcessKubelet:
    """Plays the kubelet of the labelled nodes until ``stop()``."""

    def __init__(
        self,
        new_api_client: Callable[[], ApiClient],
        config: ProcessBackedConfig,
        work_dir: Path,
        server_files: KubeletServerFiles | None = None,
    ) -> None:
        self.config = config
        self.log_server = (
            KubeletLogServer(server_files, self.log_source, host=config.host_ip) if server_files is not None else None
        )
        self.work_dir = work_dir
        self.node_names: list[str] = []
        self._new_api_client = new_api_client
        self._api_clients: list[ApiClient] = []
        self._watch_apis: list[KubeletApi] = []
        self._api: KubeletApi | None = None
        self._node_uids: dict[str, str] = {}
        self._addresses = LoopbackAllocator(config.pod_network)
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._records: list[ProbeRecord] = []
        self._records_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync_thread: threading.Thread | None = None
        self._settings = WorkerSettings(
            path_map={key: Path(value) for key, value in config.path_map.items()},
            extra_env=dict(config.extra_env),
            host_ip=config.host_ip,
            backoff_initial_seconds=config.restart_backoff_initial_seconds,
            backoff_max_seconds=config.restart_backoff_max_seconds,
            max_probe_period_seconds=config.max_probe_period_seconds,
            termination_message_lines=config.termination_message_lines,
            stop_grace_seconds=config.stop_grace_seconds,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Find the nodes, report them Ready once, then heartbeat, watch and run pods in threads."""
        if self._api is not None:
            raise RuntimeError("the process-backed kubelet was already started")
        self._api = self._client()
        nodes = self._api.list_nodes(self.config.node_selector)
        self._node_uids = {node["metadata"]["name"]: node["metadata"]["uid"] for node in nodes}
        self.node_names = sorted(self._node_uids)
        if not self.node_names:
            LOGGER.warning(
                "no node is labelled %s: the process-backed kubelet has nothing to run", self.config.node_selector
            )
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.log_server is not None:
            self.log_server.start()
        for node_name in self.node_names:  # these nodes run real containers now: not KWOK fakes
            self._api.patch_node(node_name, {"metadata": {"annotations": {FAKE_NODE_ANNOTATION: None}}})
        self._heartbeat(node_status=True)
        self._spawn(self._heartbeat_loop, "process-kubelet heartbeat")
        self._sync_thread = self._spawn(self._sync_loop, "process-kubelet sync")
        for node_name in self.node_names:
            watch_api = self._client()
            self._watch_apis.append(watch_api)
            self._spawn(functools.partial(self._watch_loop, node_name, watch_api), f"process-kubelet watch {node_name}")
        LOGGER.info(
            "process-backed kubelet runs the pods of %s (pod addresses from %s)",
            ", ".join(self.node_names),
            self.config.pod_network,
        )

    def stop(self) -> None:
        """Stop every pod process (SIGTERM, SIGKILL after ``stop_grace_seconds``) and every thread."""
        self._stop.set()
        self._wake.set()
        for watch_api in self._watch_apis:
            watch_api.interrupt_watches()
        if self._sync_thread is not None:
            self._sync_thread.join()  # no worker starts after this
        workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(self.config.stop_grace_seconds + 5.0)
        for thread in self._threads:
            thread.join(WATCH_TIMEOUT_SECONDS + 1.0)
        if self.log_server is not None:
            self.log_server.stop()
        for api_client in self._api_clients:
            api_client.close()  # type: ignore[no-untyped-call]
        self._threads.clear()
        self._api_clients.clear()
        self._watch_apis.clear()
        LOGGER.info("process-backed kubelet stopped (%d pods were running)", len(workers))

    # -- what callers read -------------------------------------------------------------------

    def probe_records(self, pod: str | None = None) -> list[ProbeRecord]:
        """Every probe run so far (``pod``: only those of ``namespace/name``), oldest first."""
        with self._records_lock:
            return [record for record in self._records if pod is None or record.pod == pod]

    def pod_log_dir(self, namespace: str, name: str) -> Path | None:
        """Where a running pod's container logs go (``<container>.<restart>.log``)."""
        for worker in list(self._workers.values()):
            if (worker.namespace, worker.name) == (namespace, name):
                return worker.pod_dir
        return None

    def log_source(self, namespace: str, name: str) -> PodLogSource | None:
        """What the log server needs of a pod this kubelet runs (or ran and still has); None for another pod."""
        for worker in list(self._workers.values()):
            if (worker.namespace, worker.name) == (namespace, name):
                return PodLogSource(
                    pod_dir=worker.pod_dir,
                    containers=worker.container_names,
                    waiting_reasons=worker.waiting_reasons(),
                    is_running=worker.is_running,
                )
        return None

    # -- threads -----------------------------------------------------------------------------

    def _client(self) -> KubeletApi:
        api_client = self._new_api_client()
        self._api_clients.append(api_client)
        return KubeletApi(api_client)

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _heartbeat(self, *, node_status: bool) -> None:
        assert self._api is not None
        for node_name in self.node_names:
            try:
                if node_status:
                    port = self.log_server.port if self.log_server is not None else None
                    patch = node_status_patch(
                        self.config.host_ip, node_name, _now(), self.config.kubelet_version, kubelet_port=port
                    )
                    self._api.patch_node_status(node_name, patch)
                lease = node_lease(
                    node_name, self._node_uids[node_name], self.config.lease_duration_seconds, _now(micro=True)
                )
                self._api.apply_lease(lease)
            except API_ERRORS as error:
                LOGGER.warning("heartbeat of node %s failed: %s", node_name, error)

    def _heartbeat_loop(self) -> None:
        since_status = 0.0
        while not self._stop.wait(self.config.lease_renew_seconds):
            since_status += self.config.lease_renew_seconds
            report_status = since_status >= self.config.node_status_seconds
            if report_status:
                since_status = 0.0
            self._heartbeat(node_status=report_status)

    def _watch_loop(self, node_name: str, api: KubeletApi) -> None:
        """Wake the sync loop on every event of a pod bound to ``node_name``."""
        while not self._stop.is_set():
            try:
                for _event in api.watch_pods_on(node_name, WATCH_TIMEOUT_SECONDS):
                    self._wake.set()
                    if self._stop.is_set():
                        return
            except API_ERRORS as error:
                if not self._stop.is_set():
                    LOGGER.debug("watch of pods on %s ended: %s", node_name, error)
                    self._stop.wait(1.0)

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.resync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                pods = [pod for node_name in self.node_names for pod in self._list_pods(node_name)]
            except API_ERRORS as error:
                LOGGER.warning("listing the pods of the process-backed nodes failed: %s", error)
                continue
            self._sync(pods)

    def _list_pods(self, node_name: str) -> list[Manifest]:
        assert self._api is not None
        return self._api.list_pods_on(node_name)

    def _sync(self, pods: list[Manifest]) -> None:
        """Start a worker for every new pod, tell workers what changed, forget pods that are gone."""
        assert self._api is not None
        listed: set[str] = set()
        for pod in pods:
            meta = pod["metadata"]
            uid = str(meta["uid"])
            listed.add(uid)
            worker = self._workers.get(uid)
            if worker is not None:
                worker.observe(pod)
                continue
            if uid in self._finished:
                continue
            if meta.get("deletionTimestamp") is not None:  # deleted before it ever ran here
                try:
                    self._api.delete_pod_now(meta["namespace"], meta["name"], uid)
                except API_ERRORS as error:
                    LOGGER.warning("deleting pod %s/%s failed: %s", meta["namespace"], meta["name"], error)
                continue
            if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                continue
            self._start_worker(pod)
        for uid, worker in list(self._workers.items()):
            if uid not in listed:
                worker.forget()
            if worker.finished.is_set():
                self._addresses.release(worker.pod_ip)
                self._finished.add(uid)
                del self._workers[uid]

    def _start_worker(self, pod: Manifest) -> None:
        assert self._api is not None
        meta = pod["metadata"]
        pod_ip = self._addresses.allocate()
        pod_dir = self.work_dir / f"{meta['namespace']}_{meta['name']}_{str(meta['uid'])[:8]}"
        worker = PodWorker(
            pod, pod_ip=pod_ip, settings=self._settings, api=self._api, pod_dir=pod_dir, on_probe=self._record
        )
        self._workers[worker.uid] = worker
        LOGGER.info("pod %s/%s on %s gets address %s", meta["namespace"], meta["name"], pod["spec"]["nodeName"], pod_ip)
        worker.start()

    def _record(self, record: ProbeRecord) -> None:
        with self._records_lock:
            self._records.append(record)
