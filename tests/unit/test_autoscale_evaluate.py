"""One autoscaling evaluation against a Prometheus MockTransport and a fake Kube: which Prometheus is asked
and with which credentials, what a failed query becomes, when replicas are written, and which status field
the autoscaler owns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from llama_operator.api.parse import parse_spec
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import LlamaDeploymentStatus
from llama_operator.autoscale.decision import Sample
from llama_operator.autoscale.evaluate import MetricsRead, decide_and_scale, read_metrics, status_patch
from llama_operator.autoscale.queries import engine_queries
from tests.unit.fake_api import FakeApi, owner_manifest

Manifest = dict[str, Any]
NOW = 1_750_000_000.0
SPEC_PROMETHEUS = "http://team-prometheus.monitoring:9090"
OPERATOR_PROMETHEUS = "http://cluster-prometheus.monitoring:9090"
QUERIES = engine_queries("vllm", "queue", "ns", "chat")


def scaled_spec(replicas: int = 1, **autoscaling: Any) -> LlamaDeploymentSpec:
    scaling = {"enabled": True, "minReplicas": 1, "maxReplicas": 4, **autoscaling}
    return parse_spec(owner_manifest(replicas=replicas, autoscaling=scaling)["spec"])


class Prometheus:
    """Two pods' queue gauge and their scrape times; remembers every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        query = request.url.params["query"]
        values = {"chat-a": 3.0, "chat-b": 4.0} if query == QUERIES.values else {"chat-a": NOW - 5, "chat-b": NOW - 9}
        result = [{"metric": {"pod": pod}, "value": [NOW, str(v)]} for pod, v in values.items()]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})


def read(
    spec: LlamaDeploymentSpec,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    api: FakeApi | None = None,
    operator_prometheus: str | None = OPERATOR_PROMETHEUS,
    allowed: Sequence[str] = (SPEC_PROMETHEUS,),
) -> MetricsRead:
    async def run() -> MetricsRead:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await read_metrics(api or FakeApi(owner_manifest()), http, name="chat", namespace="ns", spec=spec,
                                      default_prometheus_url=operator_prometheus, now=NOW,
                                      allowed_prometheus_urls=allowed)  # fmt: skip

    return asyncio.run(run())


def hosts(prometheus: Prometheus) -> list[str]:
    return [f"{r.url.scheme}://{r.url.host}:{r.url.port}" for r in prometheus.requests]


def prometheus_errors() -> float:
    return REGISTRY.get_sample_value("llama_operator_prometheus_errors_total") or 0.0


def test_the_pods_queue_is_read_from_the_prometheus_of_the_spec_first() -> None:
    prometheus = Prometheus()
    metrics = read(scaled_spec(prometheusUrl=SPEC_PROMETHEUS), prometheus)
    assert hosts(prometheus) == [SPEC_PROMETHEUS, SPEC_PROMETHEUS]
    assert [r.url.params["query"] for r in prometheus.requests] == [QUERIES.values, QUERIES.timestamps]
    assert metrics.error is None
    assert metrics.samples == [Sample("chat-a", 3.0, NOW - 5), Sample("chat-b", 4.0, NOW - 9)]


def test_without_a_spec_url_the_operator_default_is_read() -> None:
    prometheus = Prometheus()
    metrics = read(scaled_spec(), prometheus)
    assert hosts(prometheus) == [OPERATOR_PROMETHEUS, OPERATOR_PROMETHEUS]
    assert metrics.error is None


def test_with_no_prometheus_anywhere_the_read_says_what_to_set() -> None:
    prometheus = Prometheus()
    metrics = read(scaled_spec(), prometheus, operator_prometheus=None)
    assert prometheus.requests == []
    assert metrics.samples is None
    assert metrics.error == "no Prometheus URL: set spec.autoscaling.prometheusUrl or the operator's prometheusUrl"


