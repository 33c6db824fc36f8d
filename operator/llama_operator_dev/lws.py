"""The real LeaderWorkerSet controller in the dev cluster: the pinned ``sigs.k8s.io/lws`` manager, built by
``hack/build-upstream.sh``, runs as a child process bound to 127.0.0.1 with its CRDs and its webhooks.

``LeaderWorkerSetController(...).start()`` installs the CRDs of the pinned module (``upstream_crds("LWS")``),
writes the manager's Configuration (no internal certificate management, no leader election, every listener on
127.0.0.1), signs the webhook server's certificate with the cluster CA, starts the manager under an identity
of its own, waits for ``/readyz`` and for every webhook path to answer, then registers the Mutating- and
ValidatingWebhookConfigurations. Those are built at run time from the module's ``config/webhook/`` files
(the paths, rules and the objectSelector that limits the pod webhooks to LeaderWorkerSet pods, as the
module's kustomize patches set it), with ``clientConfig.url`` at the local server: nothing of them is
copied into this repository. ``stop()`` removes the webhook configurations first (they fail closed), then
the process; the CRDs stay.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client as kube_client
from kubernetes.client import (
    ApiClient,
    V1MutatingWebhookConfiguration,
    V1ValidatingWebhookConfiguration,
)
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.binaries import cache_root
from llama_operator_dev.certs import CertificateFiles, sign_certificate, subject_of
from llama_operator_dev.errors import BinariesMissingError, ReadinessTimeoutError
from llama_operator_dev.processes import (
    POLL_INTERVAL_SECONDS,
    PROBE_TIMEOUT_SECONDS,
    HealthEndpoint,
    ManagedProcess,
    client_tls_context,
    distinct_loopback_ports,
)
from llama_operator_dev.upstream import install_upstream_crds, module_folder, read_upstream

LOGGER = logging.getLogger(__name__)

PROJECT = "LWS"
BINARY = "lws-manager"
BUILD_SCRIPT = "hack/build-upstream.sh"
IDENTITY = "lws-controller-manager"
WEBHOOK_DIR = "config/webhook"
CONFIGURATION_PREFIX = "llama-operator-dev-lws-"
WEBHOOK_TIMEOUT_SECONDS = 10
STOP_GRACE_SECONDS = 10.0
LOOPBACK = "127.0.0.1"
WEBHOOK_KINDS = {
    "MutatingWebhookConfiguration": "mutating",
    "ValidatingWebhookConfiguration": "validating",
}


def lws_bin_dir() -> Path:
    """Where ``hack/build-upstream.sh LWS`` puts the manager of the pinned version."""
    return cache_root() / "bin" / f"lws-{read_upstream(PROJECT).version}"


def lws_binary() -> Path | None:
    """The built LWS manager, or None until ``hack/build-upstream.sh`` has built it."""
    path = lws_bin_dir() / BINARY
    return path if os.access(path, os.X_OK) else None


def require_lws_binary() -> Path:
    path = lws_binary()
    if path is None:
        raise BinariesMissingError(
            f"the LeaderWorkerSet manager is missing from {lws_bin_dir()}; build it with `{BUILD_SCRIPT} LWS`"
        )
    return path


@dataclass(frozen=True)
class LwsPorts:
    webhook: int
    health: int
    metrics: int

    @classmethod
    def allocate(cls) -> LwsPorts:
        """Free loopback ports, all different."""
        return cls(*distinct_loopback_ports(len(cls.__dataclass_fields__)))


def manager_configuration(ports: LwsPorts, cert_dir: Path) -> dict[str, Any]:
    """The manager's ``config.lws.x-k8s.io/v1alpha1`` Configuration: local listeners, our certificate."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": LOOPBACK, "port": ports.webhook, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"{LOOPBACK}:{ports.health}"},
        "metrics": {"bindAddress": f"{LOOPBACK}:{ports.metrics}"},
    }


