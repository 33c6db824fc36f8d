"""The operator SIGKILLed at every step of a vLLM runtime adapter rollout (`llama_operator.kill_points`) and
started again converges: every pod has the target set loaded through vLLM's adapter API, no pod was replaced
or restarted, one pod template, no duplicates, then no writes.

On the vLLM stand-in's pool (its runtime adapter API follows vLLM's: a second load of a loaded name is 400,
so a load repeated after a kill must be handled): create with adapter v1 on two replicas, v1 -> v2 loaded pod
by pod at run time, then replicas 2 -> 3 (the new pod gets v2 before it takes traffic). The machinery is
`kill_trials`, as for the surge path (`test_kill_points.py`). `make test` takes the first occurrence of each step
(19 points); `LLAMA_OPERATOR_RELIABILITY_FULL=1` (`make reliability`) up to 8 (47 at up to 3 took 705 s).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import install_crd
from tests.integration.kill_trials import (
    GROUP,
    PLURAL,
    VERSION,
    Scenario,
    check_children,
    check_quiet,
    converging_step,
    get_ld,
    survive_every_point,
)
from tests.integration.vllm_fixtures import VllmAssets, support_adapter, vllm_llama_deployment
from tests.reliability import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("vllm-standin")]

NAME = "runtime-kill"
FULL = os.environ.get("LLAMA_OPERATOR_RELIABILITY_FULL") == "1"
MAX_OCCURRENCE = 8 if FULL else 1
MIN_POINTS = 10
LOADED_CONDITION = "llamaops.io/adapters-loaded"


def manifest() -> dict[str, Any]:
    body = vllm_llama_deployment(NAME, adapters=[support_adapter("v1")], replicas=2)
    body["spec"]["adapterRollout"] = {"smokeRequest": {"prompt": "Say hello.", "maxTokens": 4}, "timeoutSeconds": 120}
    return body


def live_pods(api_client: Any, namespace: str) -> list[Any]:
    listed = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    return [pod for pod in listed.items if pod.metadata.deletion_timestamp is None]


def loaded(pod: Any) -> str:
    """The adapter set the operator loaded into the pod (its adapters-loaded condition)."""
    condition = next((c for c in pod.status.conditions or [] if c.type == LOADED_CONDITION), None)
    return str(condition.message) if condition is not None else ""


def converged(api_client: Any, namespace: str, *, replicas: int, version: str) -> bool | None:
    """The object observed at its generation, the rollout done, every replica ready with the set loaded."""
    obj = get_ld(api_client, namespace, NAME)
    status = obj.get("status") or {}
    rollout = status.get("adapterRollout") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    if rollout.get("phase") != "Succeeded" or rollout.get("target") != [f"support@{version}"]:
        return None
    try:
        deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    numbers = (deployment.spec.replicas, deployment.status.ready_replicas, deployment.status.replicas)
    if numbers != (replicas, replicas, replicas):
        return None
    pods = live_pods(api_client, namespace)
    return True if len(pods) == replicas and {loaded(p) for p in pods} == {f"support@{version}"} else None


def _create(api_client: Any, namespace: str) -> None:
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                             manifest())  # fmt: skip


def _v2(api_client: Any, namespace: str) -> None:
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": [support_adapter("v2")]}}
    )


def _three_replicas(api_client: Any, namespace: str) -> None:
    kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 3}}
    )


def check_result(api_client: Any, namespace: str) -> None:
    """One pod template (a runtime swap restarts nothing), no container restarted, then quiet."""
    check_children(api_client, namespace, NAME, templates=1)
    for pod in live_pods(api_client, namespace):
        restarts = {c.name: c.restart_count for c in pod.status.container_statuses or []}
        assert all(n == 0 for n in restarts.values()), f"{pod.metadata.name} restarted: {restarts}"
    check_quiet(api_client, namespace, NAME)


def scenario(config: Path) -> Scenario:
    return Scenario(
        name="vLLM runtime scenario",
        object_name=NAME,
        steps=(
            converging_step("create with adapter v1", _create, converged, replicas=2, version="v1"),
            converging_step("adapter v1 -> v2 at run time", _v2, converged, replicas=2, version="v2"),
            converging_step("replicas 2 -> 3", _three_replicas, converged, replicas=3, version="v2"),
        ),
        check_result=check_result,
        held="every pod has the target set loaded, none replaced or restarted, one pod template, then quiet",
        config=config,
        step_timeout_seconds=150,
    )


def test_operator_killed_at_every_step_of_a_runtime_rollout_converges(
    plane: ControlPlane, api_client: Any, assets: VllmAssets, tmp_path: Path, *, evidence: Callable[[str], None],
    ledger: Recorder,
) -> None:  # fmt: skip
    install_crd(api_client)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"hubEndpoint": assets.hub.url}))
    survive_every_point(plane, api_client, scenario(config), tmp_path, max_occurrence=MAX_OCCURRENCE,
                        min_points=MIN_POINTS, must_reach=["drive.load_and_verify:loaded"], evidence=evidence,
                        ledger=ledger)  # fmt: skip
