"""Adapter rollouts on real llama-server pods: a swap under load drops nothing, a broken adapter rolls
back by itself, and an operator killed at every step resumes without a duplicate surge."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client as kube_client

from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    get_llamadeployment,
    tiny_llama_deployment,
    wait_adapter_rollout,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp")]

NAME = "tiny-adapters"
REPLICAS = 2
CHAT_TEMPLATE_ARGS = ["--chat-template", "vicuna"]  # the tiny model's own template yields whitespace replies
ROLLOUT_TIMEOUT = 120


@pytest.fixture(scope="module")
def deployed(api_client: Any, operator: OperatorProcess, assets: ServingAssets) -> str:
    namespace = create_namespace(api_client)
    manifest = tiny_llama_deployment(NAME, assets, adapters=True, extra_args=CHAT_TEMPLATE_ARGS, max_sequences=2)
    manifest["spec"]["replicas"] = REPLICAS
    manifest["spec"]["adapterRollout"] = {
        "canaryReplicas": 1,
        "pauseSeconds": 4,
        "timeoutSeconds": ROLLOUT_TIMEOUT,
        "smokeRequest": {"prompt": "Say hello.", "maxTokens": 4},
    }
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )
    wait_rollout(
        api_client, namespace, lambda r: r.get("phase") == "Succeeded", "the first adapter set to serve", operator
    )
    return namespace


def get(api_client: Any, namespace: str) -> dict[str, Any]:
    return get_llamadeployment(api_client, namespace, NAME)


def wait_rollout(api_client: Any, namespace: str, check: Any, what: str, operator: OperatorProcess) -> dict[str, Any]:
    return wait_adapter_rollout(
        api_client, namespace, NAME, check, what=what, operator=operator, timeout_seconds=ROLLOUT_TIMEOUT
    )


def set_version(api_client: Any, namespace: str, version: str, assets: ServingAssets) -> None:
    """The adapter at ``version`` from the hub: v2, or v3 (parses, but llama-server refuses to load it)."""
    adapters = get(api_client, namespace)["spec"]["adapters"]
    adapters[0] = {**adapters[0], "version": version, "source": assets.adapter_source(version)}
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": adapters}}
    )


def chat_with_adapter() -> dict[str, Any]:
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "lora": [{"id": 0, "scale": 1.0}],
    }


def pods_by_adapters(api_client: Any, namespace: str) -> dict[str, str]:
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    return {
        p.metadata.name: (p.metadata.annotations or {}).get("llamaops.io/adapters", "")
        for p in pods.items
        if p.metadata.deletion_timestamp is None
    }


class PodCounter(threading.Thread):
    """The largest number of live (not terminating) pods seen while it runs: surge beyond
    replicas + canaryReplicas would mean a duplicated step."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api_client, self.namespace = api_client, namespace
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.most = max(self.most, len(pods_by_adapters(self.api_client, self.namespace)))


def test_swap_under_load_with_an_operator_killed_at_every_step(
    api_client: Any, deployed: str, operator: OperatorProcess, assets: ServingAssets
) -> None:
    namespace = deployed
    counter = PodCounter(api_client, namespace)
    counter.start()
    with Load(api_client, namespace, NAME, chat_with_adapter, clients=2, max_seconds=150) as load:
        poll_until(lambda: True if load.result.total >= 5 else None, 30, "the load to be flowing")
        operator.kill()  # step 1: the spec changes while no operator runs
        set_version(api_client, namespace, "v2", assets)
        operator.start()
        canary = wait_rollout(api_client, namespace, lambda r: r.get("step") == "Canary", "the canary step", operator)
        operator.kill()  # step 2: killed while the canary waits for its smoke request
        operator.start()
        paused = wait_rollout(api_client, namespace, lambda r: "pausing" in r.get("message", ""), "the pause", operator)
        operator.kill()  # step 3: killed during the pause after the canary
        operator.start()
        done = wait_rollout(
            api_client, namespace, lambda r: r.get("phase") == "Succeeded" and "tiny-lora@v2" in r.get("target", []),
            "v2 to serve everywhere", operator,
        )  # fmt: skip
        result = load.stop()
    counter.done.set()
    counter.join()
    print(f"swap v1 -> v2: {result.total} requests, {len(result.failures)} failed, per pod {dict(result.succeeded)}")
    assert result.failures == []
    assert result.total > 10
    assert canary["target"] == ["tiny-lora@v2"]
    assert paused["verifiedPods"], "the canary's verification survived the restart"
    assert set(done["verifiedPods"]) >= set(paused["verifiedPods"])
    assert set(pods_by_adapters(api_client, namespace).values()) == {"tiny-lora@v2"}
    assert counter.most <= REPLICAS + 1, f"{counter.most} live pods: a surge was duplicated"
    replica_sets = kube_client.AppsV1Api(api_client).list_namespaced_replica_set(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    assert len(replica_sets.items) == 2, "one ReplicaSet per adapter set, none created twice"


def test_broken_adapter_rolls_back_by_itself_and_is_not_retried(
    api_client: Any, deployed: str, operator: OperatorProcess, assets: ServingAssets
) -> None:
    namespace = deployed
    before = (get(api_client, namespace).get("status") or {}).get("adapterRollout") or {}
    last_good = [f"{a['name']}@{a['version']}" for a in before.get("serving", [])]
    with Load(api_client, namespace, NAME, chat_with_adapter, clients=2, max_seconds=150) as load:
        poll_until(lambda: True if load.result.total >= 5 else None, 30, "the load to be flowing")
        set_version(api_client, namespace, "v3", assets)
        rolled = wait_rollout(api_client, namespace, lambda r: r.get("phase") == "RolledBack", "the rollback", operator)

        def only_last_good() -> bool | None:
            return True if set(pods_by_adapters(api_client, namespace).values()) == set(last_good) else None

        poll_until(only_last_good, 60, "every pod back on the last good set")
        result = load.stop()
    print(f"broken v3: {result.total} requests, {len(result.failures)} failed; {rolled['message']}")
    assert result.failures == []
    assert "tiny-lora@v3" in rolled["failed"]
    assert "crashing" in rolled["message"] or "smoke request failed" in rolled["message"]
    obj = get(api_client, namespace)
    condition = next(c for c in obj["status"]["conditions"] if c["type"] == "AdapterRollout")
    assert (condition["status"], condition["reason"]) == ("False", "RolledBack")
    assert obj["status"]["adapters"] == ",".join(last_good)
    events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert any(e.reason == "AdapterRolledBack" for e in events)
    # Not retried: the Deployment keeps the last good set while the spec still names v3.
    deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace)
    assert deployment.spec.template.metadata.annotations["llamaops.io/adapters"] == ",".join(last_good)