def manager_command(binary: Path, config_file: Path, ports: LwsPorts) -> list[str]:
    """Flags repeat the listeners, so a default (":8081", ":8443") can never bind beyond loopback."""
    return [
        str(binary),
        f"--config={config_file}",
        f"--health-probe-bind-address={LOOPBACK}:{ports.health}",
        f"--metrics-bind-address={LOOPBACK}:{ports.metrics}",
        "--leader-elect=false",
        "--zap-log-level=info",
    ]


def _replace_at(document: dict[str, Any], path: str, value: Any) -> None:
    """One JSON-patch ``replace`` at ``/key/index/...`` (what the module's kustomize patches use)."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ValueError(f"patch path {path!r} names no field")
    target: Any = document
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def webhook_configurations(webhook_dir: Path) -> list[dict[str, Any]]:
    """The module's webhook configurations with its kustomize patches applied (kind -> the patched body)."""
    documents = [doc for doc in yaml.safe_load_all((webhook_dir / "manifests.yaml").read_text()) if doc]
    kustomization = yaml.safe_load((webhook_dir / "kustomization.yaml").read_text()) or {}
    for patch in kustomization.get("patches") or []:
        target = patch.get("target") or {}
        operations = yaml.safe_load((webhook_dir / patch["path"]).read_text()) or []
        for document in documents:
            if document.get("kind") != target.get("kind") or document["metadata"]["name"] != target.get("name"):
                continue
            for operation in operations:
                if operation.get("op") != "replace":
                    raise ValueError(f"{patch['path']}: only replace operations are understood, got {operation}")
                _replace_at(document, operation["path"], operation["value"])
    return documents


def local_webhook_configurations(documents: list[dict[str, Any]], port: int, ca_file: Path) -> list[dict[str, Any]]:
    """Each configuration pointed at ``https://127.0.0.1:<port><path>``, trusting the cluster CA."""
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode("ascii")
    local = []
    for document in documents:
        webhooks = []
        for webhook in document.get("webhooks") or []:
            path = webhook["clientConfig"]["service"]["path"]
            webhooks.append(
                {
                    **webhook,
                    "clientConfig": {"url": f"https://{LOOPBACK}:{port}{path}", "caBundle": ca_bundle},
                    "timeoutSeconds": WEBHOOK_TIMEOUT_SECONDS,
                }
            )
        name = CONFIGURATION_PREFIX + WEBHOOK_KINDS[document["kind"]]
        local.append({"apiVersion": document["apiVersion"], "kind": document["kind"], "metadata": {"name": name},
                      "webhooks": webhooks})  # fmt: skip
    return local


def webhook_paths(configurations: list[dict[str, Any]]) -> list[str]:
    """The URL paths the local webhook server must serve."""
    return sorted({urlsplit(w["clientConfig"]["url"]).path for c in configurations for w in c["webhooks"]})


def install_lws_crds(api_client: ApiClient, timeout_seconds: float = 60.0) -> list[str]:
    """Create the pinned module's CRDs and wait until they are Established (``install_upstream_crds``)."""
    return install_upstream_crds(api_client, PROJECT, timeout_seconds)


