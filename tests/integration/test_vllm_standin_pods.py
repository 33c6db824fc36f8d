"""The operator's vLLM pods, run as the vLLM stand-in on the process-backed GPU pool: a vLLM
LlamaDeployment for gpu-24gb lands on `gpu-24gb-real`, becomes Ready, and its pod answers chat."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION
from tests.integration.test_llamacpp_serving import wait_ld_condition
from tests.integration.vllm_fixtures import GPU_POOL, VllmAssets, vllm_llama_deployment, vllm_pod_urls

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("vllm")]

NAME = "llama-8b-standin"
POD_NETWORK = ipaddress.ip_network("127.0.1.0/24")
READY_TIMEOUT_SECONDS = 90


def test_the_gpu_pool_keeps_its_gpus_under_the_process_backed_kubelet(plane: ControlPlane, api_client: Any) -> None:
    assert plane.process_kubelet is not None
    core = kube_client.CoreV1Api(api_client)
    nodes = core.list_node(label_selector=f"llamaops.io/node-pool={GPU_POOL}").items
    assert sorted(node.metadata.name for node in nodes) == [f"kwok-{GPU_POOL}-0", f"kwok-{GPU_POOL}-1"]
    assert set(plane.process_kubelet.node_names) >= {node.metadata.name for node in nodes}
    for node in nodes:
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("True", "KubeletReady")  # reported by the process-backed kubelet
        assert node.status.capacity["nvidia.com/gpu"] == "4"
        assert node.status.allocatable["nvidia.com/gpu"] == "4"


def test_a_vllm_deployment_serves_from_the_standin_on_the_gpu_pool(
    api_client: Any, operator: OperatorProcess, assets: VllmAssets
) -> None:
    namespace = create_namespace(api_client)
    manifest = vllm_llama_deployment(NAME, adapters=[], replicas=1)
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )
    wait_ld_condition(
        api_client, namespace, NAME, operator, type_="Ready", status="True", timeout=READY_TIMEOUT_SECONDS
    )

    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    [pod] = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    engine = pod.spec.containers[0]
    assert engine.command == ["vllm", "serve"]
    assert pod.spec.node_name.startswith(f"kwok-{GPU_POOL}-")
    assert engine.resources.requests["nvidia.com/gpu"] == "1"
    assert ipaddress.ip_address(pod.status.pod_ip) in POD_NETWORK
    urls = vllm_pod_urls(api_client, namespace, NAME)
    assert list(urls) == [pod.metadata.name]
    url = urls[pod.metadata.name]

    models = httpx.get(f"{url}/v1/models", timeout=5).json()
    assert models["data"] == [{"id": NAME, "object": "model", "root": str(assets.model_dir), "parent": None}]
    body = {"model": NAME, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith(f"hello from {NAME} ")
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert f'vllm:num_requests_waiting{{model_name="{NAME}"}}' in metrics
