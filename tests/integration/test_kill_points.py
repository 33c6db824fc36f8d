"""The operator SIGKILLed at every step it reaches (`llama_operator.kill_points`) and started again converges
to the same children: no duplicates, no orphans, no lost rollout progress, and no writes once converged.

The surge path, on KWOK GPU nodes: create a LlamaDeployment with an adapter (the harness answers the pods'
adapter gates), change replicas, change the adapter's version (a new pod template, surged), scale through
the scale subresource. The machinery (discovery run, one trial per point, side by side) is in
`kill_trials`; `LLAMA_OPERATOR_RELIABILITY_FULL=1` (`make reliability`) takes up to 8 occurrences of each
step instead of 4. The vLLM runtime path is `test_kill_points_runtime.py`.
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
    survive_every_point,
)
from tests.reliability import Recorder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "scout-agent"
ADAPTER = "support-bot"
FULL = os.environ.get("LLAMA_OPERATOR_RELIABILITY_FULL") == "1"
MAX_OCCURRENCE = 8 if FULL else 4
MIN_POINTS = 40


def manifest() -> dict[str, Any]:
    """The example with a LoRA adapter on one H100, from s3 (not loaded at runtime: the surge path)."""
    body: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests" / "examples" / "llama-4-scout-int4-h100-tools-lora.yaml").read_text()
    )
    body["spec"].pop("hubTokenSecretRef", None)
    body["spec"]["replicas"] = 1
    body["spec"]["adapterRollout"] = {"canaryReplicas": 1, "pauseSeconds": 0, "timeoutSeconds": 300}
    return body


def custom(api_client: Any) -> Any:
    return kube_client.CustomObjectsApi(api_client)


def get_ld(api_client: Any, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
    return result


def rollout_done(obj: dict[str, Any], version: str) -> bool:
    rollout = (obj.get("status") or {}).get("adapterRollout") or {}
    return rollout.get("phase") == "Succeeded" and f"{ADAPTER}@{version}" in (rollout.get("target") or [])


def converged(api_client: Any, namespace: str, *, replicas: int, version: str) -> bool | None:
    """The object observed at its generation, its rollout done, and every replica ready with the target set."""
    obj = get_ld(api_client, namespace)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"] or not rollout_done(obj, version):
        return None
    try:
        deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    ready = deployment.status.ready_replicas or 0
    updated = deployment.status.updated_replicas or 0
    annotations = deployment.spec.template.metadata.annotations or {}
    if deployment.spec.replicas != replicas or ready != replicas or updated != replicas:
        return None
    if (deployment.status.replicas or 0) != replicas or annotations.get(
        "llamaops.io/adapters"
    ) != f"{ADAPTER}@{version}":
        return None
    return True


def _create(api_client: Any, namespace: str) -> None:
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest())


def _replicas(api_client: Any, namespace: str) -> None:
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 2}}
    )


def _adapter_version(api_client: Any, namespace: str) -> None:
    adapters = get_ld(api_client, namespace)["spec"]["adapters"]
    adapters[0] = {**adapters[0], "version": "v4"}
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": adapters}}
    )


def _scale(api_client: Any, namespace: str) -> None:
    custom(api_client).patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 3}}
    )


def check_result(api_client: Any, namespace: str) -> None:
    """One child of each kind, owned; the v3 and v4 pod templates only (replica changes make none); quiet."""
    check_children(api_client, namespace, NAME, templates=2)
    check_quiet(api_client, namespace, NAME)


def scenario(config: Path) -> Scenario:
    return Scenario(
        name="surge scenario",
        object_name=NAME,
        steps=(
            converging_step("create with adapter v3", _create, converged, replicas=1, version="v3"),
            converging_step("replicas 1 -> 2", _replicas, converged, replicas=2, version="v3"),
            converging_step("adapter v3 -> v4", _adapter_version, converged, replicas=2, version="v4"),
            converging_step("scale subresource 2 -> 3", _scale, converged, replicas=3, version="v4"),
        ),
        check_result=check_result,
        held="converged, one child of each kind, no duplicate ReplicaSet, then quiet",
        config=config,
    )


def test_operator_killed_at_every_step_converges(
    control_plane: ControlPlane, api_client: Any, tmp_path: Path, evidence: Callable[[str], None], ledger: Recorder
) -> None:
    install_crd(api_client)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({}))
    survive_every_point(control_plane, api_client, scenario(config), tmp_path, max_occurrence=MAX_OCCURRENCE,
                        min_points=MIN_POINTS, evidence=evidence, ledger=ledger)  # fmt: skip
