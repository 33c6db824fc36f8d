"""The real KEDA in the dev cluster: the pinned ``github.com/kedacore/keda/v2`` operator and metrics adapter,
built by ``hack/build-upstream.sh``, run as child processes against the real apiserver's aggregation layer.

``KedaController(...).start()`` installs the CRDs of the pinned module (``upstream_crds("KEDA")``) and the
``keda`` namespace, signs one certificate with the cluster CA for both processes (the operator's metrics
gRPC service and the adapter's HTTPS server; KEDA's own certificate rotation is off), starts the operator
(ScaledObjects become HPAs; no leader election, every listener on 127.0.0.1) and the adapter (the
``external.metrics.k8s.io`` API the controller-manager's HPA controller reads, delegating authentication
and authorization to the apiserver), then registers that API: a Service ``keda-metrics-apiserver`` of type
ExternalName pointing at ``localhost`` and an APIService ``v1beta1.external.metrics.k8s.io`` at the adapter's
port, trusting the cluster CA, and waits until the apiserver reports it Available. ``stop()`` removes the
APIService first (an unavailable aggregated API makes every client's discovery fail), then the processes;
the CRDs stay.

One listener is not on loopback: the adapter's Prometheus ``/metrics`` (``--port``) binds every interface,
as KEDA has no address flag for it; it serves KEDA's own counters only, on a free port.
"""

from __future__ import annotations

import base64
import http
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes.client import ApiClient, V1APIService, V1Namespace, V1Service
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.binaries import cache_root
from llama_operator_dev.certs import CertificateFiles, sign_certificate, subject_of
from llama_operator_dev.errors import BinariesMissingError, ReadinessTimeoutError
from llama_operator_dev.processes import (
    POLL_INTERVAL_SECONDS,
    HealthEndpoint,
    ManagedProcess,
    client_tls_context,
    distinct_loopback_ports,
)
from llama_operator_dev.upstream import install_upstream_crds, read_upstream

LOGGER = logging.getLogger(__name__)

PROJECT = "KEDA"
OPERATOR_BINARY = "keda-operator"
ADAPTER_BINARY = "keda-adapter"
BUILD_SCRIPT = "hack/build-upstream.sh"
NAMESPACE = "keda"
OPERATOR_IDENTITY = "keda-operator"
ADAPTER_IDENTITY = "keda-metrics-apiserver"
METRICS_SERVICE = "keda-metrics-apiserver"
METRICS_GROUP = "external.metrics.k8s.io"
METRICS_VERSION = "v1beta1"
API_SERVICE = f"{METRICS_VERSION}.{METRICS_GROUP}"
LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 10.0
# The operator dials its own gRPC service and the adapter dials it by these names: the certificate covers
# the loopback address and KEDA's in-cluster service names.
CERTIFICATE_NAMES = (
    f"IP:{LOOPBACK}",
    "DNS:localhost",
    f"DNS:keda-operator.{NAMESPACE}.svc",
    f"DNS:keda-operator.{NAMESPACE}.svc.cluster.local",
    f"DNS:{METRICS_SERVICE}.{NAMESPACE}.svc",
    f"DNS:{METRICS_SERVICE}.{NAMESPACE}.svc.cluster.local",
)


def keda_bin_dir() -> Path:
    """Where ``hack/build-upstream.sh KEDA`` puts the binaries of the pinned version."""
    return cache_root() / "bin" / f"keda-{read_upstream(PROJECT).version}"


def keda_binaries() -> tuple[Path, Path] | None:
    """The built operator and adapter, or None until ``hack/build-upstream.sh`` has built both."""
    paths = (keda_bin_dir() / OPERATOR_BINARY, keda_bin_dir() / ADAPTER_BINARY)
    return paths if all(os.access(path, os.X_OK) for path in paths) else None


def require_keda_binaries() -> tuple[Path, Path]:
    paths = keda_binaries()
    if paths is None:
        raise BinariesMissingError(
            f"the KEDA operator or metrics adapter is missing from {keda_bin_dir()}; build them with "
            f"`{BUILD_SCRIPT} KEDA`"
        )
    return paths


@dataclass(frozen=True)
class KedaPorts:
    operator_metrics: int
    operator_health: int
    metrics_grpc: int
    adapter_secure: int
    adapter_metrics: int

    @classmethod
    def allocate(cls) -> KedaPorts:
        """Free loopback ports, all different."""
        return cls(*distinct_loopback_ports(len(cls.__dataclass_fields__)))


