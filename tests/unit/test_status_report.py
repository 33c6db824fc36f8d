"""What `kubectl get llamad` and the conditions tell a user, from observed children."""

from __future__ import annotations

from typing import Any

from llama_operator.api.conditions import find_condition, make_condition, merge_conditions
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.status_report import Observation, invalid_spec_status, pod_problem, report

INVENTORY = OperatorConfig().default_inventory()
SPEC = LlamaDeploymentSpec.model_validate(
    {
        "model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"},
        "replicas": 2,
        "serving": {"maxConcurrentSequences": 2},
    }
)
DECISION = plan(SPEC, "chat", INVENTORY)
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def deployment(ready: int, updated: int = 2, replicas: int = 2, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def unschedulable_pod() -> dict[str, Any]:
    message = "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."
    return {
        "metadata": {"name": "chat-abc"},
        "status": {
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
        },
    }


def crashing_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "chat-def"},
        "status": {
            "containerStatuses": [
                {
                    "name": "engine",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "error: invalid argument: --bogus"}},
                }
            ]
        },
    }


def status_of(observation: Observation, previous: Any = ()) -> Any:
    return report("chat", "team", SPEC, DECISION, observation, generation=3, previous=list(previous), now=T1)


def test_ready_when_all_replicas_are_ready() -> None:
    status = status_of(Observation(workload=deployment(ready=2)))
    assert status.phase == "Ready"
    assert status.ready == "2/2"
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == "True"
    assert ready.observed_generation == 3
    assert status.endpoint == "http://chat.team.svc.cluster.local/v1"
    assert status.gpus == "gpu-24gb x1"


def test_unschedulable_pods_show_the_schedulers_reason() -> None:
    status = status_of(Observation(workload=deployment(ready=1), pods=[unschedulable_pod()]))
    assert status.phase == "Degraded"
    ready = find_condition(status.conditions, "Ready")
    degraded = find_condition(status.conditions, "Degraded")
    assert ready is not None
    assert degraded is not None
    assert ready.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in ready.message
    assert degraded.status == "True"


def test_crash_loop_shows_the_containers_own_error() -> None:
    problem = pod_problem([crashing_pod()])
    assert problem is not None
    assert problem.reason == "ContainerCrashing"
    assert "exit code 1" in problem.message
    assert "--bogus" in problem.message


def test_rolling_out_is_progressing() -> None:
    status = status_of(Observation(workload=deployment(ready=2, updated=1, replicas=3)))
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None
    assert progressing.status == "True"
    assert status.phase == "Progressing"


def test_no_workload_and_no_fit_is_failed() -> None:
    huge = LlamaDeploymentSpec.model_validate({"model": {"catalogName": "llama-3.1-405b", "source": "hf://o/r"}})
    decision = plan(huge, "huge", INVENTORY)
    status = report("huge", "team", huge, decision, Observation(), generation=1, previous=[], now=T0)
    fits = find_condition(status.conditions, "Fits")
    assert fits is not None
    assert fits.status == "False"
    assert "would fit with" in fits.message
    assert status.phase == "Failed"


