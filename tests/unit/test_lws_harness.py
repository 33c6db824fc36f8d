"""The dev cluster's LWS manager: every listener on loopback, and webhook configurations built from a
module's webhook folder (manifests plus kustomize replace patches) pointed at the local server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_operator_dev.lws import (
    LwsPorts,
    local_webhook_configurations,
    manager_command,
    manager_configuration,
    webhook_configurations,
    webhook_paths,
)
from llama_operator_dev.upstream import read_upstream

PORTS = LwsPorts(webhook=40001, health=40002, metrics=40003)


def hook(name: str, path: str, resources: list[str]) -> dict[str, Any]:
    return {"name": name, "clientConfig": {"service": {"name": "svc", "namespace": "ns", "path": path}},
            "rules": [{"apiGroups": ["g"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": resources}],
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail"}  # fmt: skip


@pytest.fixture
def webhook_dir(tmp_path: Path) -> Path:
    """A made-up module webhook folder in the layout kubebuilder projects use."""
    manifests = [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "mutating-webhook-configuration"},
         "webhooks": [hook("mthing.example.io", "/mutate-thing", ["things"]),
                      hook("mpod.example.io", "/mutate--v1-pod", ["pods"])]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "validating-webhook-configuration"},
         "webhooks": [hook("vthing.example.io", "/validate-thing", ["things"])]},
    ]  # fmt: skip
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
    scoped = {**hook("mpod.example.io", "/mutate--v1-pod", ["pods"]),
              "objectSelector": {"matchExpressions": [{"key": "example.io/name", "operator": "Exists"}]}}  # fmt: skip
    (tmp_path / "mutating-patch.yaml").write_text(yaml.safe_dump([{"op": "replace", "path": "/webhooks/1",
                                                                  "value": scoped}]))  # fmt: skip
    patches = [{"path": "mutating-patch.yaml", "target": {"kind": "MutatingWebhookConfiguration",
                                                          "name": "mutating-webhook-configuration"}}]  # fmt: skip
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["manifests.yaml"], "patches": patches}))
    return tmp_path


def test_the_patches_scope_the_pod_webhook_and_urls_point_at_loopback(webhook_dir: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    local = local_webhook_configurations(webhook_configurations(webhook_dir), PORTS.webhook, ca)
    assert [c["metadata"]["name"] for c in local] == [
        "llama-operator-dev-lws-mutating",
        "llama-operator-dev-lws-validating",
    ]
    mutating = {w["name"]: w for w in local[0]["webhooks"]}
    assert mutating["mpod.example.io"]["objectSelector"] == {
        "matchExpressions": [{"key": "example.io/name", "operator": "Exists"}]
    }
    assert "objectSelector" not in mutating["mthing.example.io"]
    urls = [w["clientConfig"]["url"] for c in local for w in c["webhooks"]]
    assert urls == [
        "https://127.0.0.1:40001/mutate-thing",
        "https://127.0.0.1:40001/mutate--v1-pod",
        "https://127.0.0.1:40001/validate-thing",
    ]
    assert all(
        "service" not in w["clientConfig"] and w["clientConfig"]["caBundle"] for c in local for w in c["webhooks"]
    )
    assert webhook_paths(local) == ["/mutate--v1-pod", "/mutate-thing", "/validate-thing"]


def test_a_patch_other_than_replace_is_refused(webhook_dir: Path) -> None:
    (webhook_dir / "mutating-patch.yaml").write_text(yaml.safe_dump([{"op": "remove", "path": "/webhooks/1"}]))
    with pytest.raises(ValueError, match="only replace operations"):
        webhook_configurations(webhook_dir)


def test_every_listener_is_on_loopback(tmp_path: Path) -> None:
    config = manager_configuration(PORTS, tmp_path)
    assert config["webhook"] == {"host": "127.0.0.1", "port": 40001, "certDir": str(tmp_path)}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:40002"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:40003"
    assert config["internalCertManagement"] == {"enable": False}
    command = manager_command(Path("/bin/lws-manager"), tmp_path / "c.yaml", PORTS)
    addresses = [a.split("=", 1)[1] for a in command if a.endswith(("40002", "40003"))]
    assert addresses == ["127.0.0.1:40002", "127.0.0.1:40003"]
    assert "--leader-elect=false" in command


def test_lws_is_pinned_once_with_its_crd_files() -> None:
    project = read_upstream("LWS")
    assert project.module == "sigs.k8s.io/lws"
    assert any(p.endswith("leaderworkerset.x-k8s.io_leaderworkersets.yaml") for p in project.crd_paths)
