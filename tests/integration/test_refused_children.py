"""Children the apiserver refuses, on the real control plane: the LlamaDeployment's status names the refusal
in the apiserver's own words, the refused body is not sent again in a hot loop, a fixed spec is applied at
once, and pods that admission refuses (a ResourceQuota) show as Degraded."""

from __future__ import annotations

import re
import time
from typing import Any

from kubernetes import client as kube_client

from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_operator import (
    GROUP,
    PLURAL,
    VERSION,
    condition,
    create,
    custom,
    example,
    get_ld,
    wait_condition,
)

# The CRD admits any affinity (it is core/v1 Affinity); the Deployment's validation refuses a selector
# operator `In` without values.
BAD_AFFINITY = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchExpressions": [{"key": "app",
                                                                                             "operator": "In"}]}}
        ]
    }
}  # fmt: skip
WATCH_SECONDS = 25.0  # the operator's back-off tries a refused body again after 10 s, then after 20 s more


def refused_deployment_applies(api_client: Any) -> float:
    """Server-side applies of Deployments the apiserver refused (422), from its own request counter: what
    the operator sent, whatever it logs."""
    method, url, headers, _, _ = api_client.param_serialize(
        "GET", "/metrics", header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"]
    )
    text = api_client.call_api(method, url, header_params=headers).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if (labels.get("resource"), labels.get("verb"), labels.get("code")) == ("deployments", "APPLY", "422"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_refused_deployment_is_in_status_without_a_hot_loop_and_a_fix_applies_at_once(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    manifest = example("llama-3.1-8b-tgi")
    name = manifest["metadata"]["name"]
    manifest["spec"].setdefault("scheduling", {})["affinity"] = BAD_AFFINITY
    before = refused_deployment_applies(api_client)
    create(api_client, namespace, manifest)
    obj = wait_condition(api_client, namespace, name, operator, type_="Degraded", status="True", timeout=60)
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "ChildRejected"
    assert f'Deployment.apps "{name}" is invalid' in degraded["message"]
    assert "matchExpressions[0].values: Required value" in degraded["message"]
    assert obj["status"]["phase"] == "Failed"
    ready = condition(obj, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "ChildRejected")

    first = refused_deployment_applies(api_client) - before
    assert first >= 1, "the status says refused, so the apiserver must have refused an apply"
    time.sleep(WATCH_SECONDS)  # measuring a rate: how many refused applies in a fixed window
    again = refused_deployment_applies(api_client) - before - first
    assert again <= 2, f"{again:.0f} refused applies of an unchanged spec in {WATCH_SECONDS:.0f} s: a hot loop"
    events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert [e.reason for e in events if e.involved_object.name == name].count("ChildRejected") == 1

    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"scheduling": {"affinity": None}}}
    )

    def applied() -> dict[str, Any] | None:
        obj = get_ld(api_client, namespace, name)
        degraded = condition(obj, "Degraded")
        fresh = degraded is not None and degraded.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if fresh and degraded is not None and degraded["reason"] != "ChildRejected" else None

    fixed = poll_until(applied, 20, "the fixed spec applied without waiting for the back-off")
    assert fixed["status"]["phase"] != "Failed"
    kube_client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)  # exists now


def test_pods_refused_by_a_quota_show_as_degraded_with_its_message(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    kube_client.CoreV1Api(api_client).create_namespaced_resource_quota(
        namespace,
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}},
    )
    manifest = example("llama-3.1-8b-tgi")
    name = manifest["metadata"]["name"]
    create(api_client, namespace, manifest)
    obj = wait_condition(api_client, namespace, name, operator, type_="Degraded", status="True", timeout=60)
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "PodsRejected"
    assert "exceeded quota: no-pods" in degraded["message"]
    assert f"Deployment {name} cannot create pods" in degraded["message"]
    assert obj["status"]["phase"] == "Degraded"
