"""The adapter rollout's metric gate, driven the way a pass drives it: a canary that passed its smoke
request, watched for the gate's window, then judged by one PromQL query against Prometheus (a
MockTransport here). What a user notices: which Prometheus is asked, with which credentials, and whether
the rollout goes on or rolls back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llama_operator.adapters.checks import CheckRunner
from llama_operator.adapters.drive import RolloutIO, RolloutResult, drive_rollout
from llama_operator.adapters.rollout import ADAPTERS_ANNOTATION, GATE_CONDITION, RolloutState
from llama_operator.api.parse import parse_spec
from llama_operator.api.spec import Adapter, LlamaDeploymentSpec
from tests.unit.fake_api import FakeApi, owner_manifest

Manifest = dict[str, Any]
NOW = 1_750_000_000.0
GATE_QUERY = 'sum(rate(adapter_errors_total{adapter="support"}[1m]))'
MAX_VALUE = 0.05
WINDOW_SECONDS = 60
SPEC_PROMETHEUS = "http://team-prometheus.monitoring:9090"
OPERATOR_PROMETHEUS = "http://cluster-prometheus.monitoring:9090"
OLD = {"name": "support", "source": "s3://bucket/support", "version": "v0"}
NEW = {"name": "support", "source": "s3://bucket/support", "version": "v1"}  # s3: pods start with it (no runtime load)


def gated_spec(**autoscaling: Any) -> LlamaDeploymentSpec:
    gate = {"query": GATE_QUERY, "maxValue": MAX_VALUE, "windowSeconds": WINDOW_SECONDS}
    body = owner_manifest(adapters=[NEW], adapterRollout={"metricGate": gate}, autoscaling=autoscaling)["spec"]
    return parse_spec(body)


def at_the_gate(spec: LlamaDeploymentSpec, *, canary_verified_seconds_ago: float) -> RolloutState:
    """v0 -> v1: the canary passed its smoke request that long ago; the rollout waits at the metric gate."""
    return RolloutState(
        phase="Progressing",
        target="support@v1",
        serving=tuple(spec.adapters),
        last_good=(Adapter.model_validate(OLD),),
        step="MetricGate",
        verified_pods=("chat-canary",),
        start_time=NOW - 600,
        canary_verified_time=NOW - canary_verified_seconds_ago,
        message=f"watching the canary for {WINDOW_SECONDS}s",
    )


def canary_pod() -> Manifest:
    return {
        "metadata": {"name": "chat-canary", "namespace": "ns", "annotations": {ADAPTERS_ANNOTATION: "support@v1"}},
        "spec": {"containers": [{"name": "engine", "ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "ContainersReady", "status": "True"},
                                                        {"type": GATE_CONDITION, "status": "True"}]},
    }  # fmt: skip


class Prometheus:
    """Answers every instant query with one series of `value`; remembers the requests."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = [{"metric": {}, "value": [NOW, str(self.value)]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": result}})


def gate_pass(
    spec: LlamaDeploymentSpec,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    api: FakeApi | None = None,
    operator_prometheus: str | None = OPERATOR_PROMETHEUS,
    canary_verified_seconds_ago: float = 2 * WINDOW_SECONDS,
    allowed: tuple[str, ...] = (SPEC_PROMETHEUS,),
) -> RolloutResult:
    """One pass of the rollout at the gate, as the reconcile pass calls it."""

    async def run() -> RolloutResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            io = RolloutIO(kube=api or FakeApi(owner_manifest()), http=http, checks=CheckRunner())
            return await drive_rollout(
                io,
                namespace="ns",
                spec=spec,
                engine="vllm",
                served_name="chat",
                state=at_the_gate(spec, canary_verified_seconds_ago=canary_verified_seconds_ago),
                pods=[canary_pod()],
                prometheus_url=operator_prometheus,
                now=NOW,
                prometheus_allowed_urls=allowed,
            )

    return asyncio.run(run())


def test_the_gate_waits_its_window_before_asking_prometheus() -> None:
    prometheus = Prometheus(value=0.0)
    result = gate_pass(gated_spec(), prometheus, canary_verified_seconds_ago=WINDOW_SECONDS / 2)
    assert prometheus.requests == []
    assert (result.state.phase, result.state.step) == ("Progressing", "MetricGate")


def test_a_gate_within_max_value_lets_the_rollout_finish() -> None:
    prometheus = Prometheus(value=MAX_VALUE)
    result = gate_pass(gated_spec(), prometheus)
    assert [r.url.params["query"] for r in prometheus.requests] == [GATE_QUERY]
    assert result.state.phase == "Succeeded"
    assert result.state.last_good == tuple(gated_spec().adapters)
    assert result.rollbacks == ()


def test_the_gate_asks_the_prometheus_of_the_spec_before_the_operator_default() -> None:
    """The autoscaler's precedence: spec.autoscaling.prometheusUrl, then the operator's prometheusUrl."""
    prometheus = Prometheus(value=0.0)
    result = gate_pass(gated_spec(prometheusUrl=SPEC_PROMETHEUS), prometheus, operator_prometheus=OPERATOR_PROMETHEUS)
    assert [str(r.url.copy_with(query=None)) for r in prometheus.requests] == [f"{SPEC_PROMETHEUS}/api/v1/query"]
    assert result.state.phase == "Succeeded"


