"""Kill-point trials: a scripted scenario driven against an operator that SIGKILLs itself at one named step
(`llama_operator.kill_points`), started again clean, and checked for the same end state.

A discovery run logs every step the scenario reaches; each (step, occurrence) then gets a trial of its own:
a fresh namespace watched by an operator of its own (`-n`), killed there, a clean one started, the scenario
driven to its end, the result checked (same children, no duplicates, no lost rollout progress, then no
writes). Trials run side by side: most of a trial is waiting on the control plane and the pods.
"""

from __future__ import annotations

import functools
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.reliability import Recorder

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
QUIET_SECONDS = 3.0
TRIALS_AT_ONCE = 3


@dataclass(frozen=True)
class Step:
    what: str
    act: Callable[[Any, str], None]  # (api_client, namespace): the change a user makes
    converged: Callable[[Any, str], bool | None]  # True once the change is done; None while not yet


@dataclass(frozen=True)
class Scenario:
    name: str  # the ledger's prefix, e.g. "surge scenario"
    object_name: str  # the LlamaDeployment the steps act on
    steps: Sequence[Step]
    check_result: Callable[[Any, str], None]  # asserts the end state, after the last step converged
    held: str  # what check_result proves, for the ledger
    config: Path  # the operator's --config file
    step_timeout_seconds: float = 90.0
    # Only the kill points whose names start so (or with one of these) get trials (the others have
    # scenarios of their own).
    point_prefix: str | tuple[str, ...] = ""
    trials_at_once: int = TRIALS_AT_ONCE  # 1 where a trial's pods fill the pool


@dataclass
class Run:
    killed_at_step: str | None = None
    seconds: float = 0.0


@dataclass
class TrialOutcome:
    point: str
    killed_in: str


@dataclass
class Discovery:
    points: list[str] = field(default_factory=list)  # `name#k`
    seconds: float = 0.0

    @property
    def names(self) -> list[str]:
        return sorted({p.split("#")[0] for p in self.points})


