"""Autoscaling on real llama-server pods and a real Prometheus: a queue scales 1 -> N, the new pods
take load, an idle deployment scales back after the window, and a stopped Prometheus holds replicas.

Two more outages on the same kind of pods: Prometheus stopped while an adapter canary waits at its metric
gate (the canary is held, neither passed nor rolled back, and the rollout's condition says why), and an
engine process SIGKILLed while it answers requests (only its own in-flight requests fail, the status shows
the replica missing while the kubelet restarts it, and the deployment is whole again by itself)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    condition_of,
    get_llamadeployment,
    tiny_llama_deployment,
    wait_adapter_rollout,
)
from tests.integration.serving_fixtures import long_chat as serving_long_chat
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
    return get_llamadeployment(api_client, namespace, NAME)


def scaling_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return condition_of(obj, "ScalingActive")


def matching(api_client: Any, namespace: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    obj = get(api_client, namespace)
    return obj if check(obj) else None


long_chat = serving_long_chat(NAME)


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


GATED = "tiny-gated"
HELD_SECONDS = 16.0
GATE_QUERY = "sum(llamacpp:requests_deferred) or vector(0)"


def gated(assets: ServingAssets) -> dict[str, Any]:
    """Two replicas with an adapter; a new version goes to one canary pod, then through a metric gate."""
    manifest = tiny_llama_deployment(GATED, assets, adapters=True, extra_args=CHAT_TEMPLATE_ARGS, max_sequences=2)
    manifest["spec"]["replicas"] = 2
    manifest["spec"]["adapterRollout"] = {
        "canaryReplicas": 1,
        "timeoutSeconds": 600,
        "smokeRequest": {"prompt": "Say hello.", "maxTokens": 4},
        "metricGate": {"query": GATE_QUERY, "maxValue": 100, "windowSeconds": 0},
    }
    return manifest


def test_a_prometheus_outage_at_the_metric_gate_holds_the_canary_until_it_answers(
    api_client: Any, plane: ControlPlane, operator: OperatorProcess, assets: ServingAssets, ledger: Recorder
) -> None:
    assert plane.prometheus is not None
    namespace = create_namespace(api_client)
    objects = kube_client.CustomObjectsApi(api_client)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, gated(assets))

    def rollout(check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return wait_adapter_rollout(api_client, namespace, GATED, check, what=what, operator=operator,
                                    timeout_seconds=150)  # fmt: skip

    rollout(lambda r: r.get("phase") == "Succeeded", "the first adapter set to serve")
    plane.prometheus.stop()
    try:
        adapters = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, GATED)["spec"]["adapters"]
        adapters[0] = {**adapters[0], "version": "v2", "source": assets.adapter_source("v2")}
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, GATED, {"spec": {"adapters": adapters}}
        )
        rollout(lambda r: "metric gate unknown, holding the canary" in r.get("message", ""), "the gate held")
        # Held, not decided: through three rechecks (every 5 s) the canary stays, nothing failed or rolled back.
        held_until = time.monotonic() + HELD_SECONDS
        while time.monotonic() < held_until:
            now = (get_gated(api_client, namespace).get("status") or {}).get("adapterRollout") or {}
            assert (now.get("phase"), now.get("step")) == ("Progressing", "MetricGate"), now
            assert not now.get("failed"), now
            time.sleep(0.5)  # sampling a window whose length is what is measured
        condition = next(
            c for c in get_gated(api_client, namespace)["status"]["conditions"] if c["type"] == "AdapterRollout"
        )
        assert "metric gate unknown, holding the canary" in condition["message"], condition
    finally:
        plane.prometheus.start()
    done = rollout(lambda r: r.get("phase") == "Succeeded" and "tiny-lora@v2" in r.get("target", []), "v2 everywhere")
    assert not done.get("failed"), done
    ledger.outage(
        "Prometheus stopped during an adapter's metric gate",
        f"the canary held at MetricGate (not rolled back) while the condition said: {condition['message']}; "
        f"held {HELD_SECONDS:.0f} s; the rollout succeeded once Prometheus answered",
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, GATED)  # its pods free the pool


def get_gated(api_client: Any, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, GATED
    )
    return obj


KILLED = "tiny-killed"


def engine_pid(pod: Any) -> int:
    """The pid of the pod's running engine, from its container ID (`process://PID` on the process pool)."""
    status = next(c for c in pod.status.container_statuses if c.name == pod.spec.containers[0].name)
    assert status.state.running is not None, status
    return int(status.container_id.removeprefix("process://"))


