"""Autoscaling on real llama-server pods and a real Prometheus: a queue scales 1 -> N, the new pods
take load, an idle deployment scales back after the window, and a stopped Prometheus holds replicas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION, ServingAssets, tiny_llama_deployment
from tests.reliability import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp")]

NAME = "tiny-scaled"
CHAT_TEMPLATE_ARGS = ["--chat-template", "vicuna"]
SCALE_DOWN_WINDOW = 8


@pytest.fixture(scope="module")
def operator_settings(plane: ControlPlane) -> dict[str, Any]:
    """The operator reads the plane's Prometheus (the `prometheusUrl` of its config file)."""
    assert plane.prometheus is not None
    return {"prometheusUrl": plane.prometheus.url}


def autoscaled(assets: ServingAssets) -> dict[str, Any]:
    manifest = tiny_llama_deployment(NAME, assets, adapters=False, extra_args=CHAT_TEMPLATE_ARGS, max_sequences=1)
    manifest["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 3,
        "metric": "queue",
        "targetPerReplica": 1,
        "evaluationIntervalSeconds": 1,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 2, "cooldownSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW, "maxStep": 1, "cooldownSeconds": 2},
    }
    return manifest


def get(api_client: Any, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME
    )
    return obj


def scaling_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "ScalingActive"), {})


def matching(api_client: Any, namespace: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    obj = get(api_client, namespace)
    return obj if check(obj) else None


def long_chat() -> dict[str, Any]:
    return {"model": NAME, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 48}


def test_queue_scales_up_holds_without_prometheus_and_scales_back(
    api_client: Any, plane: ControlPlane, operator: OperatorProcess, assets: ServingAssets, ledger: Recorder
) -> None:
    assert plane.prometheus is not None
    namespace = create_namespace(api_client)
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, autoscaled(assets)
    )

    def active_with_one_ready() -> dict[str, Any] | None:
        obj = get(api_client, namespace)
        status = obj.get("status") or {}
        return obj if status.get("ready") == "1/1" and scaling_condition(obj).get("status") == "True" else None

    poll_until(active_with_one_ready, 90, "one ready replica and metrics from Prometheus")

    # 1. A queue: four clients on one slot keep requests deferred; the operator scales out.
    with Load(api_client, namespace, NAME, long_chat, clients=4, max_seconds=90) as load:
        scaled = poll_until(
            lambda: matching(
                api_client,
                namespace,
                lambda o: o["spec"]["replicas"] >= 2 and o["status"]["autoscaling"]["desiredReplicas"] >= 2,
            ),
            45,
            "a scale-up",
        )
        print(f"scaled to {scaled['spec']['replicas']}: {scaled['status']['autoscaling']['reason']}")
        assert scaled["status"]["autoscaling"]["currentMetric"] >= 1

        def new_pods_serving() -> bool | None:
            return True if len([u for u, n in load.result.succeeded.items() if n > 0]) >= 2 else None

        poll_until(new_pods_serving, 60, "the new pods to answer requests")
        result = load.stop()
    print(f"load: {result.total} requests over {len(result.succeeded)} pods: {dict(result.succeeded)}")
    assert result.failures == []
    replicas_up = get(api_client, namespace)["spec"]["replicas"]
    events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert any(e.reason == "ScaledUp" for e in events)

    # 2. Prometheus gone while the queue is empty: no data, no scale-down, and the condition says why.
    plane.prometheus.stop()
    unavailable = poll_until(
        lambda: matching(api_client, namespace, lambda o: scaling_condition(o).get("reason") == "MetricsUnavailable"),
        30,
        "ScalingActive=False/MetricsUnavailable",
    )
    print(f"without Prometheus: {scaling_condition(unavailable)['message']}")
    evaluations = set()

    def held_past_the_window() -> bool | None:
        obj = get(api_client, namespace)
        assert obj["spec"]["replicas"] >= replicas_up, "scaled down without metrics"
        evaluations.add(obj["status"]["autoscaling"]["lastEvaluationTime"])
        return True if len(evaluations) > SCALE_DOWN_WINDOW + 3 else None

    poll_until(held_past_the_window, 60, "evaluations past the scale-down window", interval_seconds=0.5)

    # 3. Prometheus back, queue empty: one step at a time back to minReplicas after the window.
    plane.prometheus.start()
    poll_until(lambda: True if get(api_client, namespace)["spec"]["replicas"] == 1 else None, 90, "the scale-down to 1")
    events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert any(e.reason == "ScaledDown" for e in events)
    assert scaling_condition(get(api_client, namespace))["status"] == "True"
    ledger.outage(
        "Prometheus stopped during autoscaling",
        f"replicas held at {replicas_up} through {len(evaluations)} evaluations; ScalingActive=False said: "
        f"{scaling_condition(unavailable)['message']}; scaled back to 1 once it returned",
    )


def test_config_file_reaches_the_operator(operator: OperatorProcess) -> None:
    assert "--config" in operator.extra_args
    assert Path(operator.extra_args[operator.extra_args.index("--config") + 1]).is_file()