def get_ld(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return result


def died(operator: OperatorProcess) -> bool:
    return operator.process is not None and operator.process.poll() is not None


def start_to_be_killed(operator: OperatorProcess, point: str) -> None:
    """Start with the kill point set; it may already die while starting (a resume at start)."""
    try:
        operator.start(env={"LLAMA_OPERATOR_KILL_AT": point})
    except pytest.fail.Exception:
        if not died(operator):
            raise


def drive(api_client: Any, namespace: str, operator: OperatorProcess, scenario: Scenario) -> Run:
    """Every step of the scenario to its end; an operator that dies (SIGKILL only) is started again clean."""
    run = Run()
    started = time.monotonic()
    for step in scenario.steps:
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
            return step.converged(api_client, namespace)

        try:
            poll_until(done, scenario.step_timeout_seconds, f"{step.what} to converge in {namespace}",
                       interval_seconds=0.1)  # fmt: skip
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


def check_children(api_client: Any, namespace: str, name: str, *, templates: int) -> None:
    """One child of each kind, each owned by the object; `templates` ReplicaSets, none twice; one serving."""
    uid = get_ld(api_client, namespace, name)["metadata"]["uid"]
    for kind, objs in children(api_client, namespace).items():
        assert [o.metadata.name for o in objs] == [name], f"{kind}: {[o.metadata.name for o in objs]}"
        owners = objs[0].metadata.owner_references or []
        assert [(o.uid, o.controller) for o in owners] == [(uid, True)], f"{kind} is not owned by the object"
    replica_sets = kube_client.AppsV1Api(api_client).list_namespaced_replica_set(namespace).items
    hashes = Counter((rs.metadata.labels or {}).get("pod-template-hash") for rs in replica_sets)
    assert all(n == 1 for n in hashes.values()), f"duplicate ReplicaSets: {hashes}"
    assert len(replica_sets) == templates, f"{len(replica_sets)} ReplicaSets: {[r.metadata.name for r in replica_sets]}"
    live = [rs for rs in replica_sets if (rs.spec.replicas or 0) > 0]
    assert len(live) == 1, "one ReplicaSet serves once converged"


def check_quiet(api_client: Any, namespace: str, name: str) -> None:
    """A window of QUIET_SECONDS with no write to the object or its children."""

    def revisions() -> dict[str, str]:
        found = {f"{kind}/{o.metadata.name}": o.metadata.resource_version
                 for kind, objs in children(api_client, namespace).items() for o in objs}  # fmt: skip
        found["LlamaDeployment"] = get_ld(api_client, namespace, name)["metadata"]["resourceVersion"]
        return found

    def quiet() -> bool | None:
        before = revisions()
        time.sleep(QUIET_SECONDS)  # a window with no write is what is measured here
        return True if revisions() == before else None

    poll_until(quiet, 30, f"{QUIET_SECONDS:.0f} s without a write to the object or its children in {namespace}")


def remove(api_client: Any, namespace: str, name: str) -> None:
    """The object and its namespace deleted (its pods go with the namespace)."""
    kube_client.CustomObjectsApi(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def gone() -> bool | None:
        try:
            get_ld(api_client, namespace, name)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return None

    poll_until(gone, 30, f"{name} in {namespace} to be deleted")
    kube_client.CoreV1Api(api_client).delete_namespace(namespace)


def points_reached(log: Path, max_occurrence: int, prefix: str | tuple[str, ...] = "") -> list[str]:
    """Each (step, occurrence) a run reached, as `name#k`, occurrences up to `max_occurrence`; only names that
    start with `prefix`."""
    seen: Counter[str] = Counter()
    points = []
    for name in log.read_text().split():
        if not name.startswith(prefix):
            continue
        seen[name] += 1
        if seen[name] <= max_occurrence:
            points.append(f"{name}#{seen[name]}")
    return points


def operator_for(plane: ControlPlane, scenario: Scenario, log_dir: Path, namespace: str) -> OperatorProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    return OperatorProcess(plane.kubeconfig_path, log_dir, ["--config", str(scenario.config), "-n", namespace])


def discover(plane: ControlPlane, api_client: Any, scenario: Scenario, work: Path, max_occurrence: int) -> Discovery:
    """The scenario once with every step reached logged; its end state checked like a trial's."""
    log = work / "points.log"
    namespace = create_namespace(api_client, prefix="kill")
    operator = operator_for(plane, scenario, work / "discovery", namespace)
    operator.start(env={"LLAMA_OPERATOR_KILL_POINTS_LOG": str(log)})
    try:
        run = drive(api_client, namespace, operator, scenario)
        scenario.check_result(api_client, namespace)
    finally:
        operator.stop()
    remove(api_client, namespace, scenario.object_name)
    return Discovery(points_reached(log, max_occurrence, scenario.point_prefix), run.seconds)


def trial(plane: ControlPlane, api_client: Any, scenario: Scenario, log_dir: Path, point: str) -> TrialOutcome:
    """An operator killed at `point` in a namespace of its own, a clean one started, the end state checked."""
    namespace = create_namespace(api_client, prefix="kill")
    operator = operator_for(plane, scenario, log_dir, namespace)
    start_to_be_killed(operator, point)
    try:
        run = drive(api_client, namespace, operator, scenario)
        assert run.killed_at_step is not None or died(operator), f"{point} was never reached"
        if died(operator):  # killed after the last step converged: start again and look once more
            operator.start()
            poll_until(lambda: scenario.steps[-1].converged(api_client, namespace), scenario.step_timeout_seconds,
                       f"convergence after {point}")  # fmt: skip
        scenario.check_result(api_client, namespace)
    finally:
        operator.stop()
    remove(api_client, namespace, scenario.object_name)
    return TrialOutcome(point, run.killed_at_step or scenario.steps[-1].what)


def run_trials(
    plane: ControlPlane, api_client: Any, scenario: Scenario, work: Path, points: Sequence[str]
) -> list[TrialOutcome]:
    """A trial per point, `trials_at_once` at a time; the first failure is raised once all have ended."""
    with ThreadPoolExecutor(scenario.trials_at_once) as pool:
        futures = [
            pool.submit(trial, plane, api_client, scenario, work / f"trial-{i}", point)
            for i, point in enumerate(points)
        ]
        return [future.result() for future in futures]


def survive_every_point(
    plane: ControlPlane, api_client: Any, scenario: Scenario, work: Path, *, max_occurrence: int, min_points: int,
    must_reach: Sequence[str] = (), evidence: Callable[[str], None], ledger: Recorder,
) -> None:  # fmt: skip
    """Discovery, then a trial per point reached; each point survived goes into the ledger."""
    discovery = discover(plane, api_client, scenario, work, max_occurrence)
    evidence(f"{scenario.name}: {len(discovery.points)} kill points reached ({len(discovery.names)} names) in "
             f"{discovery.seconds:.1f} s: {discovery.names}")  # fmt: skip
    for name in must_reach:
        assert name in discovery.names, f"{name} was never reached"
    assert len(discovery.points) >= min_points, f"only {len(discovery.points)} kill points: {discovery.points}"
    started = time.monotonic()
    outcomes = run_trials(plane, api_client, scenario, work, discovery.points)
    for outcome in outcomes:
        ledger.kill_point(f"{scenario.name}: {outcome.point}", f"SIGKILL during '{outcome.killed_in}'; {scenario.held}")
    evidence(f"{scenario.name}: kill points survived: {len(outcomes)} in {time.monotonic() - started:.0f} s")


def converging_step(what: str, act: Callable[[Any, str], None], converged: Callable[..., bool | None],
                    **target: Any) -> Step:  # fmt: skip
    """A step whose end state is `converged(api_client, namespace, **target)`."""
    return Step(what, act, functools.partial(converged, **target))
