"""Autoscaling through the REAL KEDA (hack/upstream-versions.env, built by hack/build-upstream.sh): its
operator and metrics adapter behind the real apiserver's aggregation layer, the real controller-manager's
HPA, real llama-server pods and a real Prometheus, in a plane of this module's own.

`autoscaling.mode: KEDA` renders a ScaledObject on the LlamaDeployment's scale subresource; KEDA makes the
HPA, and the HPA (not the operator) writes `spec.replicas`: under a queue the deployment scales 1 -> 3.
With Prometheus stopped the query fails (`ignoreNullValues: "false"`), KEDA's fallback holds the current
replicas well past the scale-down window, and our ScalingActive condition says so; with Prometheus back and
no queue, KEDA scales back to 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator.kube import FIELD_MANAGER
from llama_operator_dev import ControlPlane
from llama_operator_dev.keda import BUILD_SCRIPT, keda_binaries
from tests.background_builds import wait_for_background_build
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
    long_chat,
    serving_control_plane,
    tiny_llama_deployment,
)
from tests.reliability import Recorder
from tests.terminal import terminal_writer

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp"), pytest.mark.background_build("KEDA")]

NAME = "tiny-keda"
CHAT_TEMPLATE_ARGS = ["--chat-template", "vicuna"]
SCALE_DOWN_WINDOW = 5
HELD_SECONDS = 45.0  # well past the scale-down window and KEDA's fallback threshold
KEDA_GROUP, KEDA_VERSION = "keda.sh", "v1alpha1"


@pytest.fixture(scope="module")
def plane(
    request: pytest.FixtureRequest, assets: ServingAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """The llama.cpp plane with KEDA running (its APIService would outlive no other module); KEDA's binaries
    come from the run's background build when they were missing (tests/background_builds.py)."""
    wait_for_background_build(request.config, "KEDA", terminal_writer(request.config, "test_keda"))
    if keda_binaries() is None:
        pytest.skip(f"KEDA is not built; run {BUILD_SCRIPT} KEDA")
    with serving_control_plane(assets, tmp_path_factory.mktemp("keda-plane"), keda=True) as started:
        yield started


@pytest.fixture(scope="module")
def operator_settings(plane: ControlPlane) -> dict[str, Any]:
    """KEDA's ScaledObject queries the operator's Prometheus (the `prometheusUrl` of its config file)."""
    assert plane.prometheus is not None
    return {"prometheusUrl": plane.prometheus.url}


def keda_scaled(assets: ServingAssets) -> dict[str, Any]:
    manifest = tiny_llama_deployment(NAME, assets, adapters=False, extra_args=CHAT_TEMPLATE_ARGS, max_sequences=1)
    manifest["spec"]["autoscaling"] = {
        "enabled": True,
        "mode": "KEDA",
        "minReplicas": 1,
        "maxReplicas": 3,
        "metric": "queue",
        "targetPerReplica": 1,
        "evaluationIntervalSeconds": 1,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 2, "cooldownSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW, "maxStep": 1, "cooldownSeconds": 0},
    }
    return manifest


def get(api_client: Any, namespace: str) -> dict[str, Any]:
    return get_llamadeployment(api_client, namespace, NAME)


def scaling_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return condition_of(obj, "ScalingActive")


def keda_conditions(api_client: Any, namespace: str) -> dict[str, str]:
    scaled: dict[str, Any] = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        KEDA_GROUP, KEDA_VERSION, namespace, "scaledobjects", NAME
    )
    return {c["type"]: c["status"] for c in (scaled.get("status") or {}).get("conditions") or []}


def replicas_writers(obj: dict[str, Any]) -> set[str]:
    """The field managers that own spec.replicas."""
    return {
        str(entry.get("manager"))
        for entry in obj["metadata"].get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    }


