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
from llama_operator.kube import RejectedError, UnreachableError
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


class Clock:
    """Monotonic seconds the test moves by hand (back-offs)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TOLERATION_INVALID = RejectedError(
    422, "Unprocessable Entity",
    'Deployment.apps "chat" is invalid: spec.template.spec.tolerations[0].operator: Unsupported value: "Equals": '
    'supported values: "Equal", "Exists"',
)  # fmt: skip


def condition_of(api: FakeApi, type_: str) -> Manifest:
    return next(c for c in api.owner()["status"]["conditions"] if c["type"] == type_)


def recheck_in(runner: PassRunner) -> float:
    return runner._rechecks[KEY].when() - asyncio.get_running_loop().time()


def test_a_refused_child_is_in_status_and_its_body_is_not_sent_again_before_the_backoff() -> None:
    api = FakeApi(owner_manifest())
    api.refuse["Deployment"] = TOLERATION_INVALID
    clock = Clock()
    runner = PassRunner(OperatorContext(kube=api, config=OperatorConfig(), clock=clock))

    async def scenario() -> list[float]:
        await runner.run(KEY, reader(api), "owner")
        delays = [recheck_in(runner)]
        for _ in range(5):  # events while the back-off runs: no apply, no status write
            await runner.run(KEY, reader(api), "pod")
        assert api.writes.count("apply Deployment") == 1
        clock.now += 11
        result = await runner.run(KEY, reader(api), "rollout-timer")  # the back-off is over: one more try
        assert result is not None
        delays.append(result[0].retry_in(clock.now) or 0.0)
        return delays

    delays = asyncio.run(scenario())
    assert api.writes.count("apply Deployment") == 2
    assert [w for w in api.writes if w.startswith("apply ") and w != "apply Deployment"] == [
        "apply Service", "apply PodDisruptionBudget"]  # the others were applied once, and left alone  # fmt: skip
    assert 9 <= delays[0] <= 10.5
    assert 19 <= delays[1] <= 20.5, "the second try waits twice as long"
    status = api.owner()["status"]
    assert status["phase"] == "Failed"
    degraded = condition_of(api, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ChildRejected")
    assert "spec.template.spec.tolerations[0].operator: Unsupported value" in degraded["message"]
    assert len([w for w in api.writes if w.startswith("status ")]) == 1, "an unchanged refusal is written once"


def test_a_changed_spec_is_applied_at_once_and_clears_the_refusal() -> None:
    api = FakeApi(owner_manifest())
    api.refuse["Deployment"] = TOLERATION_INVALID
    runner = PassRunner(OperatorContext(kube=api, config=OperatorConfig(), clock=Clock()))

    async def scenario() -> None:
        await runner.run(KEY, reader(api), "owner")
        del api.refuse["Deployment"]
        api.objects[("LlamaDeployment", "chat")]["spec"]["replicas"] = 2  # the user fixed the spec
        await runner.run(KEY, reader(api), "owner")

    asyncio.run(scenario())
    assert api.writes.count("apply Deployment") == 2
    degraded = condition_of(api, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "Healthy")
    assert api.owner()["status"]["phase"] != "Failed"
    assert not runner.ctx.failures._failures  # nothing held back any more


def test_an_apiserver_that_does_not_answer_stops_the_pass_and_is_tried_by_the_next() -> None:
    api = FakeApi(owner_manifest())
    api.refuse["Deployment"] = UnreachableError("ConnectionRefusedError: [Errno 111] Connection refused")
    runner = PassRunner(OperatorContext(kube=api, config=OperatorConfig(), clock=Clock()))

    async def scenario() -> float:
        await runner.run(KEY, reader(api), "owner")
        result = await runner.run(KEY, reader(api), "pod")
        assert result is not None
        return result[0].retry_in(1000.0) or 0.0

    delay = asyncio.run(scenario())
    assert [w for w in api.writes if w.startswith("apply ")] == ["apply Deployment", "apply Deployment"]
    degraded = condition_of(api, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert api.owner()["status"]["phase"] == "Degraded"
    assert 9 <= delay <= 10.5, "the second failure in a row waits 10 s"


class StatusUnreachableApi(FakeApi):
    """An apiserver that goes away before the status write of a pass."""

    def __init__(self, owner: Manifest) -> None:
        super().__init__(owner)
        self.down = False

    def patch_llamadeployment_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        if self.down:
            raise UnreachableError("ConnectionRefusedError: [Errno 111] Connection refused")
        return super().patch_llamadeployment_status(namespace, name, status)


def test_a_recheck_whose_status_write_finds_no_apiserver_logs_one_line_and_looks_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rollout's timer pass runs on a pass worker, not under a kopf handler: an API error there must not
    kill the worker (once an unretrieved task exception with a traceback) nor end the rechecks."""
    api = StatusUnreachableApi(owner_manifest())
    runner = runner_for(api)

    async def scenario() -> float:
        await runner.run(KEY, reader(api), "owner")
        api.down = True
        api.objects[("LlamaDeployment", "chat")]["spec"]["replicas"] = 2  # the pass has a status to write
        runner._recheck_later(KEY, reader(api), 0.01)
        await asyncio.sleep(0.3)
        assert all(not worker.done() for worker in runner._workers), "a pass worker died"
        return recheck_in(runner)

    delay = asyncio.run(scenario())
    assert 4 <= delay <= 5.1, "the recheck was not asked again"
    lines = [r.getMessage() for r in caplog.records if "could not recheck" in r.getMessage()]
    assert lines == [
        "could not recheck ns/chat: 0 Unreachable: ConnectionRefusedError: [Errno 111] Connection refused; again in 5 s"
    ]
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    ("name", "found"),
    [("chat.v2", "contains dots"), ("x" * 64, "has 64 characters"), ("3b-chat", "does not start with a letter")],
)
def test_a_name_no_service_can_take_is_an_invalid_spec_before_any_apply(name: str, found: str) -> None:
    api = FakeApi(owner_manifest(name=name))
    runner = runner_for(api)
    asyncio.run(runner.run(("ns", name), reader(api), "owner"))
    assert not [w for w in api.writes if w.startswith("apply ")]
    status = api.owner()["status"]
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert found in ready["message"]
    assert "DNS-1035" in ready["message"]
    assert "create the LlamaDeployment again under a name such as" in ready["message"]