def test_a_spec_url_the_operator_does_not_allow_is_never_asked_and_the_gate_fails() -> None:
    api = FakeApi(owner_manifest())
    api.secrets[("ns", "prometheus-reader")] = {"token": "s3cret-token"}
    prometheus = Prometheus(value=0.0)
    spec = gated_spec(
        prometheusUrl="http://attacker.example:9090", prometheusAuthSecretRef={"name": "prometheus-reader"}
    )
    result = gate_pass(spec, prometheus, api=api, allowed=())
    assert prometheus.requests == [], "the gate sent a query (and the token) to a URL the operator does not allow"
    assert api.secret_reads == []
    assert result.state.phase == "RolledBack"
    assert any("prometheusAllowedUrls" in line for line in result.smoke_results), result.smoke_results


def test_without_a_spec_url_the_gate_asks_the_operator_default() -> None:
    prometheus = Prometheus(value=0.0)
    gate_pass(gated_spec(), prometheus, operator_prometheus=OPERATOR_PROMETHEUS)
    assert [str(r.url.copy_with(query=None)) for r in prometheus.requests] == [f"{OPERATOR_PROMETHEUS}/api/v1/query"]


def test_the_gate_sends_the_bearer_token_of_prometheus_auth_secret_ref() -> None:
    api = FakeApi(owner_manifest())
    api.secrets[("ns", "prometheus-reader")] = {"bearer": "s3cret-token\n"}  # as `echo token > file` leaves it
    prometheus = Prometheus(value=0.0)
    spec = gated_spec(prometheusUrl=SPEC_PROMETHEUS,
                      prometheusAuthSecretRef={"name": "prometheus-reader", "key": "bearer"})  # fmt: skip
    result = gate_pass(spec, prometheus, api=api)
    assert [r.headers.get("authorization") for r in prometheus.requests] == ["Bearer s3cret-token"]
    assert api.secret_reads == [("ns", "prometheus-reader", "bearer")]
    assert result.state.phase == "Succeeded"


def test_a_token_secret_that_is_missing_holds_the_gate_and_says_so() -> None:
    prometheus = Prometheus(value=0.0)
    spec = gated_spec(prometheusUrl=SPEC_PROMETHEUS, prometheusAuthSecretRef={"name": "prometheus-reader"})
    result = gate_pass(spec, prometheus)
    assert prometheus.requests == [], "the gate queried Prometheus without the token the spec asks for"
    assert (result.state.phase, result.state.step) == ("Progressing", "MetricGate")
    assert "Secret ns/prometheus-reader has no key token" in result.state.message
    assert any("Secret ns/prometheus-reader has no key token" in line for line in result.smoke_results)


def test_a_gate_above_max_value_rolls_back_to_the_last_good_set() -> None:
    result = gate_pass(gated_spec(), Prometheus(value=0.2))
    assert result.state.phase == "RolledBack"
    assert result.state.serving == (Adapter.model_validate(OLD),)
    assert "support@v1" in result.state.failed
    assert [n.reason for n in result.rollbacks] == [f"metric gate: {GATE_QUERY} = 0.2 > 0.05"]
    assert result.state.message.startswith("rolled back to [support@v0]")


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def server_error(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, text="query timed out")


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (unreachable, "unreachable: ConnectError: connection refused"),
        (server_error, "answered HTTP 500 (Internal Server Error)"),  # the body stays out of the status
    ],
)
def test_a_prometheus_that_cannot_answer_holds_the_canary_at_the_gate(
    handler: Callable[[httpx.Request], httpx.Response], said: str
) -> None:
    """Unknown is not bad (a monitoring outage must not roll back a good canary) and not good either (the
    rollout does not go on): the canary is held at the gate, the condition says why, the next pass asks
    again."""
    result = gate_pass(gated_spec(), handler)
    assert (result.state.phase, result.state.step) == ("Progressing", "MetricGate")
    assert result.state.serving == (Adapter.model_validate(NEW),)
    assert result.state.failed == ()
    assert result.rollbacks == ()
    assert [line for line in result.smoke_results if line.startswith("metric gate:")] == [
        f"metric gate: {OPERATOR_PROMETHEUS} {said}"
    ]
    assert result.state.message == (
        f"metric gate unknown, holding the canary: {OPERATOR_PROMETHEUS} {said}; asking again until timeoutSeconds"
    )


def test_a_gate_held_past_the_rollout_timeout_rolls_back_without_asking() -> None:
    prometheus = Prometheus(value=0.0)
    spec = gated_spec()
    spec = spec.model_copy(update={"adapter_rollout": spec.adapter_rollout.model_copy(update={"timeout_seconds": 300})})
    result = gate_pass(spec, prometheus)  # the rollout started 600 s ago
    assert prometheus.requests == []
    assert result.state.phase == "RolledBack"
    assert "not done after 300s" in result.rollbacks[0].reason


def test_with_no_prometheus_anywhere_the_gate_does_not_pass() -> None:
    prometheus = Prometheus(value=0.0)
    result = gate_pass(gated_spec(), prometheus, operator_prometheus=None)
    assert prometheus.requests == []
    assert result.state.phase == "RolledBack"
