"""A real, local Kubernetes control plane with fake GPU node pools.

``ControlPlane(workdir).start()`` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK as child processes bound to 127.0.0.1, registers the node pools and
returns when every node is Ready. The work dir keeps the certificates (``pki/``), one log per
component (``logs/``) and the admin ``kubeconfig``; etcd's data lives on tmpfs when there is
one. ``stop()`` (or leaving the ``with`` block) ends every process.

KWOK runs no container, so the harness also sets the operator's adapter readiness gates on the
pods KWOK runs (``fake_pod_gates.py``): the operator itself never knows a node is fake.

Two optional components: ``process_backed`` runs the pods of the process-backed pool as real
local processes (``process_kubelet.py``; KWOK then leaves those nodes alone), and
``prometheus=True`` starts a real Prometheus that scrapes annotated pods (``prometheus.py``), and
``lws=True`` the real LeaderWorkerSet controller with its CRDs and webhooks (``lws.py``), and ``keda=True``
the real KEDA operator and metrics adapter behind the apiserver's aggregation layer (``keda.py``).

Claims are provisioned for real: the controller-manager's own hostPath provisioner backs the
default StorageClass ``local-hostpath`` that ``start()`` creates (folders ``/tmp/hostpath_pv/<uuid>``,
reclaim Delete; ``storage.py``), and the process-backed kubelet mounts those claims.

Two opt-ins for measuring many objects: ``scale=ScaleSettings()`` raises the client limits and
worker counts of the controller-manager and scheduler (and the apiserver's in-flight limits),
and ``audit_log=True`` makes the apiserver write one JSON line per request to
``logs/audit.log`` (who, verb, resource, when; no bodies). ``client_kubeconfig(user)`` gives a
client its own identity, so its requests can be told apart in that log.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import yaml
from kubernetes.client import ApiClient, Configuration

from llama_operator_dev import components
from llama_operator_dev.api_readiness import wait_for_nodes_ready, wait_for_service_account
from llama_operator_dev.binaries import ControlPlaneBinaries, find_binaries
from llama_operator_dev.certs import (
    ADMIN,
    CONTROLLER_MANAGER,
    KUBELET_CLIENT,
    SCHEDULER,
    CertificateFiles,
    ClientIdentity,
    ClusterCertificates,
    generate_cluster_certificates,
    make_client_certificate,
)
from llama_operator_dev.dra import publish_gpu_devices
from llama_operator_dev.fake_pod_gates import FakePodGates
from llama_operator_dev.keda import KedaController
from llama_operator_dev.kubeconfig import write_kubeconfig
from llama_operator_dev.lws import LeaderWorkerSetController
from llama_operator_dev.pools import (
    DEFAULT_POOLS_FILE,
    create_pool_nodes,
    kwok_node_selector,
    load_node_pools,
    pool_node_manifests,
)
from llama_operator_dev.process_kubelet import ProcessBackedConfig, ProcessKubelet
from llama_operator_dev.process_kubelet_logs import KubeletServerFiles
from llama_operator_dev.processes import HealthEndpoint, ManagedProcess, client_tls_context
from llama_operator_dev.prometheus import Prometheus
from llama_operator_dev.storage import create_default_storage_class, remove_leftover_volume_folders

LOGGER = logging.getLogger(__name__)

KWOK_STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
TMPFS = Path("/dev/shm")  # noqa: S108 - a fresh mkdtemp() folder inside it, never a fixed name
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
STOP_GRACE_SECONDS = 10.0


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK node pools."""

    def __init__(
        self,
        workdir: Path,
        pools_file: Path | None = None,
        *,
        startup_timeout_seconds: float = 120.0,
        process_backed: ProcessBackedConfig | None = None,
        prometheus: bool = False,
        prometheus_scrape_interval_seconds: float = 1.0,
        scale: components.ScaleSettings | None = None,
        audit_log: bool = False,
        lws: bool = False,
        keda: bool = False,
    ) -> None:
        self.workdir = workdir.absolute()
        self.pools_file = pools_file if pools_file is not None else DEFAULT_POOLS_FILE
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ports = components.ControlPlanePorts.allocate()
        self.server_url = components.loopback_url("https", self.ports.apiserver)
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.ca_path = self.pki_dir / "ca.crt"
        self.node_names: list[str] = []
        self._processes: dict[str, ManagedProcess] = {}
        self._health: dict[str, HealthEndpoint] = {}
        self._etcd_data_dir: Path | None = None
        self._started_at = 0.0
        self.process_backed = process_backed
        self.process_kubelet: ProcessKubelet | None = None
        self.fake_pod_gates: FakePodGates | None = None
        self._prometheus_enabled = prometheus
        self._prometheus_scrape_interval_seconds = prometheus_scrape_interval_seconds
        self.prometheus: Prometheus | None = None
        self.scale = scale
        self.audit_log_path: Path | None = self.logs_dir / "audit.log" if audit_log else None
        self.opt_in_flags: dict[str, list[str]] = {}
        self._lws_enabled = lws
        self.lws: LeaderWorkerSetController | None = None
        self._keda_enabled = keda
        self.keda: KedaController | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every component in order, waiting for each to be healthy; stop all on failure."""
        if self._processes:
            raise RuntimeError(f"control plane in {self.workdir} was already started")
        self._started_at = time.monotonic()
        try:
            self._start_components()
        except BaseException:
            LOGGER.error("control plane failed to start; stopping what was started (logs in %s)", self.logs_dir)
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the components in reverse order (SIGTERM, then SIGKILL) and drop etcd's data."""
        for optional in (self.keda, self.lws, self.prometheus, self.process_kubelet, self.fake_pod_gates):
            if optional is not None:
                optional.stop()
        if "kube-apiserver" in self.running_components():
            with self.new_api_client() as api_client:
                remove_leftover_volume_folders(api_client)
        for name in reversed(COMPONENTS):
            process = self._processes.get(name)
            if process is None:
                continue
            exit_code = process.stop(STOP_GRACE_SECONDS)
            LOGGER.info("stopped %s (pid %s, exit status %s)", name, process.pid, exit_code)
        if self._etcd_data_dir is not None:
            shutil.rmtree(self._etcd_data_dir, ignore_errors=True)
            self._etcd_data_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what callers read -----------------------------------------------------------------

    @property
    def pids(self) -> dict[str, int]:
        """Pid of every component started so far (kept after ``stop()``, for checks)."""
        return {name: process.pid for name, process in self._processes.items() if process.pid is not None}

    def running_components(self) -> list[str]:
        return [name for name, process in self._processes.items() if process.is_running()]

    def logs_tail(self, component: str, lines: int = 50) -> str:
        """The last ``lines`` lines of one component's log."""
        if component not in COMPONENTS:
            raise KeyError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
        process = self._processes.get(component)
        if process is None:
            return ""
        return process.log_tail(lines)

    def new_api_client(self) -> ApiClient:
        """A ``kubernetes`` client authenticated as the cluster admin (the same identity as ``kubeconfig``)."""
        configuration = Configuration(
            host=self.server_url,
            ssl_ca_cert=str(self.ca_path),
            cert_file=str(self.pki_dir / "admin.crt"),
            key_file=str(self.pki_dir / "admin.key"),
        )
        return ApiClient(configuration)

    def client_kubeconfig(self, user: str, groups: Sequence[str] = ("system:masters",)) -> Path:
        """A kubeconfig for another client identity (CN ``user``, O ``groups``) signed by the cluster CA."""
        if not self.ca_path.exists():
            raise RuntimeError(f"control plane in {self.workdir} has not been started")
        identity = ClientIdentity(f"client-{user}", user, tuple(groups))
        authority = CertificateFiles(cert=self.ca_path, key=self.pki_dir / "ca.key")
        client = make_client_certificate(authority, self.pki_dir, identity)
        client.key.chmod(0o600)
        return write_kubeconfig(self.workdir / f"{user}.kubeconfig", self.server_url, self.ca_path, user, client)

    def publish_gpu_devices(self) -> int:
        """Publish the GPU pools as DRA devices (``dra.py``): the DeviceClass and one ResourceSlice per node."""
        with self.new_api_client() as api_client:
            return publish_gpu_devices(api_client, load_node_pools(self.pools_file))

    # -- faults: what the outage tests do to a component ------------------------------------

    def stop_component(self, name: str) -> None:
        """Stop one component (SIGTERM, then SIGKILL) and leave it stopped; etcd keeps its data."""
        exit_code = self._component(name).stop(STOP_GRACE_SECONDS)
        LOGGER.info("stopped %s for an outage (exit status %s)", name, exit_code)

    def restart_component(self, name: str) -> float:
        """Start a stopped component again with the same command; returns the seconds until it was healthy."""
        process = self._component(name)
        pid = process.start()
        waited = process.wait_until_healthy(self._health[name], self.startup_timeout_seconds)
        LOGGER.info("restarted %s (pid %d), healthy after %.1fs", name, pid, waited)
        return waited

    def freeze_component(self, name: str) -> None:
        """SIGSTOP one component: its sockets stay open and nothing answers (a hung host, not a dead one)."""
        self._component(name).pause()
        LOGGER.info("froze %s", name)

    def thaw_component(self, name: str) -> None:
        self._component(name).resume()
        LOGGER.info("thawed %s", name)

    def _component(self, name: str) -> ManagedProcess:
        process = self._processes.get(name)
        if process is None:
            raise KeyError(f"{name!r} was not started; started: {', '.join(self._processes) or 'none'}")
        return process

    # -- start steps -----------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def _start_components(self) -> None:
        binaries = find_binaries()
        pools = load_node_pools(self.pools_file)
        LOGGER.info("starting control plane in %s from %s", self.workdir, binaries.bin_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        certificates = generate_cluster_certificates(self.pki_dir)
        LOGGER.info("[%5.1fs] certificates ready in %s", self._elapsed(), self.pki_dir)

        self._start_etcd(binaries)
        self._start_apiserver(binaries, certificates)
        write_kubeconfig(self.kubeconfig_path, self.server_url, certificates.ca.cert, ADMIN.user, certificates.admin)
        self._start_controller_manager(binaries, certificates)
        self._start_scheduler(binaries, certificates)

        with self.new_api_client() as api_client:
            self.node_names = create_pool_nodes(api_client, pool_node_manifests(pools))
            LOGGER.info("[%5.1fs] registered %d pool nodes", self._elapsed(), len(self.node_names))
            create_default_storage_class(api_client)
            self._start_kwok(binaries)
            self.fake_pod_gates = FakePodGates(self.new_api_client, self._kwok_node_selector())
            self.fake_pod_gates.start()
            if self.process_backed is not None:
                server_files = KubeletServerFiles(
                    serving=certificates.kubelet_serving,
                    client_ca=certificates.ca.cert,
                    allowed_clients=frozenset({KUBELET_CLIENT.user, ADMIN.user}),
                )
                self.process_kubelet = ProcessKubelet(
                    self.new_api_client, self.process_backed, self.workdir / "pods", server_files
                )
                self.process_kubelet.start()
            waited = wait_for_nodes_ready(api_client, self.node_names, self.startup_timeout_seconds)
            LOGGER.info("[%5.1fs] %d pool nodes Ready after %.1fs", self._elapsed(), len(self.node_names), waited)
            # Pods are refused until their namespace's service account exists.
            waited = wait_for_service_account(api_client, "default", "default", self.startup_timeout_seconds)
            LOGGER.info("[%5.1fs] service account default/default present after %.1fs", self._elapsed(), waited)
        if self._prometheus_enabled:
            self.prometheus = Prometheus(
                self.new_api_client, self.logs_dir, scrape_interval_seconds=self._prometheus_scrape_interval_seconds
            )
            self.prometheus.start()
        if self._lws_enabled:
            authority = CertificateFiles(cert=self.ca_path, key=self.pki_dir / "ca.key")
            self.lws = LeaderWorkerSetController(self.new_api_client, self.client_kubeconfig, authority, self.workdir)
            self.lws.start()
        if self._keda_enabled:
            authority = CertificateFiles(cert=self.ca_path, key=self.pki_dir / "ca.key")
            self.keda = KedaController(self.new_api_client, self.client_kubeconfig, authority, self.workdir)
            self.keda.start()
        LOGGER.info(
            "[%5.1fs] control plane ready at %s (kubeconfig %s)", self._elapsed(), self.server_url, self.kubeconfig_path
        )

    def _launch(
        self, name: str, command: list[str], health: HealthEndpoint, environment: dict[str, str] | None = None
    ) -> None:
        if name in self.opt_in_flags:
            LOGGER.info("%s opt-in flags: %s", name, " ".join(self.opt_in_flags[name]))
        process = ManagedProcess(name, command, self.logs_dir / f"{name}.log", environment)
        self._processes[name] = process
        self._health[name] = health
        pid = process.start()
        LOGGER.info("[%5.1fs] started %s (pid %d), waiting for %s", self._elapsed(), name, pid, health.url)
        waited = process.wait_until_healthy(health, self.startup_timeout_seconds)
        LOGGER.info("[%5.1fs] %s healthy after %.1fs", self._elapsed(), name, waited)

    def _admin_probe(self, port: int, path: str) -> HealthEndpoint:
        tls = client_tls_context(self.ca_path, self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return HealthEndpoint(components.loopback_url("https", port, path), tls)

    def _start_etcd(self, binaries: ControlPlaneBinaries) -> None:
        parent = TMPFS if TMPFS.is_dir() and os.access(TMPFS, os.W_OK) else None
        self._etcd_data_dir = Path(tempfile.mkdtemp(prefix="llama-operator-etcd-", dir=parent))
        command = components.etcd_command(binaries.path("etcd"), self._etcd_data_dir, self.ports)
        health = HealthEndpoint(components.loopback_url("http", self.ports.etcd_client, "/readyz"))
        self._launch("etcd", command, health)

    def _opt_in(self, component: str, flags: list[str]) -> list[str]:
        """Remember the flags a caller opted into, so a benchmark can report them."""
        if flags:
            self.opt_in_flags[component] = flags
        return flags

    def _start_apiserver(self, binaries: ControlPlaneBinaries, certificates: ClusterCertificates) -> None:
        extra = self.scale.apiserver_flags() if self.scale is not None else []
        if self.audit_log_path is not None:
            policy_file = self.workdir / "audit-policy.yaml"
            policy_file.write_text(yaml.safe_dump(components.AUDIT_POLICY, sort_keys=False), encoding="utf-8")
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            extra += components.audit_log_flags(policy_file, self.audit_log_path)
        command = components.apiserver_command(
            binaries.path("kube-apiserver"), certificates, self.ports, extra_flags=self._opt_in("kube-apiserver", extra)
        )
        self._launch("kube-apiserver", command, self._admin_probe(self.ports.apiserver, "/readyz"))

    def _start_controller_manager(self, binaries: ControlPlaneBinaries, certificates: ClusterCertificates) -> None:
        kubeconfig = write_kubeconfig(
            self.pki_dir / "kube-controller-manager.kubeconfig",
            self.server_url,
            certificates.ca.cert,
            CONTROLLER_MANAGER.user,
            certificates.controller_manager,
        )
        extra = self.scale.controller_manager_flags() if self.scale is not None else []
        if self._keda_enabled:
            extra += components.HPA_SYNC_FLAGS  # KEDA's HPAs act within seconds, not the default 15 s
        command = components.controller_manager_command(
            binaries.path("kube-controller-manager"),
            certificates,
            kubeconfig,
            self.ports,
            extra_flags=self._opt_in("kube-controller-manager", extra),
        )
        self._launch("kube-controller-manager", command, self._admin_probe(self.ports.controller_manager, "/healthz"))

    def _start_scheduler(self, binaries: ControlPlaneBinaries, certificates: ClusterCertificates) -> None:
        kubeconfig = write_kubeconfig(
            self.pki_dir / "kube-scheduler.kubeconfig",
            self.server_url,
            certificates.ca.cert,
            SCHEDULER.user,
            certificates.scheduler,
        )
        extra = self.scale.scheduler_flags() if self.scale is not None else []
        command = components.scheduler_command(
            binaries.path("kube-scheduler"),
            certificates,
            kubeconfig,
            self.ports,
            extra_flags=self._opt_in("kube-scheduler", extra),
        )
        self._launch("kube-scheduler", command, self._admin_probe(self.ports.scheduler, "/healthz"))

    def _kwok_node_selector(self) -> str:
        """The nodes KWOK plays: all pool nodes but those the process-backed kubelet plays."""
        return kwok_node_selector(self.process_backed.node_labels if self.process_backed is not None else None)

    def _start_kwok(self, binaries: ControlPlaneBinaries) -> None:
        command = components.kwok_command(
            binaries.path("kwok"), self.kubeconfig_path, KWOK_STAGES_FILE, self.ports, self._kwok_node_selector()
        )
        # KWOK also loads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok); keep a user's file out of it.
        environment = {**os.environ, "KWOK_WORKDIR": str(self.workdir / "kwok")}
        health = HealthEndpoint(components.loopback_url("http", self.ports.kwok, "/healthz"))
        self._launch("kwok", command, health, environment)