def test_an_engine_killed_mid_request_costs_only_its_own_requests_and_heals(
    api_client: Any, operator: OperatorProcess, assets: ServingAssets, ledger: Recorder
) -> None:
    namespace = create_namespace(api_client)
    manifest = tiny_llama_deployment(KILLED, assets, adapters=False, extra_args=CHAT_TEMPLATE_ARGS, max_sequences=2)
    manifest["spec"]["replicas"] = 2
    objects = kube_client.CustomObjectsApi(api_client)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    core = kube_client.CoreV1Api(api_client)

    def status(ready: str) -> dict[str, Any] | None:
        obj = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, KILLED)
        return obj if (obj.get("status") or {}).get("ready") == ready else None

    try:
        poll_until(lambda: status("2/2"), 120, "two ready replicas")
    except pytest.fail.Exception:
        print(objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, KILLED).get("status"))
        raise
    pods = core.list_namespaced_pod(namespace, label_selector=f"llamaops.io/deployment={KILLED}").items
    victim = sorted(pods, key=lambda p: p.metadata.name)[0]
    victim_url = f"http://{victim.status.pod_ip}:"
    clients = 3
    with Load(api_client, namespace, KILLED, long_chat, clients=clients, max_seconds=120) as load:
        poll_until(lambda: True if len(load.result.succeeded) >= 2 else None, 60, "both pods answering")
        before = dict(load.result.succeeded)
        os.kill(engine_pid(victim), signal.SIGKILL)
        missing = poll_until(lambda: status("1/2"), 30, "the status to show the killed replica missing")
        ready = next(c for c in missing["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["message"].split(";")[0]) == ("False", "1/2 replicas ready"), ready
        whole = poll_until(lambda: status("2/2"), 120, "the replica back by itself")

        def victim_serving_again() -> bool | None:
            served = sum(n for u, n in load.result.succeeded.items() if u.startswith(victim_url))
            before_victim = sum(n for u, n in before.items() if u.startswith(victim_url))
            return True if served > before_victim else None

        poll_until(victim_serving_again, 60, "the restarted engine to answer requests")
        result = load.stop()
    restarted = core.read_namespaced_pod(victim.metadata.name, namespace)
    engine_status = next(c for c in restarted.status.container_statuses if c.name == victim.spec.containers[0].name)
    assert engine_status.restart_count >= 1
    assert engine_status.last_state.terminated.exit_code == 128 + signal.SIGKILL
    print(f"engine killed: {result.total} requests, failures {result.failures}")
    assert all(victim.status.pod_ip in failure for failure in result.failures), result.failures
    # In flight on the engine when it died: cut off. Each client also keeps an idle keep-alive connection to it,
    # and the first request sent on one after the kill can meet the closed socket before the client sees it is
    # closed: at most one more per client. Sent to it until its readiness probe failed (as a Service would route
    # them): refused. No other pod lost a request.
    cut_off = [f for f in result.failures if "ConnectError" not in f]
    refused = len(result.failures) - len(cut_off)
    assert len(cut_off) <= 2 * clients, (
        f"more requests cut off than the {clients} clients had in flight or pooled on the killed engine: {cut_off}"
    )
    assert whole["status"]["phase"] == "Ready"
    ledger.outage(
        "an engine pod's process killed mid-request",
        f"{len(cut_off)} requests in flight on it cut off, {refused} refused before its readiness probe failed, "
        f"{result.total - len(result.failures)} succeeded; "
        f"Ready=False said '{ready['message']}' until the kubelet's restart served again",
    )
