"""placement.deviceAllocation: DRA on the real control plane: the harness publishes the GPU pools as the NVIDIA
DRA driver would (ResourceSlices of 24, 48 and 80 GB devices, DeviceClass gpu.nvidia.com), the operator renders
a ResourceClaimTemplate from the plan's memory per GPU, the real controller-manager makes each pod's
ResourceClaim from it and the real scheduler allocates devices.

Shown: every allocated device has at least the plan's memory (a plan that needs 37 GB never gets a 24 GB
L4) and the pod runs on the node whose slice holds it; a claim no device satisfies leaves the pod Pending with
the scheduler's reason in our status; a changed claim is a new template, the old one deleted once the pods
rolled; turned off, no template is left.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator.sizing.quantity import parse_capacity
from llama_operator_dev import ControlPlane
from llama_operator_dev.dra import DRIVER
from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
DRA_GROUP, DRA_VERSION = "resource.k8s.io", "v1"
TIMEOUT = 90
MIB = 1024**2
# Llama 3.1 8B, 32k context x 4 sequences on one GPU: 37,394 MiB per device (more than an L4's 23,034 MiB).
NEEDS_MIB = 37_394


def spec(**placement: Any) -> dict[str, Any]:
    return {
        "model": {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
                  "contextLength": 32768},
        "engine": {"type": "vllm"},
        "serving": {"maxConcurrentSequences": 4},
        "replicas": 2,
        "placement": {"gpuCount": 1, "deviceAllocation": "DRA", **placement},
    }  # fmt: skip


@pytest.fixture(scope="module")
def devices(plane: ControlPlane) -> dict[tuple[str, str], int]:
    """(node, device) -> memory bytes of every published GPU device."""
    assert plane.publish_gpu_devices() > 0
    with plane.new_api_client() as api:
        slices = kube_client.CustomObjectsApi(api).list_cluster_custom_object(DRA_GROUP, DRA_VERSION, "resourceslices")
    return {
        (s["spec"]["pool"]["name"], d["name"]): parse_capacity(d["capacity"]["memory"]["value"])
        for s in slices["items"]
        if s["spec"]["driver"] == DRIVER
        for d in s["spec"]["devices"]
    }


def create(api: Any, namespace: str, name: str, body: dict[str, Any]) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LlamaDeployment", "metadata": {"name": name},
                "spec": body}  # fmt: skip
    kube_client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)


def templates(api: Any, namespace: str) -> list[dict[str, Any]]:
    found = kube_client.CustomObjectsApi(api).list_namespaced_custom_object(
        DRA_GROUP, DRA_VERSION, namespace, "resourceclaimtemplates"
    )
    return list(found["items"])


def live_pods(api: Any, namespace: str, name: str) -> list[Any]:
    pods = kube_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"llamaops.io/deployment={name}")
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def allocations(api: Any, namespace: str, name: str, replicas: int) -> dict[str, list[tuple[str, str]]] | None:
    """pod -> the (pool, device) pairs its claim got, once `replicas` pods run on allocated claims."""
    claims = kube_client.CustomObjectsApi(api).list_namespaced_custom_object(
        DRA_GROUP, DRA_VERSION, namespace, "resourceclaims"
    )["items"]
    by_name = {c["metadata"]["name"]: c for c in claims}
    out: dict[str, list[tuple[str, str]]] = {}
    for pod in live_pods(api, namespace, name):
        if pod.status.phase != "Running":
            return None
        statuses = pod.status.resource_claim_statuses or []
        claim = by_name.get(statuses[0].resource_claim_name) if statuses else None
        results = (((claim or {}).get("status") or {}).get("allocation") or {}).get("devices", {}).get("results")
        if not results:
            return None
        out[pod.metadata.name] = [(r["pool"], r["device"]) for r in results]
    return out if len(out) == replicas else None


def ld_status(api: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = kube_client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    status: dict[str, Any] = obj.get("status") or {}
    return status


def test_claims_are_allocated_by_memory_and_the_pods_run_where_their_devices_are(
    api_client: Any, namespace: str, operator: OperatorProcess, devices: dict[tuple[str, str], int]
) -> None:
    assert {memory // MIB for memory in devices.values()} == {23_034, 46_068, 81_559}  # the three pools' GPUs
    create(api_client, namespace, "dra-chat", spec())
    (template,) = poll_until(lambda: templates(api_client, namespace) or None, TIMEOUT, "the ResourceClaimTemplate")
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"]["deviceClassName"] == "gpu.nvidia.com"
    assert request["exactly"]["count"] == 1
    assert f"quantity('{NEEDS_MIB}Mi')" in request["exactly"]["selectors"][0]["cel"]["expression"]

    allocated = poll_until(lambda: allocations(api_client, namespace, "dra-chat", 2), TIMEOUT, "2 pods on devices")
    nodes = {p.metadata.name: p.spec.node_name for p in live_pods(api_client, namespace, "dra-chat")}
    for pod, results in allocated.items():
        assert len(results) == 1, results
        for pool, device in results:
            assert pool == nodes[pod], f"{pod} runs on {nodes[pod]} but its device is in pool {pool}"
            assert devices[(pool, device)] >= NEEDS_MIB * MIB, f"{pod} got {device} of {pool}"
            assert "gpu-24gb" not in pool
    used = [r for results in allocated.values() for r in results]
    assert len(set(used)) == len(used), "two pods share a device"
    poll_until(lambda: ld_status(api_client, namespace, "dra-chat").get("phase") == "Ready" or None, TIMEOUT, "Ready")

    # A changed claim is a new template (a template cannot change); the old one goes once the pods rolled.
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "dra-chat",
        {"spec": {"placement": {"productNames": ["NVIDIA L40S", "NVIDIA H100 80GB HBM3"]}}},
    )  # fmt: skip

    def rolled_to_a_new_template() -> str | None:
        names = [t["metadata"]["name"] for t in templates(api_client, namespace)]
        return names[0] if len(names) == 1 and names[0] != template["metadata"]["name"] else None

    new_name = poll_until(rolled_to_a_new_template, TIMEOUT, "one new template, the old deleted")
    pods = poll_until(lambda: allocations(api_client, namespace, "dra-chat", 2), TIMEOUT, "2 pods on new claims")
    for pod in live_pods(api_client, namespace, "dra-chat"):
        assert pod.spec.resource_claims[0].resource_claim_template_name == new_name
    assert all(devices[r] >= NEEDS_MIB * MIB for results in pods.values() for r in results)

    # Back to the device plugin: nvidia.com/gpu limits again, and no template left behind.
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "dra-chat",
        {"spec": {"placement": {"deviceAllocation": "DevicePlugin", "productNames": None}}},
    )  # fmt: skip
    poll_until(lambda: templates(api_client, namespace) == [] or None, TIMEOUT, "no template after DRA is off")
    deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment("dra-chat", namespace)
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert deployment.spec.template.spec.resource_claims is None


def test_a_claim_no_device_satisfies_leaves_the_pod_pending_with_the_schedulers_reason(
    api_client: Any, namespace: str, operator: OperatorProcess, devices: dict[tuple[str, str], int]
) -> None:
    create(api_client, namespace, "dra-b200", {**spec(productNames=["NVIDIA B200"]), "replicas": 1})

    def unschedulable() -> dict[str, Any] | None:
        status = ld_status(api_client, namespace, "dra-b200")
        return next((c for c in status.get("conditions") or [] if c.get("reason") == "Unschedulable"), None)

    ready = poll_until(unschedulable, TIMEOUT, "a condition with reason Unschedulable")
    assert ready["status"] == ("True" if ready["type"] == "Degraded" else "False"), ready
    (pod,) = live_pods(api_client, namespace, "dra-b200")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert scheduled.status == "False"
    assert pod.spec.node_name is None
    assert scheduled.message in ready["message"], (scheduled.message, ready["message"])
    assert "claim" in scheduled.message, scheduled.message  # the scheduler says the claim cannot be allocated
