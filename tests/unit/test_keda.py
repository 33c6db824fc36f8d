"""autoscaling.mode: KEDA rendered: a ScaledObject on the LlamaDeployment's scale subresource with the built-in
autoscaler's query, target and bounds, `ignoreNullValues: "false"` and a fallback that holds replicas; the
operator's own autoscaler stands aside; status follows the ScaledObject's conditions."""

from __future__ import annotations

from typing import Any

import pytest

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.autoscale.keda import keda_query
from llama_operator.autoscale.queries import default_target
from llama_operator.handlers import _autoscaling_enabled
from llama_operator.keda_status import KedaReading, keda_condition, read_scaled_object
from llama_operator.observed import ObjectView
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.reconcile import OperatorContext, keda_prometheus_url, keda_reading
from llama_operator.render import Owner, RenderOptions, render
from tests.unit.render_cases import INVENTORY, LLAMA_8B

Manifest = dict[str, Any]
PROMETHEUS = "http://prometheus-operated.monitoring:9090"
NOW = "2026-12-07T00:00:00Z"


def body(**autoscaling: Any) -> dict[str, Any]:
    scaling = {"enabled": True, "mode": "KEDA", "minReplicas": 1, "maxReplicas": 3, **autoscaling}
    return {"model": {**LLAMA_8B}, "engine": {"type": "vllm"}, "autoscaling": scaling}


def children(spec_body: dict[str, Any], **options: Any) -> list[Manifest]:
    spec = parse_spec(spec_body)
    opts = RenderOptions(**{"prometheus_url": PROMETHEUS, **options})
    return render("chat", "team-a", spec, plan(spec, "chat", INVENTORY), options=opts, owner=Owner("chat", "u1"))


def of_kind(found: list[Manifest], kind: str) -> list[Manifest]:
    return [c for c in found if c["kind"] == kind]


def test_the_scaled_object_scales_the_llamadeployment_on_the_builtin_query() -> None:
    (scaled,) = of_kind(children(body()), "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["name"] == "chat"
    assert scaled["metadata"]["ownerReferences"][0]["uid"] == "u1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "llamaops.io/v1alpha1", "kind": "LlamaDeployment", "name": "chat"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"]) == (1, 3, 15)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == PROMETHEUS
    assert metadata["query"] == 'sum(vllm:num_requests_waiting{namespace="team-a",llamaops_io_deployment="chat"})'
    assert metadata["threshold"] == f"{default_target('vllm', 'queue', 4):g}"
    assert metadata["ignoreNullValues"] == "false"  # a lost target is not "no load"
    assert spec["fallback"]["behavior"] == "currentReplicas"  # a failing query holds replicas
    assert spec["fallback"]["failureThreshold"] >= 1
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert behavior["scaleUp"]["policies"][0]["value"] == 4


