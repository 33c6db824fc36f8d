"""Passes against a fake API that keeps objects the way the apiserver does (merge patches on /status,
resourceVersions): one writer per status field, nothing written when nothing changed, no pass waits on an
engine."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llama_operator.api.parse import parse_spec
from llama_operator.api.status import LlamaDeploymentStatus
from llama_operator.autoscale.decision import Sample
from llama_operator.autoscale.evaluate import MetricsRead, decide_and_scale, status_patch
from llama_operator.autoscale.queries import engine_queries
from llama_operator.observed import ObjectView, child_record, children_by_kind, slim_pod
from llama_operator.operator_config import OperatorConfig
from llama_operator.passes import PassInput, PassRunner, slim_owner
from llama_operator.reconcile import OperatorContext
from llama_operator.sizing.gpu_classes import DEFAULT_INVENTORY
from tests.unit.fake_api import FakeApi, owner_manifest

Manifest = dict[str, Any]
KEY = ("ns", "chat")


def runner_for(api: FakeApi) -> PassRunner:
    return PassRunner(OperatorContext(kube=api, config=OperatorConfig()))


def reader(api: FakeApi, pods: list[Manifest] | None = None) -> Any:
    """The watch caches, caught up with every write (the slowest a cache can be is tested elsewhere)."""

    def read() -> PassInput:
        view = ObjectView(
            children=children_by_kind(child_record(c) for c in api.children()),
            pods=[slim_pod(p) for p in pods or []],
            crds=frozenset(),
        )
        return PassInput(slim_owner(api.owner()), view, DEFAULT_INVENTORY)

    return read


def test_an_idle_object_is_not_written_again() -> None:
    api = FakeApi(owner_manifest())
    runner = runner_for(api)
    asyncio.run(runner.run(KEY, reader(api), "owner"))
    assert api.writes[:3] == ["apply Deployment", "apply Service", "apply PodDisruptionBudget"]
    assert len(api.writes) == 4
    assert api.writes[3].startswith("status ")
    before = list(api.writes)
    for _ in range(3):
        asyncio.run(runner.run(KEY, reader(api), "pod"))
    assert api.writes == before, "a pass with nothing changed wrote something"


def test_autoscaler_and_reconcile_writing_status_at_once_lose_no_condition() -> None:
    api = FakeApi(owner_manifest(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4}))
    runner = runner_for(api)
    asyncio.run(runner.run(KEY, reader(api), "owner"))
    queries = engine_queries("vllm", "queue", "ns", "chat")
    spec_body = api.owner()["spec"]

    async def autoscaler_step(available: bool) -> None:
        spec = parse_spec(spec_body)
        samples = [Sample("chat-0", 1.0, time.time())] if available else None
        read = MetricsRead(queries, 2.0, samples, None if available else "Prometheus did not answer")

        async def write(status: LlamaDeploymentStatus) -> None:
            evaluation = await decide_and_scale(api, read, name="chat", namespace="ns", spec=spec, status=status,
                                                now=time.time())  # fmt: skip
            await runner.write_status(KEY, status_patch(evaluation), "autoscaler")

        await runner.run_after(KEY, write, reader(api), "autoscaler")

    async def race() -> None:
        for round_ in range(10):
            await asyncio.gather(
                autoscaler_step(available=round_ % 2 == 0),
                runner.run(KEY, reader(api), "pod"),
                runner.run_now(KEY, reader(api), "owner"),
            )

    asyncio.run(race())
    status = api.owner()["status"]
    types = [c["type"] for c in status["conditions"]]
    assert types == ["Ready", "Fits", "Progressing", "Degraded", "ScalingActive"]
    scaling = next(c for c in status["conditions"] if c["type"] == "ScalingActive")
    assert status["autoscaling"]["metricsAvailable"] is False  # the last round read no metrics
    assert (scaling["status"], scaling["reason"]) == ("False", "MetricsUnavailable")
    writers = {w.split(" ")[1] for w in api.writes if w.startswith("status ")}
    assert "autoscaling" in writers  # the autoscaler's own field ...
    assert not any("autoscaling" in w and "conditions" in w for w in api.writes)  # ... never with conditions


@pytest.fixture
def silent_engine() -> Iterator[int]:
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def serving_pod(port: int) -> Manifest:
    return {
        "metadata": {"name": "chat-abc", "namespace": "ns", "resourceVersion": "5",
                     "labels": {"llamaops.io/deployment": "chat"},
                     "annotations": {"llamaops.io/adapters": "support@v1"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "engine", "ports": [{"name": "http",
                                                                                     "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "ContainersReady", "status": "True"}]},
    }  # fmt: skip


def test_an_engine_that_never_answers_does_not_hold_the_object(silent_engine: int) -> None:
    adapters = [{"name": "support", "source": "s3://bucket/support", "version": "v1", "rank": 8,
                 "baseModel": "llama-3.1-8b"}]  # fmt: skip
    api = FakeApi(owner_manifest(adapters=adapters, adapterRollout={"smokeRequest": {"timeoutSeconds": 600}}))
    runner = runner_for(api)
    pods = [serving_pod(silent_engine)]

    async def scenario() -> tuple[float, float]:
        started = time.monotonic()
        await runner.run(KEY, reader(api, pods), "owner")  # starts the smoke request; must not wait for it
        first = time.monotonic() - started
        api.objects[("LlamaDeployment", "chat")]["spec"]["replicas"] = 3
        started = time.monotonic()
        await runner.run(KEY, reader(api, pods), "owner")
        second = time.monotonic() - started
        await runner.ctx.checks.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert first < 5, f"the first pass took {first:.1f}s while the engine was silent"
    assert second < 5, f"the replicas pass took {second:.1f}s while the engine was silent"
    deployment = api.objects[("Deployment", "chat")]
    assert deployment["spec"]["replicas"] == 3
    rollout = api.owner()["status"]["adapterRollout"]
    assert [c["pod"] for c in rollout["checks"]] == ["chat-abc"]
    assert rollout["checks"][0]["check"] == "SmokeRequest"
    condition = next(c for c in api.owner()["status"]["conditions"] if c["type"] == "AdapterRollout")
    assert "SmokeRequest on pod chat-abc unanswered since" in condition["message"]


def test_the_cached_owner_still_names_the_object_for_events() -> None:
    """Events posted from passes that child events start name the LlamaDeployment by its cached copy."""
    owner = owner_manifest()
    owner["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    slim = slim_owner(owner)
    assert (slim["apiVersion"], slim["kind"]) == ("llamaops.io/v1alpha1", "LlamaDeployment")
    assert {k: slim["metadata"][k] for k in ("name", "namespace", "uid")} == {"name": "chat", "namespace": "ns",
                                                                             "uid": "uid-1"}  # fmt: skip
    assert "managedFields" not in slim["metadata"]
