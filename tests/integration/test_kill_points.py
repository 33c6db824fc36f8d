"""The operator SIGKILLed at every step it reaches (`llama_operator.kill_points`) and started again converges
to the same children: no duplicates, no orphans, no lost rollout progress, and no writes once converged.

One scripted scenario on KWOK GPU nodes: create a LlamaDeployment with an adapter (the surge path; the
harness answers the pods' adapter gates), change replicas, change the adapter's version, scale through the
scale subresource. A first run logs every step reached; then, for each (step, occurrence), a fresh operator
dies there, a clean one is started, the scenario goes on to its end and the result is checked.
The default run takes every third point; `LLAMA_OPERATOR_RELIABILITY_FULL=1` (`make reliability`) all.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, install_crd, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.reliability import Recorder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
NAME = "scout-agent"
ADAPTER = "support-bot"
STEP_TIMEOUT_SECONDS = 60
QUIET_SECONDS = 3.0
MAX_OCCURRENCE = 8
FULL = os.environ.get("LLAMA_OPERATOR_RELIABILITY_FULL") == "1"
MIN_POINTS = 50 if FULL else 20


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


@dataclass(frozen=True)
class Step:
    what: str
    act: Callable[[Any, str], None]
    replicas: int
    version: str


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


SCENARIO = (
    Step("create with adapter v3", _create, 1, "v3"),
    Step("replicas 1 -> 2", _replicas, 2, "v3"),
    Step("adapter v3 -> v4", _adapter_version, 2, "v4"),
    Step("scale subresource 2 -> 3", _scale, 3, "v4"),
)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """`values` in the environment of the operator started inside (it copies os.environ)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def died(operator: OperatorProcess) -> bool:
    return operator.process is not None and operator.process.poll() is not None


def start_to_be_killed(operator: OperatorProcess, point: str) -> None:
    """Start with the kill point set; it may already die while starting (a resume at start)."""
    with environment(LLAMA_OPERATOR_KILL_AT=point):
        try:
            operator.start()
        except pytest.fail.Exception:
            if not died(operator):
                raise


@dataclass
class Run:
    killed_at_step: str | None = None
    seconds: float = 0.0


def drive(api_client: Any, namespace: str, operator: OperatorProcess) -> Run:
    """Every step of the scenario to its end; an operator that dies (SIGKILL only) is started again clean."""
    run = Run()
    started = time.monotonic()
    for step in SCENARIO:
        step.act(api_client, namespace)

        def done(step: Step = step) -> bool | None:
            if run.killed_at_step is None and died(operator):
                assert operator.process is not None
                assert operator.process.returncode == -signal.SIGKILL, (
                    f"the operator exited with {operator.process.returncode}, not by its kill point\n"
                    f"{operator.log_tail()}"
                )
                run.killed_at_step = step.what
                operator.start()
            return converged(api_client, namespace, replicas=step.replicas, version=step.version)

        try:
            poll_until(done, STEP_TIMEOUT_SECONDS, f"{step.what} to converge in {namespace}", interval_seconds=0.1)
        except pytest.fail.Exception:
            print(operator.log_tail())
            raise
    run.seconds = time.monotonic() - started
    return run


def children(api_client: Any, namespace: str) -> dict[str, list[Any]]:
    apps, core = kube_client.AppsV1Api(api_client), kube_client.CoreV1Api(api_client)
    policy = kube_client.PolicyV1Api(api_client)
    return {
        "Deployment": apps.list_namespaced_deployment(namespace).items,
        "Service": core.list_namespaced_service(namespace).items,
        "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget(namespace).items,
    }


def revisions(api_client: Any, namespace: str) -> dict[str, str]:
    found = {f"{kind}/{o.metadata.name}": o.metadata.resource_version for kind, objs in
             children(api_client, namespace).items() for o in objs}  # fmt: skip
    found["LlamaDeployment"] = get_ld(api_client, namespace)["metadata"]["resourceVersion"]
    return found


