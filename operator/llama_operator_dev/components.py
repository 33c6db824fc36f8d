"""Command lines of the control-plane components: pure functions of paths and ports.

Every server listens on 127.0.0.1 only. etcd speaks plain HTTP on loopback; everything
else is TLS with the dev cluster's CA (see ``certs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_operator_dev.certs import ClusterCertificates
from llama_operator_dev.pools import KWOK_MANAGED_SELECTOR
from llama_operator_dev.processes import distinct_loopback_ports

LOOPBACK = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"  # a config value only: no traffic goes there
POD_IP_RANGE = "10.244.0.0/16"  # pod IPs KWOK hands out
FAKE_NODE_IP = "10.200.0.1"  # InternalIP of every fake node (and hostIP of its pods); never dialled
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ETCD_MEMBER_NAME = "llama-operator-dev"
NODE_LEASE_DURATION_SECONDS = 40
ALWAYS_ALLOWED_PATHS = "/healthz,/readyz,/livez"
# node-ipam needs a cluster CIDR and real node networking; KWOK hands out pod IPs itself.
CONTROLLERS = "*,-node-ipam-controller"


@dataclass(frozen=True)
class ControlPlanePorts:
    """One loopback port per listener."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def allocate(cls) -> ControlPlanePorts:
        """Free loopback ports, all different."""
        return cls(*distinct_loopback_ports(len(cls.__dataclass_fields__)))


@dataclass(frozen=True)
class ScaleSettings:
    """Opt-in client limits and worker counts for thousands of objects; without it every component keeps its defaults.

    The defaults of the components are sized for a shared production apiserver (controller-manager
    20 requests/s, scheduler 50/s, 5 Deployment and ReplicaSet workers): with a thousand objects
    applied at once, those limits and not the operator decide how fast pods exist. KWOK needs
    nothing: its client has no rate limit, and it has no flags for one.
    """

    controller_manager_qps: int = 300
    controller_manager_burst: int = 600
    concurrent_deployment_syncs: int = 50
    concurrent_replicaset_syncs: int = 50
    scheduler_qps: int = 300
    scheduler_burst: int = 600
    max_requests_inflight: int = 800
    max_mutating_requests_inflight: int = 400

    def apiserver_flags(self) -> list[str]:
        return [
            f"--max-requests-inflight={self.max_requests_inflight}",
            f"--max-mutating-requests-inflight={self.max_mutating_requests_inflight}",
        ]

    def controller_manager_flags(self) -> list[str]:
        return [
            f"--kube-api-qps={self.controller_manager_qps}",
            f"--kube-api-burst={self.controller_manager_burst}",
            f"--concurrent-deployment-syncs={self.concurrent_deployment_syncs}",
            f"--concurrent-replicaset-syncs={self.concurrent_replicaset_syncs}",
        ]

    def scheduler_flags(self) -> list[str]:
        return [f"--kube-api-qps={self.scheduler_qps}", f"--kube-api-burst={self.scheduler_burst}"]


# The HPA controller's sync period with KEDA in the plane (the default is 15 s).
HPA_SYNC_FLAGS = ["--horizontal-pod-autoscaler-sync-period=3s"]


# Every request once its response is complete, without bodies: who (user, user agent), what (verb,
# resource) and when. Watches also log when they start, which is dropped: one line per request.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}
AUDIT_LOG_MAX_SIZE_MB = 4096  # rotate only past 4 GiB (the default is 100 MB; 0 disables rotation)
AUDIT_LOG_MAX_BACKUPS = 20


def audit_log_flags(policy_file: Path, log_file: Path) -> list[str]:
    """The apiserver's audit log: JSON lines, written before each response returns ("blocking" mode)."""
    return [
        f"--audit-policy-file={policy_file}",
        f"--audit-log-path={log_file}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        f"--audit-log-maxsize={AUDIT_LOG_MAX_SIZE_MB}",
        f"--audit-log-maxbackup={AUDIT_LOG_MAX_BACKUPS}",
    ]


def loopback_url(scheme: str, port: int, path: str = "") -> str:
    return f"{scheme}://{LOOPBACK}:{port}{path}"