def operator_command(binary: Path, ports: KedaPorts, cert_dir: Path) -> list[str]:
    """Every listener on loopback; KEDA's certificate rotation off (it reads ``cert_dir`` as given)."""
    return [
        str(binary),
        "--leader-elect=false",
        f"--metrics-bind-address={LOOPBACK}:{ports.operator_metrics}",
        f"--health-probe-bind-address={LOOPBACK}:{ports.operator_health}",
        f"--metrics-service-bind-address={LOOPBACK}:{ports.metrics_grpc}",
        "--enable-cert-rotation=false",
        f"--cert-dir={cert_dir}",
        f"--ca-dir={cert_dir}",
        "--zap-log-level=info",
    ]


def keda_environment(kubeconfig: Path) -> dict[str, str]:
    """Both processes: all namespaces watched (both refuse to start without WATCH_NAMESPACE); KEDA's own
    namespace for its cluster-scoped objects' secrets."""
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
    }


def adapter_command(binary: Path, ports: KedaPorts, cert_dir: Path, kubeconfig: Path) -> list[str]:
    """The aggregated API server on loopback with the shared certificate, delegating to the apiserver."""
    return [
        str(binary),
        f"--secure-port={ports.adapter_secure}",
        f"--bind-address={LOOPBACK}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={cert_dir / 'tls.crt'}",
        f"--tls-private-key-file={cert_dir / 'tls.key'}",
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--metrics-service-address={LOOPBACK}:{ports.metrics_grpc}",
        f"--port={ports.adapter_metrics}",
        "--zap-log-level=info",
    ]


