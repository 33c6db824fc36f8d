"""A multi-node LlamaDeployment's status follows its LeaderWorkerSet's own conditions (Available,
Progressing, UpdateInProgress, as the LWS controller writes them)."""

from __future__ import annotations

from typing import Any

from llama_operator.api.conditions import find_condition
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.lws_status import read_leader_worker_set
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.status_report import Observation, report

INVENTORY = OperatorConfig().default_inventory()
SPEC = LlamaDeploymentSpec.model_validate(
    {
        "model": {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"},
        "placement": {"maxNodesPerReplica": 2},
    }
)
DECISION = plan(SPEC, "big", INVENTORY)
NOW = "2026-01-01T00:00:00Z"


def condition(kind: str, reason: str, message: str, generation: int = 1, status: str = "True") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "observedGeneration": generation,
            "lastTransitionTime": NOW}  # fmt: skip


AVAILABLE = condition("Available", "AllGroupsReady", "All replicas are ready")
PROGRESSING = condition("Progressing", "GroupsProgressing", "Replicas are progressing")
UPDATING = condition("UpdateInProgress", "GroupsUpdating", "Rolling Upgrade is in progress")


def lws(ready: int, conditions: list[dict[str, Any]], *, replicas: int = 1, updated: int = 1, generation: int = 1) -> (
    dict[str, Any]
):  # fmt: skip
    status = {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": updated,
              "observedGeneration": generation, "conditions": conditions}  # fmt: skip
    return {"metadata": {"name": "big", "generation": generation}, "status": status}


def status_of(workload: dict[str, Any], spec: LlamaDeploymentSpec = SPEC) -> Any:
    return report("big", "team", spec, DECISION, Observation(workload=workload), generation=1, previous=[], now=NOW)


def test_the_plan_spans_two_h100_nodes() -> None:
    assert DECISION.chosen is not None
    assert DECISION.chosen.shape.nodes == 2


def test_ready_when_the_lws_is_available_quotes_it() -> None:
    status = status_of(lws(1, [AVAILABLE, condition("Progressing", "GroupsProgressing", "x", status="False")]))
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, status.phase) == ("True", "ReplicasAvailable", "Ready")
    assert (
        ready.message == "1/1 replicas ready; LeaderWorkerSet big: Available (AllGroupsReady: All replicas are ready)"
    )


def test_not_ready_while_the_lws_is_progressing_even_when_the_counts_say_ready() -> None:
    status = status_of(lws(1, [PROGRESSING]))
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, status.phase) == ("False", "LeaderWorkerSetNotAvailable", "Progressing")
    assert "LeaderWorkerSet big: Progressing (GroupsProgressing: Replicas are progressing)" in ready.message


def test_unready_groups_name_the_lws_condition() -> None:
    status = status_of(lws(0, [PROGRESSING]))
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "ReplicasUnavailable")
    assert ready.message.startswith("0/1 replicas ready; ")
    assert ready.message.endswith("LeaderWorkerSet big: Progressing (GroupsProgressing: Replicas are progressing)")


def test_a_rolling_update_of_the_lws_is_progressing() -> None:
    status = status_of(lws(1, [UPDATING, PROGRESSING], updated=1))
    progressing = find_condition(status.conditions, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", "RollingOut")
    assert "UpdateInProgress (GroupsUpdating: Rolling Upgrade is in progress)" in progressing.message
    assert status.phase == "Progressing"


def test_conditions_of_an_older_generation_do_not_count() -> None:
    stale = lws(1, [condition("Available", "AllGroupsReady", "All replicas are ready", generation=1)], generation=2)
    status = status_of(stale)
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == "False"
    assert "has no conditions for generation 2 yet" in ready.message


def test_false_conditions_are_not_holding() -> None:
    reading = read_leader_worker_set(lws(1, [condition("Available", "AllGroupsReady", "x", status="False")]))
    assert not reading.reported
    assert not reading.available


def test_a_single_node_deployment_ignores_lws_conditions() -> None:
    small = LlamaDeploymentSpec.model_validate({"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}})
    decision = plan(small, "small", INVENTORY)
    deployment = {"metadata": {"name": "small", "generation": 1},
                  "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}}  # fmt: skip
    status = report("small", "team", small, decision, Observation(workload=deployment), generation=1, previous=[],
                    now=NOW)  # fmt: skip
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.message) == ("True", "1/1 replicas ready")