@pytest.mark.parametrize(
    ("spec_url", "allowed"),
    [
        ("http://attacker.example:9090", ()),  # none allowed beyond the operator's own
        ("http://attacker.example:9090", (SPEC_PROMETHEUS,)),
        ("http://team-prometheus.monitoring:9091", (SPEC_PROMETHEUS,)),  # another port
        ("https://team-prometheus.monitoring:9090", (SPEC_PROMETHEUS,)),  # another scheme
        ("http://team-prometheus.monitoring.evil.example:9090", (SPEC_PROMETHEUS,)),
        ("http://team-prometheus.monitoring:9090@attacker.example/", (SPEC_PROMETHEUS,)),
        ("http://kube-apiserver.default:443/api", ("http://kube-apiserver.default:443/prometheus",)),
        ("http://gw.monitoring/prometheus-admin", ("http://gw.monitoring/prometheus",)),  # not a whole segment
        ("http://gw.monitoring/prometheus/%2e%2e/admin", ("http://gw.monitoring/prometheus",)),
    ],
)
def test_a_spec_url_the_operator_does_not_allow_is_never_queried(spec_url: str, allowed: tuple[str, ...]) -> None:
    api = FakeApi(owner_manifest())
    api.secrets[("ns", "prometheus-reader")] = {"token": "s3cret-token"}
    prometheus = Prometheus()
    spec = scaled_spec(prometheusUrl=spec_url, prometheusAuthSecretRef={"name": "prometheus-reader"})
    metrics = read(spec, prometheus, api=api, allowed=allowed)
    assert prometheus.requests == [], "the operator sent a query (and the token) to a URL it does not allow"
    assert api.secret_reads == []
    assert metrics.samples is None
    assert metrics.error is not None
    assert "spec.autoscaling.prometheusUrl" in metrics.error
    assert "prometheusAllowedUrls" in metrics.error


@pytest.mark.parametrize(
    ("spec_url", "allowed"),
    [
        (OPERATOR_PROMETHEUS, ()),  # the operator's own is always allowed
        (f"{OPERATOR_PROMETHEUS}/", ()),
        (SPEC_PROMETHEUS, (SPEC_PROMETHEUS,)),
        ("http://TEAM-prometheus.monitoring:9090", (SPEC_PROMETHEUS,)),  # hosts compare without case
        ("http://gw.monitoring/prometheus/team-a", ("http://gw.monitoring/prometheus",)),
        ("http://gw.monitoring:80/prometheus", ("http://gw.monitoring/prometheus/",)),  # the default port
    ],
)
def test_a_spec_url_under_an_allowed_prefix_is_queried(spec_url: str, allowed: tuple[str, ...]) -> None:
    prometheus = Prometheus()
    metrics = read(scaled_spec(prometheusUrl=spec_url), prometheus, allowed=allowed)
    assert metrics.error is None
    assert [r.url.host for r in prometheus.requests] == [httpx.URL(spec_url).host] * 2


def test_every_query_carries_the_bearer_token_of_the_secret() -> None:
    api = FakeApi(owner_manifest())
    api.secrets[("ns", "prometheus-reader")] = {"token": "s3cret-token\n"}
    prometheus = Prometheus()
    metrics = read(scaled_spec(prometheusAuthSecretRef={"name": "prometheus-reader"}), prometheus, api=api)
    assert [r.headers.get("authorization") for r in prometheus.requests] == ["Bearer s3cret-token"] * 2
    assert api.secret_reads == [("ns", "prometheus-reader", "token")]
    assert metrics.error is None