def aggregation_manifests(adapter_port: int, ca_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Service and APIService that route ``external.metrics.k8s.io`` to the local adapter: an
    ExternalName Service resolves to ``localhost`` and the APIService names the adapter's port."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    }
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": API_SERVICE},
        "spec": {
            "group": METRICS_GROUP,
            "version": METRICS_VERSION,
            "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": adapter_port},
            "caBundle": base64.b64encode(ca_file.read_bytes()).decode("ascii"),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    return service, api_service


def api_service_available(status: dict[str, Any] | None) -> tuple[bool, str]:
    """(Available, what the apiserver says) from an APIService's status."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("type") == "Available":
            said = f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
            return condition.get("status") == "True", said
    return False, "no Available condition yet"


class KedaController:
    """The pinned KEDA operator and metrics adapter against one dev cluster (see the module docstring)."""

    def __init__(
        self,
        new_api_client: Callable[[], ApiClient],
        client_kubeconfig: Callable[[str], Path],
        authority: CertificateFiles,
        workdir: Path,
        *,
        startup_timeout_seconds: float = 120.0,
    ) -> None:
        self._new_api_client = new_api_client
        self._client_kubeconfig = client_kubeconfig
        self._authority = authority
        self.workdir = workdir / "keda"
        self.logs_dir = workdir / "logs"
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ports = KedaPorts.allocate()
        self.operator: ManagedProcess | None = None
        self.adapter: ManagedProcess | None = None
        self._registered = False

    def is_running(self) -> bool:
        return all(p is not None and p.is_running() for p in (self.operator, self.adapter))

    def log_tail(self, lines: int = 50) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}" for p in (self.operator, self.adapter) if p is not None)

    def start(self) -> None:
        operator_binary, adapter_binary = require_keda_binaries()
        started = time.monotonic()
        with self._new_api_client() as api_client:
            crds = install_upstream_crds(api_client, PROJECT)
            LOGGER.info("KEDA CRDs established: %s", ", ".join(crds))
            self._create(api_client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        cert_dir = self._write_certificates()
        tls = client_tls_context(self._authority.cert)

        self.operator = ManagedProcess(
            OPERATOR_BINARY,
            operator_command(operator_binary, self.ports, cert_dir),
            self.logs_dir / f"{OPERATOR_BINARY}.log",
            keda_environment(self._client_kubeconfig(OPERATOR_IDENTITY)),
        )
        pid = self.operator.start()
        health = HealthEndpoint(f"http://{LOOPBACK}:{self.ports.operator_health}/readyz")
        waited = self.operator.wait_until_healthy(health, self.startup_timeout_seconds)
        LOGGER.info("[%5.1fs] %s (pid %d) ready after %.1fs", time.monotonic() - started, OPERATOR_BINARY, pid, waited)

        kubeconfig = self._client_kubeconfig(ADAPTER_IDENTITY)
        self.adapter = ManagedProcess(
            ADAPTER_BINARY,
            adapter_command(adapter_binary, self.ports, cert_dir, kubeconfig),
            self.logs_dir / f"{ADAPTER_BINARY}.log",
            keda_environment(kubeconfig),
        )
        pid = self.adapter.start()
        health = HealthEndpoint(f"https://{LOOPBACK}:{self.ports.adapter_secure}/readyz", tls)
        waited = self.adapter.wait_until_healthy(health, self.startup_timeout_seconds)
        LOGGER.info("[%5.1fs] %s (pid %d) ready after %.1fs", time.monotonic() - started, ADAPTER_BINARY, pid, waited)

        service, api_service = aggregation_manifests(self.ports.adapter_secure, self._authority.cert)
        with self._new_api_client() as api_client:
            self._create(api_client, service)
            self._create(api_client, api_service)
            self._registered = True
            waited = self._wait_available(api_client)
        LOGGER.info(
            "[%5.1fs] APIService %s Available after %.1fs (logs in %s)",
            time.monotonic() - started, API_SERVICE, waited, self.logs_dir,
        )  # fmt: skip

    def stop(self) -> None:
        if self._registered:
            try:
                with self._new_api_client() as api_client:
                    kube_client.ApiregistrationV1Api(api_client).delete_api_service(API_SERVICE)
                self._registered = False
            except ApiException as error:
                if error.status != http.HTTPStatus.NOT_FOUND:
                    LOGGER.warning("could not remove the APIService %s: %s", API_SERVICE, error.reason)
            except OSError as error:  # the apiserver may be gone already
                LOGGER.warning("could not remove the APIService %s: %s", API_SERVICE, error)
        for process in (self.adapter, self.operator):
            if process is not None:
                exit_code = process.stop(STOP_GRACE_SECONDS)
                LOGGER.info("stopped %s (pid %s, exit status %s)", process.name, process.pid, exit_code)

    def _write_certificates(self) -> Path:
        """KEDA reads ca.crt, tls.crt and tls.key from its cert dir: the cluster CA and one certificate for
        serving and for dialling the gRPC service (server and client use)."""
        cert_dir = self.workdir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert_dir.chmod(0o700)
        shutil.copyfile(self._authority.cert, cert_dir / "ca.crt")
        files = CertificateFiles(cert=cert_dir / "tls.crt", key=cert_dir / "tls.key")
        sign_certificate(self._authority, files, subject_of("keda"), "serverAuth,clientAuth", CERTIFICATE_NAMES)
        files.key.chmod(0o600)
        return cert_dir

    @staticmethod
    def _create(api_client: ApiClient, manifest: dict[str, Any]) -> None:
        """Create one object; one that exists already is kept."""
        core = kube_client.CoreV1Api(api_client)
        try:
            if manifest["kind"] == "Namespace":
                core.create_namespace(V1Namespace.model_validate(manifest))
            elif manifest["kind"] == "Service":
                core.create_namespaced_service(NAMESPACE, V1Service.model_validate(manifest))
            else:
                kube_client.ApiregistrationV1Api(api_client).create_api_service(V1APIService.model_validate(manifest))
        except ApiException as error:
            if error.status != http.HTTPStatus.CONFLICT:
                raise

    def _wait_available(self, api_client: ApiClient) -> float:
        registration = kube_client.ApiregistrationV1Api(api_client)
        started = time.monotonic()
        said = ""
        while time.monotonic() - started < self.startup_timeout_seconds:
            status = registration.read_api_service(API_SERVICE).status
            conditions = (status.conditions if status is not None else None) or []
            available, said = api_service_available(
                {"conditions": [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                                for c in conditions]}
            )  # fmt: skip
            if available:
                return time.monotonic() - started
            for process in (self.operator, self.adapter):
                if process is not None and process.exit_code() is not None:
                    raise ReadinessTimeoutError(f"{process.name} exited:\n{process.log_tail()}")
            time.sleep(POLL_INTERVAL_SECONDS)
        raise ReadinessTimeoutError(
            f"APIService {API_SERVICE} not Available after {self.startup_timeout_seconds:.0f}s ({said}); "
            f"logs:\n{self.log_tail()}"
        )