class LeaderWorkerSetController:
    """The pinned LWS manager against one dev cluster (see the module docstring)."""

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
        self.workdir = workdir / "lws"
        self.log_path = workdir / "logs" / "lws-manager.log"
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ports = LwsPorts.allocate()
        self.configuration_names: list[str] = []
        self._process: ManagedProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def log_tail(self, lines: int = 50) -> str:
        return self._process.log_tail(lines) if self._process is not None else ""

    def start(self) -> None:
        binary = require_lws_binary()
        started = time.monotonic()
        with self._new_api_client() as api_client:
            crds = install_lws_crds(api_client)
        LOGGER.info("LWS CRDs established: %s", ", ".join(crds))
        configurations = local_webhook_configurations(
            webhook_configurations(module_folder(PROJECT) / WEBHOOK_DIR), self.ports.webhook, self._authority.cert
        )
        command = manager_command(binary, self._write_files(), self.ports)
        environment = {**os.environ, "KUBECONFIG": str(self._client_kubeconfig(IDENTITY))}
        self._process = ManagedProcess("lws-manager", command, self.log_path, environment)
        pid = self._process.start()
        health = HealthEndpoint(f"http://{LOOPBACK}:{self.ports.health}/readyz")
        waited = self._process.wait_until_healthy(health, self.startup_timeout_seconds)
        LOGGER.info("lws-manager (pid %d) ready after %.1fs", pid, waited)
        self._wait_for_webhooks(webhook_paths(configurations))
        with self._new_api_client() as api_client:
            self._register(api_client, configurations)
        LOGGER.info("LWS controller and webhooks up in %.1fs (log %s)", time.monotonic() - started, self.log_path)

    def stop(self) -> None:
        if self.configuration_names:
            try:
                with self._new_api_client() as api_client:
                    self._unregister(api_client)
            except (ApiException, OSError) as error:  # the apiserver may be gone already
                LOGGER.warning("could not remove the LWS webhook configurations: %s", error)
        if self._process is not None:
            exit_code = self._process.stop(STOP_GRACE_SECONDS)
            LOGGER.info("stopped lws-manager (pid %s, exit status %s)", self._process.pid, exit_code)

    def _write_files(self) -> Path:
        cert_dir = self.workdir / "serving-certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert_dir.chmod(0o700)
        # controller-runtime's webhook server reads tls.crt and tls.key from its certDir.
        files = CertificateFiles(cert=cert_dir / "tls.crt", key=cert_dir / "tls.key")
        sign_certificate(self._authority, files, subject_of("lws-webhook"), "serverAuth", (f"IP:{LOOPBACK}",))
        files.key.chmod(0o600)
        config_file = self.workdir / "configuration.yaml"
        config_file.write_text(yaml.safe_dump(manager_configuration(self.ports, cert_dir), sort_keys=False))
        return config_file

    def _wait_for_webhooks(self, paths: list[str]) -> None:
        """Each webhook path answers something but 404 (the manager registers them after it started)."""
        tls = client_tls_context(self._authority.cert)
        deadline = time.monotonic() + self.startup_timeout_seconds
        pending = list(paths)
        answer = ""
        while pending:
            connection = http.client.HTTPSConnection(
                LOOPBACK, self.ports.webhook, timeout=PROBE_TIMEOUT_SECONDS, context=tls
            )
            try:
                connection.request("POST", pending[0], body=b"{}", headers={"Content-Type": "application/json"})
                status = connection.getresponse().status
                answer = f"HTTP {status}"
                if status != http.HTTPStatus.NOT_FOUND:
                    pending.pop(0)
                    continue
            except (OSError, http.client.HTTPException) as error:
                answer = f"{type(error).__name__}: {error}"
            finally:
                connection.close()
            if self._process is not None and self._process.exit_code() is not None:
                raise ReadinessTimeoutError(f"lws-manager exited; last lines of {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ReadinessTimeoutError(
                    f"LWS webhook {pending[0]} not served after {self.startup_timeout_seconds:.0f}s ({answer}); "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def _register(self, api_client: ApiClient, configurations: list[dict[str, Any]]) -> None:
        admission = kube_client.AdmissionregistrationV1Api(api_client)
        for body in configurations:
            if body["kind"] == "MutatingWebhookConfiguration":
                admission.create_mutating_webhook_configuration(V1MutatingWebhookConfiguration.model_validate(body))
            else:
                admission.create_validating_webhook_configuration(V1ValidatingWebhookConfiguration.model_validate(body))
            self.configuration_names.append(f"{body['kind']}/{body['metadata']['name']}")

    def _unregister(self, api_client: ApiClient) -> None:
        admission = kube_client.AdmissionregistrationV1Api(api_client)
        for entry in self.configuration_names:
            kind, name = entry.split("/", 1)
            delete = (
                admission.delete_mutating_webhook_configuration
                if kind == "MutatingWebhookConfiguration"
                else admission.delete_validating_webhook_configuration
            )
            try:
                delete(name)
            except ApiException as error:
                if error.status != http.HTTPStatus.NOT_FOUND:
                    raise
        self.configuration_names = []
