"""The operator, unmodified, against the real control plane: apply, schedule, status, drift, GC, restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
# Example -> the pool its pods must land on (the pool's `nvidia.com/gpu.product`, or cpu).
EXPECTED_POOL = {
    "llama-3.1-8b-vllm-24gb": "NVIDIA-L4",
    "llama-3.1-8b-tgi": "NVIDIA-L4",
    "llama-3.3-70b-awq-vllm-48gb": "NVIDIA-L40S",
    "llama-4-scout-int4-h100-tools-lora": "NVIDIA-H100-80GB-HBM3",
    "llama-3.2-3b-gguf-cpu": "cpu",
}


def custom(api_client: Any) -> Any:
    return kube_client.CustomObjectsApi(api_client)


def create(api_client: Any, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )
    return result


def get_ld(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def wait_condition(
    api_client: Any, namespace: str, name: str, operator: OperatorProcess, *, type_: str, status: str, timeout: float
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_ld(api_client, namespace, name)
        found = condition(obj, type_)
        generation = obj["metadata"].get("generation")
        if found and found["status"] == status and found.get("observedGeneration") == generation:
            return obj
        return None

    try:
        return poll_until(check, timeout, f"{name}: {type_}={status}")
    except pytest.fail.Exception:
        print(operator.log_tail())  # shown by pytest only when the test fails
        print(yaml.safe_dump(get_ld(api_client, namespace, name).get("status")))
        raise


def example(stem: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "examples" / f"{stem}.yaml").read_text())
    return manifest


def pods_of(api_client: Any, namespace: str, name: str) -> list[Any]:
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={name}"
    )
    return list(pods.items)


@pytest.mark.parametrize("stem", sorted(EXPECTED_POOL))
def test_example_is_placed_on_the_planned_pool_and_ready(
    api_client: Any, namespace: str, operator: OperatorProcess, stem: str
) -> None:
    manifest = example(stem)
    name = manifest["metadata"]["name"]
    created = create(api_client, namespace, manifest)
    ready = wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    assert ready["status"]["phase"] == "Ready"
    assert ready["status"]["observedGeneration"] == created["metadata"]["generation"]

    apps, core, policy = (kube_client.AppsV1Api(api_client), kube_client.CoreV1Api(api_client),
                          kube_client.PolicyV1Api(api_client))  # fmt: skip
    children = [
        apps.read_namespaced_deployment(name, namespace),
        core.read_namespaced_service(name, namespace),
        policy.read_namespaced_pod_disruption_budget(name, namespace),
    ]
    for child in children:
        (ref,) = child.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == (
            "LlamaDeployment",
            name,
            created["metadata"]["uid"],
            True,
        )
        managers = {entry.manager for entry in child.metadata.managed_fields if entry.operation == "Apply"}
        assert managers == {"llama-operator"}

    events = core.list_namespaced_event(namespace).items
    planned = [e for e in events if e.reason == "Planned" and e.involved_object.name == name]
    assert planned, "the sizing decision is posted as an Event"
    assert ready["status"]["gpus"].split()[0] in planned[0].message

    expected = EXPECTED_POOL[stem]
    pods = pods_of(api_client, namespace, name)
    assert len(pods) == manifest["spec"].get("replicas", 1)
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        product = node.metadata.labels.get("nvidia.com/gpu.product", "cpu")
        assert product == expected, f"{pod.metadata.name} landed on {pod.spec.node_name} ({product})"


def test_spec_change_rolls_a_new_replicaset_and_converges(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    manifest = example("llama-3.1-8b-tgi")
    name = manifest["metadata"]["name"]
    create(api_client, namespace, manifest)
    wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    apps = kube_client.AppsV1Api(api_client)
    before = apps.read_namespaced_deployment(name, namespace).metadata.generation
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"model": {"contextLength": 2048}}}
    )
    obj = wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    assert obj["status"]["sizing"]["contextLength"] == 2048
    deployment = apps.read_namespaced_deployment(name, namespace)
    assert deployment.metadata.generation > before
    args = deployment.spec.template.spec.containers[0].args
    assert args[args.index("--max-total-tokens") + 1] == "2048"

    def rolled() -> bool | None:
        sets = apps.list_namespaced_replica_set(namespace, label_selector=f"llamaops.io/deployment={name}").items
        return True if len(sets) >= 2 else None

    poll_until(rolled, 60, "a second ReplicaSet")


def test_hand_edit_is_reverted_and_delete_collects_children(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    manifest = example("llama-3.1-8b-vllm-24gb")
    name = manifest["metadata"]["name"]
    create(api_client, namespace, manifest)
    wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    apps = kube_client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment(name, namespace, {"spec": {"strategy": {"rollingUpdate": {"maxUnavailable": 1}}}})

    def reverted() -> bool | None:
        strategy = apps.read_namespaced_deployment(name, namespace).spec.strategy.rolling_update
        return True if strategy.max_unavailable == 0 else None

    poll_until(reverted, 30, "the operator to revert maxUnavailable to 0")

    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def collected() -> bool | None:
        try:
            apps.read_namespaced_deployment(name, namespace)
        except ApiException as error:
            return True if error.status == 404 else None
        return None

    poll_until(collected, 60, "garbage collection of the Deployment")


def test_a_model_that_fits_nowhere_is_refused_with_alternatives(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LlamaDeployment",
        "metadata": {"name": "too-big"},
        "spec": {"model": {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"}},
    }
    create(api_client, namespace, manifest)
    obj = wait_condition(api_client, namespace, "too-big", operator, type_="Fits", status="False", timeout=60)
    fits = condition(obj, "Fits")
    assert fits is not None
    assert "quantization: fp8" in fits["message"]
    assert obj["status"]["phase"] == "Failed"
    events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert any(e.reason == "DoesNotFit" and e.involved_object.name == "too-big" for e in events)
    with pytest.raises(ApiException) as missing:
        kube_client.AppsV1Api(api_client).read_namespaced_deployment("too-big", namespace)
    assert missing.value.status == 404


def test_exhausted_gpus_show_the_schedulers_reason(api_client: Any, namespace: str, operator: OperatorProcess) -> None:
    manifest = example("llama-4-scout-int4-h100-tools-lora")
    manifest["spec"]["replicas"] = 40  # the H100 pool has far fewer GPUs
    name = manifest["metadata"]["name"]
    create(api_client, namespace, manifest)
    obj = wait_condition(api_client, namespace, name, operator, type_="Degraded", status="True", timeout=90)
    ready = condition(obj, "Ready")
    assert ready is not None
    assert ready["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in ready["message"]


def test_operator_restart_converges_without_duplicates(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    operator.kill()
    manifest = example("llama-3.1-8b-tgi")
    name = manifest["metadata"]["name"]
    create(api_client, namespace, manifest)
    operator.start()
    wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    operator.kill()
    operator.start()
    wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=90)
    deployments = kube_client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items
    services = kube_client.CoreV1Api(api_client).list_namespaced_service(namespace).items
    assert [d.metadata.name for d in deployments] == [name]
    assert [s.metadata.name for s in services] == [name]
    assert len(pods_of(api_client, namespace, name)) == 1