def test_a_missing_token_secret_is_an_error_and_nothing_is_queried() -> None:
    prometheus = Prometheus()
    before = prometheus_errors()
    metrics = read(scaled_spec(prometheusAuthSecretRef={"name": "prometheus-reader"}), prometheus)
    assert prometheus.requests == []
    assert metrics.error == "Secret ns/prometheus-reader has no key token"
    assert prometheus_errors() == before + 1


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (lambda _: httpx.Response(500, text="query processing would load too many samples"),
         f"{OPERATOR_PROMETHEUS} answered HTTP 500 (Internal Server Error)"),
        (unreachable, f"{OPERATOR_PROMETHEUS} unreachable: ConnectError: connection refused"),
    ],
)  # fmt: skip
def test_a_prometheus_that_cannot_answer_becomes_an_error_and_is_counted(
    handler: Callable[[httpx.Request], httpx.Response], said: str
) -> None:
    before = prometheus_errors()
    metrics = read(scaled_spec(), handler)
    assert (metrics.samples, metrics.error) == (None, said)
    assert prometheus_errors() == before + 1


def decide(api: FakeApi, spec: LlamaDeploymentSpec, samples: list[Sample] | None, *, error: str | None = None) -> Any:
    metrics = MetricsRead(QUERIES, 5.0, samples, error)
    status = LlamaDeploymentStatus(ready_replicas=spec.replicas)
    return asyncio.run(decide_and_scale(api, metrics, name="chat", namespace="ns", spec=spec, status=status, now=NOW))


def queue(*values: float) -> list[Sample]:
    return [Sample(f"chat-{i}", v, NOW - 5) for i, v in enumerate(values)]


def test_a_longer_queue_scales_up_through_the_scale_subresource() -> None:
    api = FakeApi(owner_manifest(replicas=1))
    evaluation = decide(api, scaled_spec(replicas=1), queue(12.0))  # 12 waiting, 5 per replica: 3
    assert api.writes == ["scale 3"]
    assert api.owner()["spec"]["replicas"] == 3
    assert evaluation.scaled
    assert evaluation.status.desired_replicas == 3
    assert evaluation.status.last_scale_time is not None


def test_replicas_are_not_written_when_they_do_not_change() -> None:
    api = FakeApi(owner_manifest(replicas=2))
    evaluation = decide(api, scaled_spec(replicas=2), queue(4.0, 6.0))  # 10 waiting, 5 per replica: 2
    assert api.writes == []
    assert not evaluation.scaled
    assert evaluation.status.desired_replicas == 2


@pytest.mark.parametrize(
    ("samples", "error", "why"),
    [
        (None, "Prometheus answered HTTP 500", "Prometheus did not answer (Prometheus answered HTTP 500)"),
        ([], None, "no series for this deployment's pods"),
        ([Sample("chat-0", 0.0, NOW - 600)], None, "the oldest sample is 600s old (limit 60s)"),
        (queue(0.0, 0.0), None, "only 2 series for 3 ready pods"),
    ],
    ids=["prometheus-failed", "no-series", "stale", "partial"],
)
def test_missing_samples_never_scale_down(samples: list[Sample] | None, error: str | None, why: str) -> None:
    """An idle queue would ask for 1 replica; without trustworthy samples the 3 replicas stay."""
    api = FakeApi(owner_manifest(replicas=3))
    evaluation = decide(api, scaled_spec(replicas=3), samples, error=error)
    assert api.writes == [], "replicas were written without metrics"
    assert evaluation.status.desired_replicas == 3
    assert evaluation.status.metrics_available is False
    assert evaluation.status.reason == f"holding at 3: {why}"


def test_the_status_patch_is_the_autoscalers_field_alone() -> None:
    api = FakeApi(owner_manifest(replicas=1))
    ready = {"type": "Ready", "status": "True", "reason": "Serving", "message": "1 of 1 replicas ready"}
    api.objects[("LlamaDeployment", "chat")]["status"] = {"conditions": [ready], "readyReplicas": 1}
    patch = status_patch(decide(api, scaled_spec(replicas=1), queue(12.0)))
    assert list(patch) == ["autoscaling"]
    assert patch["autoscaling"]["desiredReplicas"] == 3
    api.patch_llamadeployment_status("ns", "chat", patch)
    status = api.owner()["status"]
    assert status["conditions"] == [ready]  # another writer's field survives the autoscaler's write
    assert status["readyReplicas"] == 1