def test_keda_scales_through_the_scale_subresource_and_holds_without_prometheus(
    api_client: Any, plane: ControlPlane, operator: OperatorProcess, assets: ServingAssets, ledger: Recorder
) -> None:
    assert plane.prometheus is not None
    assert plane.keda is not None
    namespace = create_namespace(api_client)
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, keda_scaled(assets)
    )

    def keda_scaling_one_ready() -> dict[str, Any] | None:
        obj = get(api_client, namespace)
        status = obj.get("status") or {}
        return obj if status.get("ready") == "1/1" and scaling_condition(obj).get("reason") == "KEDAScaling" else None

    ready = poll_until(keda_scaling_one_ready, 120, "one ready replica and ScalingActive=True/KEDAScaling")
    print(f"ScalingActive: {scaling_condition(ready)['message']}")
    hpa = kube_client.AutoscalingV2Api(api_client).read_namespaced_horizontal_pod_autoscaler(
        f"keda-hpa-{NAME}", namespace
    )
    assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("LlamaDeployment", NAME)
    assert [m.type for m in hpa.spec.metrics] == ["External"]

    # 1. A queue: four clients on one slot keep three requests deferred; KEDA's HPA scales 1 -> 3.
    started = time.monotonic()
    with Load(api_client, namespace, NAME, long_chat(NAME), clients=4, max_seconds=150) as load:
        scaled = poll_until(
            lambda: o if (o := get(api_client, namespace))["spec"]["replicas"] == 3 else None,
            90,
            "the HPA to scale spec.replicas to 3",
        )
        scale_seconds = time.monotonic() - started
        poll_until(
            lambda: True if (get(api_client, namespace).get("status") or {}).get("ready") == "3/3" else None,
            90,
            "three ready replicas",
        )
        poll_until(
            lambda: True if len([n for n in load.result.succeeded.values() if n > 0]) >= 2 else None,
            60,
            "the new pods to answer requests",
        )
        result = load.stop()
    print(f"scaled to 3 in {scale_seconds:.1f}s; load: {result.total} requests over {dict(result.succeeded)}")
    assert result.failures == []
    writers = replicas_writers(scaled)
    print(f"spec.replicas written by: {sorted(writers)}")
    assert "kube-controller-manager" in writers, writers  # the HPA, through the scale subresource
    assert FIELD_MANAGER not in writers, writers

    # 2. Prometheus gone: KEDA's query fails, its fallback holds 3 replicas, and our status says why.
    plane.prometheus.stop()
    stopped = time.monotonic()
    unavailable = poll_until(
        lambda: o if scaling_condition(o := get(api_client, namespace)).get("reason") == "MetricsUnavailable" else None,
        120,
        "ScalingActive=False/MetricsUnavailable from KEDA's Fallback condition",
    )
    fallback_seconds = time.monotonic() - stopped
    assert keda_conditions(api_client, namespace).get("Fallback") == "True"
    print(f"without Prometheus after {fallback_seconds:.1f}s: {scaling_condition(unavailable)['message']}")
    assert "Fallback=True" in scaling_condition(unavailable)["message"]
    held_until = time.monotonic() + HELD_SECONDS
    while time.monotonic() < held_until:
        assert get(api_client, namespace)["spec"]["replicas"] == 3, "scaled down without metrics"
        time.sleep(1.0)

    # 3. Prometheus back, no queue: the fallback ends and KEDA scales back to minReplicas.
    plane.prometheus.start()
    poll_until(
        lambda: True if get(api_client, namespace)["spec"]["replicas"] == 1 else None, 150, "the scale-down to 1"
    )
    poll_until(
        lambda: True if scaling_condition(get(api_client, namespace)).get("reason") == "KEDAScaling" else None,
        60,
        "ScalingActive=True/KEDAScaling again",
    )
    held_for = time.monotonic() - stopped
    log = operator.log()
    assert f"{NAME}: applied" in log
    assert f"scaled {NAME}:" not in log, "the built-in autoscaler scaled a KEDA-scaled object"
    ledger.outage(
        "Prometheus stopped during KEDA autoscaling",
        f"KEDA's fallback held 3 replicas for {held_for:.0f}s (ScalingActive=False/MetricsUnavailable after "
        f"{fallback_seconds:.0f}s); scaled back to 1 once Prometheus returned",
    )