def check_result(api_client: Any, namespace: str) -> None:
    """One child of each kind, each owned by the object; one ReplicaSet per pod template; then quiet."""
    uid = get_ld(api_client, namespace)["metadata"]["uid"]
    for kind, objs in children(api_client, namespace).items():
        assert [o.metadata.name for o in objs] == [NAME], f"{kind}: {[o.metadata.name for o in objs]}"
        owners = objs[0].metadata.owner_references or []
        assert [(o.uid, o.controller) for o in owners] == [(uid, True)], f"{kind} is not owned by the object"
    replica_sets = kube_client.AppsV1Api(api_client).list_namespaced_replica_set(namespace).items
    hashes = Counter((rs.metadata.labels or {}).get("pod-template-hash") for rs in replica_sets)
    assert all(n == 1 for n in hashes.values()), f"duplicate ReplicaSets: {hashes}"
    # v3 and v4 pod templates; the replica changes alone make no new template.
    assert len(replica_sets) == 2, f"{len(replica_sets)} ReplicaSets: {[rs.metadata.name for rs in replica_sets]}"
    live = [rs for rs in replica_sets if (rs.spec.replicas or 0) > 0]
    assert len(live) == 1, "one ReplicaSet serves once converged"

    def quiet() -> bool | None:
        before = revisions(api_client, namespace)
        time.sleep(QUIET_SECONDS)  # a window with no write is what is measured here
        return True if revisions(api_client, namespace) == before else None

    poll_until(quiet, 30, f"{QUIET_SECONDS:.0f} s without a write to the object or its children in {namespace}")


def remove(api_client: Any, namespace: str) -> None:
    """The object gone before the next operator starts (it would resume it and reach points of its own)."""
    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)

    def gone() -> bool | None:
        try:
            get_ld(api_client, namespace)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return None

    poll_until(gone, 30, f"{NAME} in {namespace} to be deleted")
    kube_client.CoreV1Api(api_client).delete_namespace(namespace)


def kill_points(log: Path) -> list[str]:
    """Each (step, occurrence) the discovery run reached, as `name#k`, occurrences up to MAX_OCCURRENCE."""
    seen: Counter[str] = Counter()
    points = []
    for name in log.read_text().split():
        seen[name] += 1
        if seen[name] <= MAX_OCCURRENCE:
            points.append(f"{name}#{seen[name]}")
    return points


def test_operator_killed_at_every_step_converges(
    control_plane: ControlPlane, api_client: Any, tmp_path: Path, evidence: Callable[[str], None], ledger: Recorder
) -> None:
    install_crd(api_client)
    operator = OperatorProcess(control_plane.kubeconfig_path, tmp_path, ["--config", str(tmp_path / "config.yaml")])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({}))
    log = tmp_path / "points.log"
    namespace = create_namespace(api_client, prefix="kill")
    with environment(LLAMA_OPERATOR_KILL_POINTS_LOG=str(log)):
        operator.start()
    try:
        discovery = drive(api_client, namespace, operator)
        check_result(api_client, namespace)
    finally:
        operator.stop()
    remove(api_client, namespace)
    points = kill_points(log)
    names = sorted({p.split("#")[0] for p in points})
    chosen = points if FULL else points[::3]
    evidence(f"kill points: {len(points)} reached ({len(names)} names) in {discovery.seconds:.1f} s: {names}")
    assert len(chosen) >= MIN_POINTS, f"only {len(chosen)} kill points: {points}"

    survived = []
    started = time.monotonic()
    for point in chosen:
        namespace = create_namespace(api_client, prefix="kill")
        start_to_be_killed(operator, point)
        try:
            run = drive(api_client, namespace, operator)
            assert run.killed_at_step is not None or died(operator), f"{point} was never reached"
            if died(operator):  # killed after the last step converged: start again and look once more
                operator.start()
                last = functools.partial(converged, api_client, namespace, replicas=3, version="v4")
                poll_until(last, STEP_TIMEOUT_SECONDS, f"convergence after {point}")
            check_result(api_client, namespace)
        finally:
            operator.stop()
        remove(api_client, namespace)
        survived.append(point)
        ledger.kill_point(
            f"surge scenario: {point}",
            f"SIGKILL during '{run.killed_at_step or SCENARIO[-1].what}'; converged, one child of each kind, "
            "no duplicate ReplicaSet, then quiet",
        )
    evidence(
        f"kill points survived: {len(survived)} of {len(chosen)} ({len(points)} reached) "
        f"in {time.monotonic() - started:.0f} s"
    )
    assert survived == chosen
