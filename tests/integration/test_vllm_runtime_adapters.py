"""vLLM's runtime adapter API, driven by the operator on real `vllm serve` pods: the adapters come from
the operator's hub (vLLM downloads them itself when the operator posts their hub id); a swap loads pod by
pod without restarting any pod and without a failed request, a broken adapter (refused on load) rolls
back by itself, and a pod that restarts gets the adapters before it takes traffic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from kubernetes import client as kube_client

from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION, get_llamadeployment, wait_adapter_rollout
from tests.integration.vllm_fixtures import (
    ADAPTER_REPOS,
    POD_READY_SECONDS,
    support_adapter,
    vllm_llama_deployment,
    vllm_pod_urls,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("vllm")]

NAME = "vllm-adapters"
REPLICAS = 2
TIMEOUT = POD_READY_SECONDS


@pytest.fixture(scope="module")
def deployed(api_client: Any, operator: OperatorProcess) -> str:
    namespace = create_namespace(api_client)
    manifest = vllm_llama_deployment(NAME, adapters=[support_adapter("v1")], replicas=REPLICAS)
    manifest["spec"]["adapterRollout"] = {
        "smokeRequest": {"prompt": "Say hello.", "maxTokens": 4},
        "timeoutSeconds": 120,
    }
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )
    wait_rollout(api_client, namespace, lambda r: r.get("phase") == "Succeeded", "v1 loaded everywhere", operator)
    return namespace


def get(api_client: Any, namespace: str) -> dict[str, Any]:
    return get_llamadeployment(api_client, namespace, NAME)


def wait_rollout(api_client: Any, namespace: str, check: Any, what: str, operator: OperatorProcess) -> dict[str, Any]:
    return wait_adapter_rollout(
        api_client, namespace, NAME, check, what=what, operator=operator, timeout_seconds=TIMEOUT
    )


def set_adapter(api_client: Any, namespace: str, version: str) -> None:
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": [support_adapter(version)]}}
    )


def pods(api_client: Any, namespace: str) -> dict[str, str]:
    """Live pod name -> the adapter set it has loaded (its llamaops.io/adapters-loaded condition)."""
    listed = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    loaded = {}
    for pod in listed.items:
        if pod.metadata.deletion_timestamp is None:
            condition = next((c for c in pod.status.conditions or [] if c.type == "llamaops.io/adapters-loaded"), None)
            loaded[pod.metadata.name] = condition.message if condition else ""
    return loaded


def chat_by_adapter_name() -> dict[str, Any]:
    return {"model": "support", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}


def test_the_first_set_is_loaded_at_run_time_and_answers(
    api_client: Any, deployed: str, evidence: Callable[[str], None]
) -> None:
    """The operator loaded v1 into each running pod through vLLM's API; vLLM downloaded it from the hub."""
    namespace = deployed
    assert set(pods(api_client, namespace).values()) == {"support@v1"}
    for pod, url in sorted(vllm_pod_urls(api_client, namespace, NAME).items()):
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        adapter_card = next(m for m in models if m["id"] == "support")
        assert (adapter_card["parent"], adapter_card["root"]) == (NAME, ADAPTER_REPOS["v1"])
        reply = httpx.post(f"{url}/v1/chat/completions", json=chat_by_adapter_name(), timeout=60)
        evidence(f"{pod}: runtime-loaded adapter {adapter_card}; chat with model 'support': "
                 f"{reply.status_code} {reply.text[:200]}")  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "support"


def test_swap_loads_pod_by_pod_without_restarts_or_failed_requests(
    api_client: Any, deployed: str, operator: OperatorProcess, evidence: Callable[[str], None]
) -> None:
    namespace = deployed
    before = pods(api_client, namespace)
    assert set(before.values()) == {"support@v1"}
    with Load(api_client, namespace, NAME, chat_by_adapter_name, clients=3, max_seconds=120) as load:
        poll_until(lambda: True if load.result.total >= 10 else None, 30, "the load to be flowing")
        set_adapter(api_client, namespace, "v2")
        done = wait_rollout(
            api_client, namespace, lambda r: r.get("phase") == "Succeeded" and r.get("target") == ["support@v2"],
            "v2 loaded everywhere", operator,
        )  # fmt: skip
        result = load.stop()
    evidence(f"vLLM runtime swap: {result.total} requests, {len(result.failures)} failed, {dict(result.succeeded)}")
    assert result.failures == []
    after = pods(api_client, namespace)
    assert set(after) == set(before), "no pod was restarted or replaced"
    assert set(after.values()) == {"support@v2"}
    assert sorted(done["verifiedPods"]) == sorted(after)


def test_broken_adapter_is_rolled_back_by_itself(
    api_client: Any, deployed: str, operator: OperatorProcess, evidence: Callable[[str], None]
) -> None:
    namespace = deployed
    with Load(api_client, namespace, NAME, chat_by_adapter_name, clients=3, max_seconds=120) as load:
        poll_until(lambda: True if load.result.total >= 10 else None, 30, "the load to be flowing")
        set_adapter(api_client, namespace, "v3")
        rolled = wait_rollout(api_client, namespace, lambda r: r.get("phase") == "RolledBack", "the rollback", operator)
        poll_until(
            lambda: True if set(pods(api_client, namespace).values()) == {"support@v2"} else None,
            60,
            "the canary back on v2",
        )
        result = load.stop()
    evidence(f"vLLM broken v3: {result.total} requests, {len(result.failures)} failed; {rolled['message']}")
    assert result.failures == []
    assert "support@v3" in rolled["failed"]
    assert "HTTP 404" in rolled["message"], rolled["message"]  # vLLM's answer to an adapter without its config
    assert "No adapter found" in rolled["message"], rolled["message"]


def test_a_restarted_pod_gets_its_adapters_before_traffic(
    api_client: Any, deployed: str, operator: OperatorProcess
) -> None:
    namespace = deployed
    core = kube_client.CoreV1Api(api_client)
    victim = sorted(pods(api_client, namespace))[0]
    core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

    def replacement_ready() -> Any:
        listed = core.list_namespaced_pod(namespace, label_selector=f"llamaops.io/deployment={NAME}").items
        fresh = [p for p in listed if p.metadata.name != victim and p.metadata.deletion_timestamp is None]
        for pod in fresh:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and pod.metadata.name not in {victim} and pods(api_client, namespace).get(pod.metadata.name):
                return pod
        return None

    pod = poll_until(replacement_ready, TIMEOUT, "a replacement pod Ready")
    loaded = next(c for c in pod.status.conditions if c.type == "llamaops.io/adapters-loaded")
    gate = next(c for c in pod.status.conditions if c.type == "llamaops.io/adapters-verified")
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    assert loaded.message == "support@v2"
    assert gate.status == "True"
    assert ready.last_transition_time >= gate.last_transition_time, "Ready only after the adapters were verified"