def etcd_command(etcd: Path, data_dir: Path, ports: ControlPlanePorts) -> list[str]:
    """A single-member etcd on tmpfs-friendly settings (no fsync: the data is throwaway)."""
    client_url = loopback_url("http", ports.etcd_client)
    peer_url = loopback_url("http", ports.etcd_peer)
    return [
        str(etcd),
        f"--name={ETCD_MEMBER_NAME}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={ETCD_MEMBER_NAME}={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_command(
    apiserver: Path, certificates: ClusterCertificates, ports: ControlPlanePorts, *, extra_flags: Sequence[str] = ()
) -> list[str]:
    return [
        str(apiserver),
        f"--etcd-servers={loopback_url('http', ports.etcd_client)}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={certificates.serving.cert}",
        f"--tls-private-key-file={certificates.serving.key}",
        f"--client-ca-file={certificates.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={certificates.service_account_public_key}",
        f"--service-account-signing-key-file={certificates.service_account_private_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        "--profiling=false",
        # Front-proxy (aggregation) settings: the apiserver proxies aggregated APIs (KEDA's
        # external.metrics.k8s.io) with the front-proxy client certificate, and publishes a complete
        # extension-apiserver-authentication ConfigMap, which the scheduler, the controller-manager
        # and the aggregated servers read for delegated authentication.
        f"--proxy-client-cert-file={certificates.front_proxy_client.cert}",
        f"--proxy-client-key-file={certificates.front_proxy_client.key}",
        f"--requestheader-client-ca-file={certificates.ca.cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        # pods/log (kubectl logs) is proxied to the node's kubelet: the process-backed kubelet's
        # log server at the node's InternalIP (127.0.0.1) and its daemonEndpoints port, whose
        # certificate is checked against our CA (without a CA the apiserver would not check it).
        f"--kubelet-client-certificate={certificates.kubelet_client.cert}",
        f"--kubelet-client-key={certificates.kubelet_client.key}",
        f"--kubelet-certificate-authority={certificates.ca.cert}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        *extra_flags,
    ]


def delegated_auth_flags(certificates: ClusterCertificates, kubeconfig: Path, port: int) -> list[str]:
    """Serving and delegated authn/authz flags shared by the scheduler and controller-manager."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--authorization-always-allow-paths={ALWAYS_ALLOWED_PATHS}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--tls-cert-file={certificates.serving.cert}",
        f"--tls-private-key-file={certificates.serving.key}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def controller_manager_command(
    controller_manager: Path,
    certificates: ClusterCertificates,
    kubeconfig: Path,
    ports: ControlPlanePorts,
    *,
    extra_flags: Sequence[str] = (),
) -> list[str]:
    """Runs every controller under its own service account, signing tokens and CSRs with our keys."""
    return [
        str(controller_manager),
        *delegated_auth_flags(certificates, kubeconfig, ports.controller_manager),
        f"--controllers={CONTROLLERS}",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={certificates.service_account_private_key}",
        f"--root-ca-file={certificates.ca.cert}",
        f"--cluster-signing-cert-file={certificates.ca.cert}",
        f"--cluster-signing-key-file={certificates.ca.key}",
        # The PV controller's own hostPath provisioner (testing only, one host): a claim of the
        # dev cluster's default StorageClass gets a folder /tmp/hostpath_pv/<uuid>, removed again
        # with the PV (reclaim Delete; its deleter removes only folders under /tmp/).
        "--enable-hostpath-provisioner",
        *extra_flags,
    ]


def scheduler_command(
    scheduler: Path,
    certificates: ClusterCertificates,
    kubeconfig: Path,
    ports: ControlPlanePorts,
    *,
    extra_flags: Sequence[str] = (),
) -> list[str]:
    return [str(scheduler), *delegated_auth_flags(certificates, kubeconfig, ports.scheduler), *extra_flags]


def kwok_command(
    kwok: Path,
    kubeconfig: Path,
    stages_file: Path,
    ports: ControlPlanePorts,
    node_selector: str = KWOK_MANAGED_SELECTOR,
) -> list[str]:
    """KWOK plays the kubelet of the nodes ``node_selector`` selects only, with our own lifecycle stages."""
    return [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages_file}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-label-selector={node_selector}",
        f"--server-address={LOOPBACK}:{ports.kwok}",
        f"--cidr={POD_IP_RANGE}",
        f"--node-ip={FAKE_NODE_IP}",
        f"--node-lease-duration-seconds={NODE_LEASE_DURATION_SECONDS}",
    ]