@pytest.mark.parametrize(
    ("engine", "model", "metric"),
    [
        ("tgi", LLAMA_8B, "tgi_queue_size"),
        ("llamacpp", {"catalogName": "llama-3.2-3b", "source": "hf://o/r/m.gguf", "format": "gguf",
                      "quantization": "q4_k_m"}, "llamacpp:requests_deferred"),
    ],
)  # fmt: skip
def test_each_engine_gets_its_own_queue_metric(engine: str, model: dict[str, Any], metric: str) -> None:
    spec_body = {**body(), "model": model, "engine": {"type": engine}}
    (scaled,) = of_kind(children(spec_body), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["query"].startswith(f"sum({metric}{{")


def test_a_custom_query_and_target_are_used_as_given() -> None:
    (scaled,) = of_kind(children(body(query="sum(my_queue)", targetPerReplica=2.5)), "ScaledObject")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert (metadata["query"], metadata["threshold"]) == ("sum(my_queue)", "2.5")


def test_a_prometheus_token_is_referenced_never_copied() -> None:
    found = children(body(prometheusAuthSecretRef={"name": "prom-token", "key": "t"}))
    (auth,) = of_kind(found, "TriggerAuthentication")
    assert auth["spec"] == {"secretTargetRef": [{"parameter": "bearerToken", "name": "prom-token", "key": "t"}]}
    (scaled,) = of_kind(found, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"], "kind": "TriggerAuthentication"}
    assert trigger["metadata"]["authModes"] == "bearer"


def test_nothing_for_keda_when_builtin_off_or_the_api_missing() -> None:
    assert of_kind(children(body(mode="Builtin")), "ScaledObject") == []
    assert of_kind(children(body(enabled=False)), "ScaledObject") == []
    assert of_kind(children(body(), keda_api=False), "ScaledObject") == []
    assert of_kind(children(body(), prometheus_url=None), "ScaledObject") == []


def test_the_builtin_autoscaler_stands_aside_under_keda() -> None:
    assert _autoscaling_enabled(spec={"autoscaling": body(mode="Builtin")["autoscaling"]})  # type: ignore[arg-type]
    assert not _autoscaling_enabled(spec={"autoscaling": body()["autoscaling"]})  # type: ignore[arg-type]
    assert not _autoscaling_enabled(spec={"autoscaling": {"enabled": False}})  # type: ignore[arg-type]


def context(**config: Any) -> OperatorContext:
    return OperatorContext(kube=None, config=OperatorConfig(**config))  # type: ignore[arg-type]


def test_keda_queries_the_prometheus_the_builtin_autoscaler_would_and_refuses_others() -> None:
    assert keda_prometheus_url(context(prometheus_url=PROMETHEUS), parse_spec(body())) == PROMETHEUS
    with pytest.raises(InvalidSpecError, match=r"needs a Prometheus"):
        keda_prometheus_url(context(), parse_spec(body()))
    elsewhere = parse_spec(body(prometheusUrl="http://metadata.internal:80"))
    with pytest.raises(InvalidSpecError, match=r"prometheusAllowedUrls"):
        keda_prometheus_url(context(prometheus_url=PROMETHEUS), elsewhere)
    allowed = context(prometheus_url=PROMETHEUS, prometheus_allowed_urls=["http://team-prom.obs:9090"])
    assert keda_prometheus_url(allowed, parse_spec(body(prometheusUrl="http://team-prom.obs:9090/"))) == (
        "http://team-prom.obs:9090/"
    )
    assert keda_prometheus_url(context(), parse_spec(body(mode="Builtin"))) is None


def test_the_mode_is_an_enum() -> None:
    with pytest.raises(InvalidSpecError, match=r"autoscaling.mode"):
        parse_spec(body(mode="HPA"))


def conditions(*items: tuple[str, str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": s, "reason": r, "message": "KEDA's words"} for t, s, r in items]}


def test_status_follows_the_scaled_objects_conditions_and_never_its_messages() -> None:
    q, t = "sum(x)", 1.0
    ready = keda_condition(read_scaled_object("chat", conditions(("Ready", "True", "ScaledObjectReady"),
                                                                 ("Active", "False", "")), query=q, target=t),
                           generation=2, now=NOW)  # fmt: skip
    assert (ready.type, ready.status, ready.reason) == ("ScalingActive", "True", "KEDAScaling")
    assert "ScaledObject/chat" in ready.message
    assert "Ready=True (ScaledObjectReady)" in ready.message
    fallback = keda_condition(read_scaled_object("chat", conditions(("Ready", "True", ""), ("Fallback", "True", "")),
                                                 query=q, target=t), generation=2, now=NOW)  # fmt: skip
    assert (fallback.status, fallback.reason) == ("False", "MetricsUnavailable")
    assert "holds the current replicas" in fallback.message
    broken = keda_condition(read_scaled_object("chat", conditions(("Ready", "False", "ScaledObjectCheckFailed")),
                                               query=q, target=t), generation=2, now=NOW)  # fmt: skip
    assert (broken.status, broken.reason) == ("False", "KEDANotReady")
    pending = keda_condition(read_scaled_object("chat", None, query=q, target=t), generation=2, now=NOW)
    assert pending.status == "Unknown"
    missing = keda_condition(KedaReading(api_installed=False, name="chat"), generation=2, now=NOW)
    assert (missing.status, missing.reason) == ("False", "KEDANotInstalled")
    assert "scaledobjects.keda.sh" in missing.message
    assert "autoscaling.mode: Builtin" in missing.message
    for condition in (ready, fallback, broken, pending, missing):
        assert "KEDA's words" not in condition.message


def test_the_reading_says_when_the_api_is_missing() -> None:
    spec = parse_spec(body())
    decision = plan(spec, "chat", INVENTORY)
    view = ObjectView(children={}, pods=[], crds=frozenset())
    reading = keda_reading(spec, view, decision, "team-a", "chat")
    assert reading == KedaReading(api_installed=False, name="chat")
    assert keda_reading(parse_spec(body(mode="Builtin")), view, decision, "team-a", "chat") is None
    with_api = ObjectView(children={}, pods=[], crds=frozenset({"scaledobjects.keda.sh"}))
    found = keda_reading(spec, with_api, decision, "team-a", "chat")
    assert found is not None
    assert found.query == keda_query(spec, "vllm", "team-a", "chat")
