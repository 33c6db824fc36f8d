"""The dev harness sets the operator's readiness gates on KWOK pods (nothing serves there), and only there."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from llama_operator.adapters.drive import pod_view
from llama_operator.adapters.rollout import ADAPTERS_ANNOTATION, GATE_CONDITION
from llama_operator_dev.controlplane import KWOK_STAGES_FILE
from llama_operator_dev.fake_pod_gates import awaits_gate, gate_conditions, owner_path, serving_key

KWOK_NODES = {"kwok-h100-80gb-0"}
NOW = "2026-01-01T00:00:00Z"
SUPPORT_V1 = {"name": "support", "source": "hf://org/support-v1", "version": "v1"}
SUPPORT_V2 = {"name": "support", "source": "hf://org/support-v2", "version": "v2"}
SQL_V3 = {"name": "sql", "source": "hf://org/sql", "version": "v3"}


def pod(*, node: str = "kwok-h100-80gb-0", gated: bool = True, templated: str | None = None,
        conditions: list[dict[str, Any]] | None = None, deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": "scout-1", "namespace": "demo", "labels": {"llamaops.io/deployment": "scout"}}
    if templated is not None:
        meta["annotations"] = {ADAPTERS_ANNOTATION: templated}
    if deleting:
        meta["deletionTimestamp"] = NOW
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "engine"}]}
    if gated:
        spec["readinessGates"] = [{"conditionType": GATE_CONDITION}]
    return {"metadata": meta, "spec": spec, "status": {"phase": "Pending", "conditions": conditions or []}}


def owner(adapters: list[dict[str, Any]], rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"spec": {"adapters": adapters}, "status": {"adapterRollout": rollout} if rollout else {}}


class TestWhichPods:
    def test_a_gated_pod_bound_to_a_kwok_node_awaits_its_gate(self) -> None:
        assert awaits_gate(pod(), KWOK_NODES)

    @pytest.mark.parametrize(
        "other",
        [
            pod(node="kwok-cpu-real-0"),  # the process-backed kubelet's node: the operator checks it for real
            pod(gated=False),
            pod(deleting=True),
            pod(conditions=[{"type": GATE_CONDITION, "status": "False", "message": "smoke request failed"}]),
        ],
        ids=["process-backed-node", "no-gate", "deleting", "verdict-already-there"],
    )
    def test_other_pods_are_left_to_the_operator(self, other: dict[str, Any]) -> None:
        assert not awaits_gate(other, KWOK_NODES)


class TestConditions:
    def test_a_templated_set_gets_the_gate_only(self) -> None:
        conditions = gate_conditions(pod(templated="support-bot@v3"), None, NOW)
        assert conditions is not None
        assert [(c["type"], c["status"]) for c in conditions] == [(GATE_CONDITION, "True")]

    def test_a_runtime_set_is_recorded_as_loaded_so_the_operator_finds_it_verified(self) -> None:
        gated = pod()
        conditions = gate_conditions(gated, owner([SUPPORT_V1, SQL_V3]), NOW)
        assert conditions is not None
        gated["status"]["conditions"] = conditions
        view = pod_view(gated, runtime=True)
        assert (view.adapters, view.gate) == ("sql@v3,support@v1", "True")

    def test_a_runtime_pod_whose_owner_is_gone_gets_nothing(self) -> None:
        assert gate_conditions(pod(), None, NOW) is None

    def test_the_serving_set_is_the_last_good_one_after_a_rollback(self) -> None:
        rolled_back = {"target": ["support@v2"], "serving": [SUPPORT_V1], "phase": "RolledBack"}
        assert serving_key(owner([SUPPORT_V2], rolled_back)) == "support@v1"

    def test_a_status_about_an_older_spec_is_not_used(self) -> None:
        older = {"target": ["support@v1"], "serving": [SUPPORT_V1], "phase": "Succeeded"}
        assert serving_key(owner([SUPPORT_V2], older)) == "support@v2"

    def test_the_owner_is_the_pods_llamadeployment(self) -> None:
        assert owner_path(pod()) == "/apis/llamaops.io/v1alpha1/namespaces/demo/llamadeployments/scout"


def kwok_pod_ready_rule() -> str:
    stages = {s["metadata"]["name"]: s for s in yaml.safe_load_all(KWOK_STAGES_FILE.read_text()) if s}
    expressions = stages["llamaops-pod-ready"]["spec"]["selector"]["matchExpressions"]
    (rule,) = [e for e in expressions if GATE_CONDITION in e["key"]]
    assert (rule["operator"], rule["values"]) == ("In", ["true"])
    return str(rule["key"])


@pytest.mark.parametrize(
    ("case", "starts"),
    [
        (pod(gated=False), True),
        (pod(), False),
        (pod(conditions=gate_conditions(pod(), owner([SUPPORT_V1]), NOW)), True),
    ],
    ids=["no-gate", "gate-not-set-yet", "gate-set-by-the-harness"],
)
def test_kwok_starts_a_gated_pod_only_once_its_gate_is_set(case: dict[str, Any], starts: bool) -> None:
    jq = shutil.which("jq")  # KWOK evaluates the rule with gojq; jq has the same semantics for it
    if jq is None:
        pytest.skip("jq is not installed")
    result = subprocess.run([jq, "-c", kwok_pod_ready_rule()], input=json.dumps(case), capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == ("true" if starts else "false")
