"""The dev cluster's KEDA: every listener on loopback but the adapter's own metrics port (KEDA has no
address flag for it), the aggregated API routed to the local adapter, and the apiserver able to proxy."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from llama_operator_dev.certs import FRONT_PROXY_CLIENT, generate_cluster_certificates
from llama_operator_dev.components import ControlPlanePorts, apiserver_command
from llama_operator_dev.keda import (
    API_SERVICE,
    CERTIFICATE_NAMES,
    KedaController,
    KedaPorts,
    adapter_command,
    aggregation_manifests,
    api_service_available,
    keda_environment,
    operator_command,
)
from llama_operator_dev.upstream import read_upstream

PORTS = KedaPorts(operator_metrics=41001, operator_health=41002, metrics_grpc=41003, adapter_secure=41004,
                  adapter_metrics=41005)  # fmt: skip


def address_flags(command: list[str]) -> dict[str, str]:
    return {flag.split("=", 1)[0]: flag.split("=", 1)[1] for flag in command[1:] if "address" in flag}


def test_the_operator_listens_on_loopback_only() -> None:
    command = operator_command(Path("keda-operator"), PORTS, Path("/certs"))
    assert address_flags(command) == {
        "--metrics-bind-address": "127.0.0.1:41001",
        "--health-probe-bind-address": "127.0.0.1:41002",
        "--metrics-service-bind-address": "127.0.0.1:41003",
    }
    assert "--leader-elect=false" in command
    assert "--enable-cert-rotation=false" in command


def test_the_adapter_serves_on_loopback_and_dials_the_operator_there() -> None:
    command = adapter_command(Path("keda-adapter"), PORTS, Path("/certs"), Path("/kc"))
    assert "--bind-address=127.0.0.1" in command
    assert "--secure-port=41004" in command
    assert "--metrics-service-address=127.0.0.1:41003" in command
    assert {"--tls-cert-file=/certs/tls.crt", "--tls-private-key-file=/certs/tls.key"} <= set(command)
    for flag in ("lister", "authentication", "authorization"):
        assert f"--{flag}-kubeconfig=/kc" in command


def test_the_operator_watches_every_namespace() -> None:
    environment = keda_environment(Path("/kc"))
    assert environment["WATCH_NAMESPACE"] == ""
    assert environment["KUBECONFIG"] == "/kc"
    assert environment["KEDA_CLUSTER_OBJECT_NAMESPACE"] == environment["POD_NAMESPACE"] == "keda"


def test_the_api_service_routes_to_the_local_adapter_and_trusts_the_cluster_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"the cluster CA")
    service, api_service = aggregation_manifests(41004, ca)
    assert service["spec"] == {"type": "ExternalName", "externalName": "localhost"}
    spec = api_service["spec"]
    assert api_service["metadata"]["name"] == API_SERVICE == "v1beta1.external.metrics.k8s.io"
    assert spec["service"] == {"name": service["metadata"]["name"], "namespace": "keda", "port": 41004}
    assert base64.b64decode(spec["caBundle"]) == b"the cluster CA"
    assert "insecureSkipTLSVerify" not in spec


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"conditions": [{"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"}]},
         (True, "Passed: all checks passed")),
        ({"conditions": [{"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck",
                          "message": "no response"}]}, (False, "FailedDiscoveryCheck: no response")),
        ({}, (False, "no Available condition yet")),
        (None, (False, "no Available condition yet")),
    ],
)  # fmt: skip
def test_availability_is_read_from_the_condition(status: dict[str, object] | None, expected: tuple[bool, str]) -> None:
    assert api_service_available(status) == expected  # type: ignore[arg-type]


def test_the_apiserver_proxies_with_the_front_proxy_client_certificate(tmp_path: Path) -> None:
    certificates = generate_cluster_certificates(tmp_path)
    command = apiserver_command(Path("kas"), certificates, ControlPlanePorts(1, 2, 3, 4, 5, 6))
    assert f"--proxy-client-cert-file={certificates.front_proxy_client.cert}" in command
    assert f"--proxy-client-key-file={certificates.front_proxy_client.key}" in command
    allowed = next(flag for flag in command if flag.startswith("--requestheader-allowed-names="))
    assert allowed.split("=", 1)[1] == FRONT_PROXY_CLIENT.user
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(certificates.front_proxy_client.cert)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "CN=front-proxy-client" in subject.replace(" ", "")


def test_one_certificate_serves_and_dials_under_kedas_names(tmp_path: Path) -> None:
    certificates = generate_cluster_certificates(tmp_path / "pki")
    controller = KedaController(lambda: None, lambda user: tmp_path, certificates.ca, tmp_path)  # type: ignore[arg-type,return-value]
    cert_dir = controller._write_certificates()
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(cert_dir / "tls.crt")], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    for name in CERTIFICATE_NAMES:
        kind, value = name.split(":", 1)
        assert f"{'IP Address' if kind == 'IP' else 'DNS'}:{value}" in text
    subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "ca.crt"), str(cert_dir / "tls.crt")],
                   capture_output=True, check=True)  # fmt: skip


def test_keda_is_pinned_with_its_crds() -> None:
    project = read_upstream("KEDA")
    assert project.module == "github.com/kedacore/keda/v2"
    assert any(path.endswith("keda.sh_scaledobjects.yaml") for path in project.crd_paths)