def test_transition_time_is_kept_while_status_holds() -> None:
    first = status_of(Observation(workload=deployment(ready=2)))
    second = report("chat", "team", SPEC, DECISION, Observation(workload=deployment(ready=2)), generation=3,
                    previous=first.conditions, now="2026-01-02T00:00:00Z")  # fmt: skip
    ready = find_condition(second.conditions, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T1
    flipped = report("chat", "team", SPEC, DECISION, Observation(workload=deployment(ready=0)), generation=3,
                     previous=second.conditions, now="2026-01-03T00:00:00Z")  # fmt: skip
    ready = find_condition(flipped.conditions, "Ready")
    assert ready is not None
    assert ready.last_transition_time == "2026-01-03T00:00:00Z"


def test_invalid_spec_says_what_to_do() -> None:
    status = invalid_spec_status("spec.model.source: bad", generation=2, previous=[], now=T0)
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.reason == "InvalidSpec"
    assert "Fix the spec" in ready.message
    assert status.phase == "Failed"


def test_merge_orders_conditions_by_importance() -> None:
    merged = merge_conditions(
        [], [make_condition(t, "True", "R", "", generation=1, now=T0) for t in ("Degraded", "Fits", "Ready")]
    )
    assert [c.type for c in merged] == ["Ready", "Fits", "Degraded"]


def test_a_refused_child_blocks_ready_whatever_the_pods_say() -> None:
    status = report(
        "chat", "team", SPEC, DECISION, Observation(workload=deployment(ready=2)), generation=3, previous=[], now=T1,
        apply_error="could not apply Service/chat: services is forbidden",
    )  # fmt: skip
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == "False"
    assert ready.reason == "ApplyFailed"
    assert "services is forbidden" in ready.message
    assert status.phase == "Degraded"


TOLERATION_REFUSAL = (
    'the apiserver refused Deployment/chat: Deployment.apps "chat" is invalid: '
    'spec.template.spec.tolerations[0].operator: Unsupported value: "Equals": supported values: '
    '"Equal", "Exists"; fix the field it names in the spec'
)


def test_a_refused_workload_fails_with_the_apiservers_words() -> None:
    """The Deployment itself was refused: nothing will serve until the spec changes, and status says why
    (it used to say Pending, Degraded=False Healthy)."""
    status = report("chat", "team", SPEC, DECISION, Observation(), generation=3, previous=[], now=T1,
                    apply_error=TOLERATION_REFUSAL, apply_rejected=True)  # fmt: skip
    assert status.phase == "Failed"
    ready, degraded = find_condition(status.conditions, "Ready"), find_condition(status.conditions, "Degraded")
    assert ready is not None
    assert degraded is not None
    assert (ready.status, ready.reason) == ("False", "ChildRejected")
    assert (degraded.status, degraded.reason) == ("True", "ChildRejected")
    assert "spec.template.spec.tolerations[0].operator: Unsupported value" in degraded.message
    assert "Deployment/chat" in ready.message


def test_a_failed_apply_without_a_workload_is_degraded_not_pending() -> None:
    status = report("chat", "team", SPEC, DECISION, Observation(), generation=3, previous=[], now=T1,
                    apply_error="could not apply Deployment/chat: 403 Forbidden: deployments.apps is forbidden")  # fmt: skip
    assert status.phase == "Degraded"
    degraded = find_condition(status.conditions, "Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "ApplyFailed")


def test_a_refused_update_keeps_the_running_workload_degraded() -> None:
    status = report("chat", "team", SPEC, DECISION, Observation(workload=deployment(ready=2)), generation=3,
                    previous=[], now=T1, apply_error=TOLERATION_REFUSAL, apply_rejected=True)  # fmt: skip
    assert status.phase == "Degraded"
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "ChildRejected")


def test_pods_the_replicaset_cannot_create_show_the_admission_message() -> None:
    workload = deployment(ready=0, updated=0, replicas=0)
    workload["metadata"]["name"] = "chat"
    message = ('pods "chat-7d9f8b6c5-" is forbidden: exceeded quota: no-pods, requested: pods=1, used: pods=0, '
               "limited: pods=0")  # fmt: skip
    workload["status"]["conditions"] = [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message},
    ]
    status = status_of(Observation(workload=workload))
    assert status.phase == "Degraded"
    degraded = find_condition(status.conditions, "Degraded")
    ready = find_condition(status.conditions, "Ready")
    assert degraded is not None
    assert ready is not None
    assert (degraded.status, degraded.reason) == ("True", "PodsRejected")
    assert message in degraded.message
    assert "Deployment chat cannot create pods" in degraded.message
    assert ready.reason == "PodsRejected"


def test_a_cleared_replica_failure_is_healthy_again() -> None:
    workload = deployment(ready=2)
    workload["status"]["conditions"] = [{"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"}]
    status = status_of(Observation(workload=workload))
    assert status.phase == "Ready"
