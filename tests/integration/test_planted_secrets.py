"""The hub token and the Prometheus bearer token never leave their Secrets except where they belong.

Two Secrets carry planted random values; a LlamaDeployment references both (hubTokenSecretRef, and
autoscaling with prometheusAuthSecretRef). The operator's Prometheus is a loopback server that records
the Authorization header, so the test proves the token IS sent as a bearer header to Prometheus, and
appears nowhere else: operator log, Events, the object's status and annotations, every child manifest
and pod, and the `llama-operator plan` output for the same manifest.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
NAME = "planted"
HUB_SECRET, PROMETHEUS_SECRET = "hub-token", "prometheus-token"
EVALUATIONS = 3


class RecordingPrometheus:
    """A loopback Prometheus answering every instant query with 0 and recording each Authorization header."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        recorded = self.authorizations

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorded.append(self.headers.get("Authorization", ""))
                body = json.dumps(
                    {
                        "status": "success",
                        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0"]}]},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture(scope="module")
def prometheus() -> Iterator[RecordingPrometheus]:
    recording = RecordingPrometheus()
    recording.thread.start()
    yield recording
    recording.server.shutdown()
    recording.server.server_close()


@pytest.fixture(scope="module")
def operator_settings(prometheus: RecordingPrometheus) -> dict[str, Any]:
    """The operator's own Prometheus is the recording server (a spec may not name a loopback URL)."""
    return {"prometheusUrl": prometheus.url}


def manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LlamaDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"type": "vllm"},
            "replicas": 1,
            "hubTokenSecretRef": {"name": HUB_SECRET, "key": "token"},
            "autoscaling": {
                "enabled": True,
                "minReplicas": 1,
                "maxReplicas": 2,
                "evaluationIntervalSeconds": 1,
                "prometheusAuthSecretRef": {"name": PROMETHEUS_SECRET, "key": "token"},
            },
        },
    }


def create_secret(core: Any, namespace: str, name: str, value: str) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "type": "Opaque", "stringData": {"token": value}}
    )


def forms(value: str) -> list[str]:
    """The value as written and base64-encoded (how a Secret's data, or a careless dump, would show it)."""
    return [value, base64.b64encode(value.encode()).decode(), base64.urlsafe_b64encode(value.encode()).decode()]


def test_planted_tokens_reach_prometheus_as_bearer_and_nowhere_else(
    *,
    api_client: Any,
    operator: OperatorProcess,
    namespace: str,
    prometheus: RecordingPrometheus,
    tmp_path: Path,
    evidence: Callable[[str], None],
) -> None:
    core, apps = kube_client.CoreV1Api(api_client), kube_client.AppsV1Api(api_client)
    policy, custom = kube_client.PolicyV1Api(api_client), kube_client.CustomObjectsApi(api_client)
    hub_token, prometheus_token = f"hub-{secrets.token_hex(16)}", f"prom-{secrets.token_hex(16)}"
    create_secret(core, namespace, HUB_SECRET, hub_token)
    create_secret(core, namespace, PROMETHEUS_SECRET, prometheus_token)
    body = manifest(namespace)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    expected = f"Bearer {prometheus_token}"
    poll_until(
        lambda: True if prometheus.authorizations.count(expected) >= EVALUATIONS else None,
        90,
        f"{EVALUATIONS} autoscaling queries carrying the planted bearer token (got {prometheus.authorizations[-3:]})",
    )
    poll_until(lambda: apps.list_namespaced_deployment(namespace).items or None, 60, "the rendered Deployment")
    poll_until(
        lambda: (
            True
            if (custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME).get("status") or {}).get(
                "autoscaling"
            )
            else None
        ),
        60,
        "status.autoscaling written",
    )

    serialize = api_client.sanitize_for_serialization
    places: dict[str, str] = {}
    for path in sorted(operator.log_dir.glob("*.log")):
        places[f"operator log {path.name}"] = path.read_text(errors="replace")
    for event in core.list_namespaced_event(namespace).items:
        places[f"Event {event.metadata.name}"] = json.dumps(serialize(event))
    ld = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
    places["LlamaDeployment status"] = json.dumps(ld.get("status"))
    places["LlamaDeployment metadata"] = json.dumps(ld.get("metadata"))
    for kind, items in (
        ("Deployment", apps.list_namespaced_deployment(namespace).items),
        ("ReplicaSet", apps.list_namespaced_replica_set(namespace).items),
        ("Service", core.list_namespaced_service(namespace).items),
        ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget(namespace).items),
        ("Pod", core.list_namespaced_pod(namespace).items),
        ("ConfigMap", core.list_namespaced_config_map(namespace).items),
    ):
        for item in items:
            places[f"{kind} {item.metadata.name}"] = json.dumps(serialize(item))
    source = tmp_path / "planted.yaml"
    source.write_text(yaml.safe_dump(body))
    printed = subprocess.run(
        [sys.executable, "-m", "llama_operator.cli", "plan", "-f", str(source), "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    places["llama-operator plan output"] = printed.stdout + printed.stderr

    deployment = serialize(apps.list_namespaced_deployment(namespace).items[0])
    env = [e for c in deployment["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
    hub_env = [e for e in env if (e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == HUB_SECRET]
    assert hub_env, f"the hub token is not mounted from its Secret: {env}"

    planted = forms(hub_token) + forms(prometheus_token)
    # The search finds a planted value where it does belong: the Secrets themselves (base64 in data).
    for secret in (HUB_SECRET, PROMETHEUS_SECRET):
        stored = json.dumps(serialize(core.read_namespaced_secret(secret, namespace)))
        assert any(value in stored for value in planted), f"the search misses the planted value in Secret {secret}"
    found = sorted(f"{where}: {value[:8]}..." for where, text in places.items() for value in planted if value in text)
    kinds = sorted({where.split(" ")[0] for where in places})
    evidence(f"planted secrets found: {len(found)} of {len(places)} places searched ({', '.join(kinds)})")
    evidence(f"Prometheus got {prometheus.authorizations.count(expected)} queries with the planted bearer token")
    assert found == [], f"planted token found in: {found}"
    assert all(a == expected for a in prometheus.authorizations), "a query went out without the bearer token"
