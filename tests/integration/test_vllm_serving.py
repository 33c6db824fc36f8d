"""Real vLLM, started from pods the operator rendered: the init container downloads the model from
the hub the operator is configured with, `vllm serve` runs with the rendered flags unchanged, and
the pod answers a chat completion and a tool call; under load `vllm:num_requests_waiting` rises in
the real Prometheus and the autoscaler scales the deployment on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION, get_llamadeployment
from tests.integration.test_llamacpp_serving import wait_ld_condition
from tests.integration.vllm_fixtures import (
    GPU_POOL,
    POD_READY_SECONDS,
    VllmAssets,
    vllm_llama_deployment,
    vllm_pod_urls,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("vllm")]

NAME = "vllm-chat"
MAX_REPLICAS = 2
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def operator_settings(plane: ControlPlane) -> dict[str, Any]:
    assert plane.prometheus is not None
    return {"prometheusUrl": plane.prometheus.url}


@pytest.fixture(scope="module")
def deployed(api_client: Any, operator: OperatorProcess) -> str:
    """The vLLM example with tool calling and queue autoscaling (1..2 replicas), Ready."""
    namespace = create_namespace(api_client)
    manifest = vllm_llama_deployment(NAME, adapters=[], replicas=1, tool_calling=True)
    manifest["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "metric": "queue",
        "targetPerReplica": 1,
        "evaluationIntervalSeconds": 1,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 1, "cooldownSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 3600, "maxStep": 1, "cooldownSeconds": 60},
    }
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )
    wait_ld_condition(api_client, namespace, NAME, operator, type_="Ready", status="True", timeout=POD_READY_SECONDS)
    return namespace


def only_pod(api_client: Any, namespace: str) -> Any:
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    [pod] = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    return pod


def test_the_rendered_pod_downloads_the_model_and_runs_vllm_serve(
    api_client: Any, deployed: str, assets: VllmAssets, evidence: Callable[[str], None]
) -> None:
    namespace = deployed
    pod = only_pod(api_client, namespace)
    template = kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace).spec.template.spec
    engine = pod.spec.containers[0]
    assert engine.command == ["vllm", "serve"]
    assert engine.args == template.containers[0].args, "the pod runs the operator's arguments unchanged"
    assert engine.args[0] == "/models/model"
    assert "--max-model-len" in engine.args
    assert pod.spec.node_name.startswith(f"kwok-{GPU_POOL}-")
    (fetch,) = pod.status.init_container_statuses
    assert (fetch.name, fetch.state.terminated.exit_code) == ("fetch-model", 0)
    env = {e.name: e.value for e in pod.spec.init_containers[0].env or []}
    assert env["HF_ENDPOINT"] == assets.hub.url
    downloaded = assets.hub.downloads()
    evidence(f"hub downloads: {downloaded}")
    assert downloaded.get("meta-llama/Llama-3.1-8B-Instruct/model.safetensors", 0) >= 1


def test_a_chat_completion_from_real_vllm(api_client: Any, deployed: str, evidence: Callable[[str], None]) -> None:
    [url] = vllm_pod_urls(api_client, deployed, NAME).values()
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [NAME]
    assert models["data"][0]["owned_by"] == "vllm"  # the real server, not a stand-in
    body = {"model": NAME, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    evidence(f"real vLLM chat completion: {reply.status_code} {reply.text[:400]}")
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert reply.json()["usage"]["completion_tokens"] >= 1


def test_a_tool_call_request_is_accepted_with_the_rendered_parser(
    api_client: Any, deployed: str, evidence: Callable[[str], None]
) -> None:
    pod = only_pod(api_client, deployed)
    args = pod.spec.containers[0].args
    assert "--enable-auto-tool-choice" in args
    assert args[args.index("--tool-call-parser") + 1] == "llama3_json"
    [url] = vllm_pod_urls(api_client, deployed, NAME).values()
    question = {"model": NAME, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                "max_tokens": 16}  # fmt: skip
    reply = httpx.post(f"{url}/v1/chat/completions", json={**question, "tools": [WEATHER_TOOL], "tool_choice": "auto"},
                       timeout=60)  # fmt: skip
    evidence(f"real vLLM tool-call response: {reply.status_code} {reply.text[:400]}")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    plain = httpx.post(f"{url}/v1/chat/completions", json=question, timeout=60)
    assert plain.status_code == 200, plain.text
    with_tools, without = reply.json()["usage"]["prompt_tokens"], plain.json()["usage"]["prompt_tokens"]
    evidence(f"prompt tokens with the tool: {with_tools}, without: {without}")
    # The chat template rendered the tool into the prompt (a random model rarely calls it).
    assert with_tools > without
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert f'vllm:num_requests_waiting{{engine="0",model_name="{NAME}"}}' in metrics


def long_chat() -> dict[str, Any]:
    """Long enough on CPU to keep both of the engine's sequences busy and the rest waiting."""
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 96,
        "ignore_eos": True,
    }


def test_the_queue_rises_in_prometheus_and_the_autoscaler_scales_on_it(
    api_client: Any, deployed: str, plane: ControlPlane, operator: OperatorProcess, evidence: Callable[[str], None]
) -> None:
    namespace = deployed
    assert plane.prometheus is not None
    query = f'max(vllm:num_requests_waiting{{namespace="{namespace}",llamaops_io_deployment="{NAME}"}})'
    apps = kube_client.AppsV1Api(api_client)
    with Load(api_client, namespace, NAME, long_chat, clients=6, max_seconds=POD_READY_SECONDS) as load:

        def waiting() -> float | None:
            samples = plane.prometheus.query(query) if plane.prometheus else []
            value = max((s.value for s in samples), default=0.0)
            return value if value >= 1 else None

        peak = poll_until(waiting, 60, "vllm:num_requests_waiting >= 1 in Prometheus")
        evidence(f"Prometheus: {query} = {peak}")
        poll_until(
            lambda: True if apps.read_namespaced_deployment(NAME, namespace).spec.replicas == MAX_REPLICAS else None,
            60,
            f"the autoscaler to scale to {MAX_REPLICAS} replicas",
        )
        status = get_llamadeployment(api_client, namespace, NAME)["status"]
        evidence(f"autoscaling status: {json.dumps(status.get('autoscaling'))}")
        wait_ld_condition(
            api_client, namespace, NAME, operator, type_="Ready", status="True", timeout=POD_READY_SECONDS
        )
        poll_until(
            lambda: True if len(vllm_pod_urls(api_client, namespace, NAME)) == MAX_REPLICAS else None,
            POD_READY_SECONDS,
            "both pods serving",
        )
        result = load.stop()
    evidence(
        f"load during the scale-up: {result.total} requests, {len(result.failures)} failed, {dict(result.succeeded)}"
    )
    assert result.failures == []
    assert status["autoscaling"]["metricsAvailable"] is True
