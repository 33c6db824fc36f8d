"""The local control plane behaves like a GPU cluster: real API, real scheduler, KWOK nodes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from llama_operator_dev.binaries import expected_bin_dir, read_versions
from llama_operator_dev.pools import KWOK_MANAGED_LABEL, NODE_POOL_LABEL, load_node_pools
from tests.integration.cluster_setup import poll_until, skip_without_binaries

pytestmark = pytest.mark.integration

GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def pool_nodes(api_client: Any, pool_name: str) -> list[Any]:
    selector = f"{NODE_POOL_LABEL}={pool_name}"
    return list(kube_client.CoreV1Api(api_client).list_node(label_selector=selector).items)


def is_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def gpu_deployment(name: str, replicas: int, gpu_product: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {f"{GPU}.product": gpu_product},
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "resources": {"requests": {GPU: "1"}, "limits": {GPU: "1"}},
                        }
                    ],
                },
            },
        },
    }


def test_apiserver_reports_the_pinned_kubernetes_version(control_plane: ControlPlane, api_client: Any) -> None:
    version = kube_client.VersionApi(api_client).get_code()

    assert version.git_version == read_versions().kubernetes
    assert control_plane.server_url.startswith("https://127.0.0.1:")


def test_kubectl_and_kopf_accept_the_kubeconfig(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    kubectl = expected_bin_dir() / "kubectl"
    completed = subprocess.run(
        [str(kubectl), f"--kubeconfig={control_plane.kubeconfig_path}", "version", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    server_version = json.loads(completed.stdout)["serverVersion"]["gitVersion"]
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig_path))
    kopf_connection = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())

    assert server_version == read_versions().kubernetes
    assert kopf_connection is not None
    assert kopf_connection.server == control_plane.server_url
    assert kopf_connection.certificate_data is not None


def test_pool_nodes_carry_gpu_labels_capacity_and_become_ready(control_plane: ControlPlane, api_client: Any) -> None:
    pools = load_node_pools()
    assert {pool.name for pool in pools} >= {"gpu-24gb", "gpu-48gb", "h100-80gb", "cpu"}

    for pool in pools:
        nodes = pool_nodes(api_client, pool.name)
        assert len(nodes) == pool.node_count, pool.name
        for node in nodes:
            labels = node.metadata.labels
            assert labels[KWOK_MANAGED_LABEL] == "true"
            for key, value in pool.labels.items():
                assert labels[key] == value, (node.metadata.name, key)
            assert node.status.allocatable.get(GPU) == pool.capacity.get(GPU), node.metadata.name
            assert node.status.capacity["cpu"] == pool.capacity["cpu"]
            taint_keys = {taint.key for taint in node.spec.taints or []}
            assert (GPU in taint_keys) == (GPU in pool.capacity), node.metadata.name

    l40s = pool_nodes(api_client, "gpu-48gb")
    assert {node.metadata.labels[f"{GPU}.product"] for node in l40s} == {"NVIDIA-L40S"}
    assert {node.status.allocatable[GPU] for node in l40s} == {"4"}
    h100 = pool_nodes(api_client, "h100-80gb")
    assert {node.metadata.labels[f"{GPU}.memory"] for node in h100} == {"81559"}

    def all_ready() -> bool | None:
        names = control_plane.node_names
        nodes = kube_client.CoreV1Api(api_client).list_node(label_selector=f"{KWOK_MANAGED_LABEL}=true").items
        ready = {node.metadata.name for node in nodes if is_ready(node)}
        return True if set(names) <= ready and names else None

    poll_until(all_ready, 60, "every pool node to be Ready")


def test_gpu_deployment_is_scheduled_onto_l40s_nodes_and_becomes_ready(api_client: Any, namespace: str) -> None:
    apps = kube_client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(namespace, body=gpu_deployment("llama-l40s", 2, "NVIDIA-L40S"))

    def ready_replicas() -> int | None:
        status = apps.read_namespaced_deployment_status("llama-l40s", namespace).status
        return status.ready_replicas if status.ready_replicas == 2 else None

    assert poll_until(ready_replicas, 90, "deployment llama-l40s to have 2 ready replicas") == 2
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector="app=llama-l40s").items
    l40s_nodes = {node.metadata.name for node in pool_nodes(api_client, "gpu-48gb")}
    assert len(pods) == 2
    assert {pod.spec.node_name for pod in pods} <= l40s_nodes
    assert all(pod.status.phase == "Running" for pod in pods)


def test_deleted_pod_on_a_fake_node_goes_away_and_is_replaced(api_client: Any, namespace: str) -> None:
    apps = kube_client.AppsV1Api(api_client)
    core = kube_client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, body=gpu_deployment("llama-h100", 1, "NVIDIA-H100-80GB-HBM3"))

    def one_ready_pod() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=llama-h100").items
        ready = [
            pod.metadata.name
            for pod in pods
            if pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None
        ]
        return ready[0] if len(pods) == 1 and ready else None

    first = poll_until(one_ready_pod, 90, "one running llama-h100 pod")
    core.delete_namespaced_pod(first, namespace)

    def replaced() -> str | None:
        pod = one_ready_pod()
        return pod if pod is not None and pod != first else None

    second = poll_until(replaced, 90, f"pod {first} to be gone and replaced")
    assert second != first


def test_pod_needing_more_gpus_than_any_node_stays_pending(api_client: Any, namespace: str) -> None:
    core = kube_client.CoreV1Api(api_client)
    most_gpus_on_a_node = max(int(pool.capacity.get(GPU, "0")) for pool in load_node_pools())
    too_many = str(most_gpus_on_a_node + 1)
    core.create_namespaced_pod(
        namespace,
        body={
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "too-big"},
            "spec": {
                "tolerations": [GPU_TOLERATION],
                "containers": [
                    {
                        "name": "engine",
                        "image": "vllm/vllm-openai:v0.11.0",
                        "resources": {"requests": {GPU: too_many}, "limits": {GPU: too_many}},
                    }
                ],
            },
        },
    )

    def unschedulable_condition() -> Any | None:
        pod = core.read_namespaced_pod("too-big", namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return condition
        return None

    condition = poll_until(unschedulable_condition, 60, "pod too-big to be marked Unschedulable")
    assert f"Insufficient {GPU}" in condition.message
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
    assert any(event.reason == "FailedScheduling" and GPU in event.message for event in events)


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    skip_without_binaries()
    pools_file = tmp_path / "pools.yaml"
    one_cpu_node = {"name": "cpu", "nodeCount": 1, "capacity": {"cpu": "4", "memory": "8Gi"}}
    pools_file.write_text(yaml.safe_dump({"pools": [one_cpu_node]}), encoding="utf-8")

    with ControlPlane(tmp_path / "plane", pools_file) as plane:
        pids = plane.pids
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        assert all(is_alive(pid) for pid in pids.values())

    assert plane.running_components() == []
    assert [name for name, pid in pids.items() if is_alive(pid) or group_exists(pid)] == []


def is_alive(pid: int) -> bool:
    """True while the pid names a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z"


def group_exists(process_group: int) -> bool:
    try:
        os.killpg(process_group, 0)
    except ProcessLookupError:
        return False
    return True
