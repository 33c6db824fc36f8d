"""Pure: what the user reads in `status` — from the spec, the sizing decision and the observed children."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_operator.api import status as st
from llama_operator.api.conditions import (
    REASON_CHILD_REJECTED,
    REASON_PODS_REJECTED,
    make_condition,
    merge_conditions,
)
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import AdapterRolloutStatus, AutoscalingStatus, Condition, LlamaDeploymentStatus, Phase
from llama_operator.keda_status import KedaReading, keda_condition
from llama_operator.lws_status import read_leader_worker_set, with_lws_conditions
from llama_operator.model_cache import CacheReading
from llama_operator.planning import placement_summary, sizing_status
from llama_operator.render import INFERENCE_POOL_CRD, LABEL_DEPLOYMENT, service_endpoint
from llama_operator.sizing.fit import SizingDecision

Manifest = dict[str, Any]
WAITING_PROBLEMS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                    "InvalidImageName", "RunContainerError")  # fmt: skip
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Observation:
    """The children as the API returned them."""

    workload: Manifest | None = None
    pods: Sequence[Manifest] = field(default_factory=list)


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _container_problem(pod_name: str, status: Manifest) -> PodProblem | None:
    waiting = (status.get("state") or {}).get("waiting") or {}
    if waiting.get("reason") not in WAITING_PROBLEMS:
        return None
    last = (status.get("lastState") or {}).get("terminated") or {}
    detail = last.get("message") or waiting.get("message") or ""
    exit_code = f" (exit code {last['exitCode']})" if "exitCode" in last else ""
    return PodProblem(
        st.REASON_CRASHING,
        _clip(f"pod {pod_name} container {status.get('name')}: {waiting['reason']}{exit_code}: {detail}".rstrip(": ")),
    )


def container_problem(pod: Manifest) -> PodProblem | None:
    """A failing container of one pod (crash loop, image pull), from its status."""
    name = str(pod.get("metadata", {}).get("name", ""))
    status = pod.get("status") or {}
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        problem = _container_problem(name, container)
        if problem:
            return problem
    return None


def pod_problem(pods: Iterable[Manifest]) -> PodProblem | None:
    """The first thing keeping pods from serving: the scheduler's refusal or a failing container."""
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name", ""))):
        name = str(pod.get("metadata", {}).get("name", ""))
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return PodProblem(
                    st.REASON_UNSCHEDULABLE,
                    _clip(f"pod {name} cannot be scheduled: {condition.get('message', condition.get('reason', ''))}"),
                )
        problem = container_problem(pod)
        if problem:
            return problem
    return None


def replica_failure(workload: Manifest | None) -> PodProblem | None:
    """Pods the workload cannot create (a quota, a LimitRange, an admission policy refused them): the
    Deployment carries its ReplicaSet's `ReplicaFailure` condition with the refusal's own message."""
    for condition in ((workload or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            name = ((workload or {}).get("metadata") or {}).get("name", "")
            detail = condition.get("message") or condition.get("reason") or "no message"
            return PodProblem(
                REASON_PODS_REJECTED,
                _clip(f"Deployment {name} cannot create pods: {detail}; lift the quota, limit or admission policy "
                      "that refuses them, or change the spec to fit it"),
            )  # fmt: skip
    return None


def _fits_condition(decision: SizingDecision, generation: int, now: str) -> Condition:
    if decision.fits:
        return make_condition(st.FITS, "True", st.REASON_FITS, decision.reason, generation=generation, now=now)
    hint = "; would fit with: " + "; ".join(decision.alternatives) if decision.alternatives else ""
    message = _clip(decision.reason + hint + ("" if hint else "; add nodes of a larger GPU class"))
    return make_condition(st.FITS, "False", st.REASON_DOES_NOT_FIT, message, generation=generation, now=now)


def _workload_numbers(workload: Manifest | None) -> tuple[int, int, int, int]:
    """(replicas, ready, updated, observedGeneration) of a Deployment or LeaderWorkerSet."""
    status = (workload or {}).get("status") or {}
    return (
        int(status.get("replicas", 0)),
        int(status.get("readyReplicas", 0)),
        int(status.get("updatedReplicas", 0)),
        int(status.get("observedGeneration", 0)),
    )


def _phase(problem: PodProblem | None, *, ready: int, desired: int, rolling: bool) -> Phase:
    if problem:
        return "Degraded"
    if desired == 0 or (ready >= desired and not rolling):
        return "Ready"
    return "Progressing"


ConditionFields = tuple[str, st.ConditionStatus, str, str]  # type, status, reason, message


def _without_workload(decision: SizingDecision, problem: PodProblem | None, *, rejected: bool) -> tuple[
    Phase, list[ConditionFields]
]:  # fmt: skip
    """No serving workload yet: not planned, not applied (a refused or failed apply), or being created."""
    if problem is not None:
        return ("Failed" if rejected else "Degraded"), [
            (st.READY, "False", problem.reason, _clip(f"no serving workload: {problem.message}")),
            (st.PROGRESSING, "False", problem.reason, "nothing rolls out until the child is applied"),
            (st.DEGRADED, "True", problem.reason, problem.message),
        ]
    why = "no serving workload: " + (decision.reason if not decision.fits else "creating it")
    return ("Failed" if not decision.fits else "Pending"), [
        (st.READY, "False", st.REASON_DOES_NOT_FIT if not decision.fits else st.REASON_UNAVAILABLE, _clip(why)),
        (st.PROGRESSING, "False" if not decision.fits else "True", st.REASON_ROLLING_OUT, ""),
        (st.DEGRADED, "False", st.REASON_HEALTHY, ""),
    ]


def _with_workload(problem: PodProblem | None, *, ready: int, updated: int, desired: int, rolling: bool) -> tuple[
    Phase, list[ConditionFields]
]:  # fmt: skip
    fields: list[ConditionFields] = []
    if desired == 0:
        fields.append((st.READY, "True", st.REASON_SCALED_TO_ZERO, "spec.replicas is 0; scale up to serve"))
    elif ready >= desired and not rolling and problem is None:
        fields.append((st.READY, "True", st.REASON_AVAILABLE, f"{ready}/{desired} replicas ready"))
    else:
        reason = problem.reason if problem else st.REASON_UNAVAILABLE
        detail = problem.message if problem else "waiting for the model to load and /health to answer"
        fields.append((st.READY, "False", reason, _clip(f"{ready}/{desired} replicas ready; {detail}")))
    if rolling:
        fields.append((st.PROGRESSING, "True", st.REASON_ROLLING_OUT, f"{updated}/{desired} replicas updated"))
    else:
        fields.append((st.PROGRESSING, "False", st.REASON_ROLLED_OUT, "all replicas run the current spec"))
    if problem:
        fields.append((st.DEGRADED, "True", problem.reason, problem.message))
    else:
        fields.append((st.DEGRADED, "False", st.REASON_HEALTHY, ""))
    return _phase(problem, ready=ready, desired=desired, rolling=rolling), fields


def report(
    name: str,
    namespace: str,
    spec: LlamaDeploymentSpec,
    decision: SizingDecision,
    observation: Observation,
    *,
    generation: int,
    previous: Sequence[Condition],
    now: str,
    rollout: AdapterRolloutStatus | None = None,
    apply_error: str | None = None,
    apply_rejected: bool = False,
    autoscaling: AutoscalingStatus | None = None,
    cache: CacheReading | None = None,
    inference_pool: PoolReading | None = None,
    keda: KedaReading | None = None,
) -> LlamaDeploymentStatus:
    """`apply_error`: a child was not applied; `apply_rejected`: the apiserver refused it as invalid, so the
    same spec will not get further (phase Failed while nothing serves, Degraded while an older workload does).
    `cache`: the shared model cache, whose download the workload waits for. `inference_pool`: what became of
    `routing.inferencePool` (None: not enabled)."""
    desired = spec.replicas
    replicas, ready, updated, workload_generation = _workload_numbers(observation.workload)
    workload_meta_generation = int(((observation.workload or {}).get("metadata") or {}).get("generation", 0))
    rolled = observation.workload is not None and workload_generation >= workload_meta_generation
    rolling = observation.workload is not None and (not rolled or updated < desired or replicas > desired)
    problem = None
    if observation.workload is not None:
        problem = replica_failure(observation.workload) or pod_problem(observation.pods)
    if apply_error is not None:  # a refused child outranks what the pods say
        problem = PodProblem(REASON_CHILD_REJECTED if apply_rejected else st.REASON_APPLY_FAILED, _clip(apply_error))
    waiting = cache is not None and not cache.ready
    if cache is not None and cache.failed and problem is None:
        problem = PodProblem(cache.reason, cache.status.message)
        apply_rejected = apply_rejected or observation.workload is None  # the same spec gets no further
    phase: Phase
    if observation.workload is None and waiting and problem is None and cache is not None:
        phase, fields = "Pending", _waiting_for_cache(cache)
    elif observation.workload is None:
        phase, fields = _without_workload(decision, problem, rejected=apply_rejected)
    else:
        phase, fields = _with_workload(problem, ready=ready, updated=updated, desired=desired, rolling=rolling)
        if decision.chosen is not None and decision.chosen.shape.nodes > 1:  # a LeaderWorkerSet: its own conditions
            lws = read_leader_worker_set(observation.workload)
            phase, fields = with_lws_conditions(lws, phase, fields, ready=ready, updated=updated, desired=desired)
            fields = [(t, s, r, _clip(m)) for t, s, r, m in fields]
        if waiting and cache is not None:
            message = f"pods roll once the model cache is complete: {cache.status.message}"
            fields = [f if f[0] != st.PROGRESSING else (st.PROGRESSING, "True", cache.reason, _clip(message))
                      for f in fields]  # fmt: skip
    conditions = [_fits_condition(decision, generation, now)]
    if cache is not None:
        conditions.append(_cache_condition(cache, generation, now))
    conditions += [make_condition(*f, generation=generation, now=now) for f in fields]
    if rollout is not None:
        conditions.append(_rollout_condition(rollout, generation, now))
    scaling = _scaling_condition(spec, autoscaling, keda, generation=generation, now=now)
    if scaling is not None:
        conditions.append(scaling)
    if inference_pool is not None:
        conditions.append(_pool_condition(name, inference_pool, generation, now))
    kept = [c for c in previous if (c.type != st.SCALING_ACTIVE or scaling is not None)
            and (c.type != st.INFERENCE_POOL or inference_pool is not None)]  # fmt: skip
    serving = rollout.serving if rollout is not None else spec.adapters
    return LlamaDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        conditions=merge_conditions(kept, conditions),
        sizing=sizing_status(decision),
        engine=decision.request.engine,
        gpus=placement_summary(decision),
        replicas=replicas,
        ready_replicas=ready,
        ready=f"{ready}/{desired}",
        selector=f"{LABEL_DEPLOYMENT}={name}",
        endpoint=service_endpoint(name, namespace) if observation.workload is not None else None,
        adapters=",".join(sorted(f"{a.name}@{a.version}" for a in serving)) or None,
        adapter_rollout=rollout,
        model_cache=cache.status if cache is not None else None,
    )


def _waiting_for_cache(cache: CacheReading) -> list[ConditionFields]:
    """No workload yet, and none until the model cache is complete: the pods would wait on it."""
    message = cache.status.message
    return [
        (st.READY, "False", cache.reason, _clip(f"no serving workload: waiting for the model cache: {message}")),
        (st.PROGRESSING, "True", cache.reason, _clip(message)),
        (st.DEGRADED, "False", st.REASON_HEALTHY, ""),
    ]


def _cache_condition(cache: CacheReading, generation: int, now: str) -> Condition:
    status: st.ConditionStatus = "True" if cache.ready else "False"
    return make_condition(st.MODEL_CACHED, status, cache.reason, _clip(cache.status.message), generation=generation,
                          now=now)  # fmt: skip


@dataclass(frozen=True)
class PoolReading:
    """routing.inferencePool in this cluster: whether it serves the InferencePool API, and the pool's port."""

    api_installed: bool
    port: int | None = None
    selector: str = ""


def _pool_condition(name: str, pool: PoolReading, generation: int, now: str) -> Condition:
    if not pool.api_installed:
        message = (
            "routing.inferencePool is enabled but the operator sees no InferencePool API "
            f"(inference.networking.k8s.io/v1): install the CRD {INFERENCE_POOL_CRD} from the Gateway API "
            "Inference Extension (v1.0 or later) and let the operator watch inferencepools (chart: --set "
            "inferencePool.enabled=true), or set routing.inferencePool.enabled: false"
        )
        return make_condition(st.INFERENCE_POOL, "False", st.REASON_CRD_NOT_INSTALLED, message, generation=generation,
                              now=now)  # fmt: skip
    message = f"InferencePool/{name} selects the serving pods ({pool.selector}) on port {pool.port}"
    return make_condition(st.INFERENCE_POOL, "True", st.REASON_POOL_RENDERED, message, generation=generation, now=now)


def _scaling_condition(
    spec: LlamaDeploymentSpec, autoscaling: AutoscalingStatus | None, keda: KedaReading | None, *, generation: int,
    now: str,
) -> Condition | None:  # fmt: skip
    """ScalingActive: from KEDA's ScaledObject under autoscaling.mode: KEDA, else from the built-in
    autoscaler's status; none while autoscaling is off."""
    if keda is not None:
        return keda_condition(keda, generation=generation, now=now)
    if spec.autoscaling.enabled and autoscaling is not None:
        return scaling_condition(autoscaling, generation=generation, now=now)
    return None


def scaling_condition(autoscaling: AutoscalingStatus, *, generation: int, now: str) -> Condition:
    """ScalingActive, derived here from the autoscaler's status: the autoscaler never writes conditions."""
    if autoscaling.metrics_available:
        return make_condition(
            st.SCALING_ACTIVE, "True", st.REASON_SCALING_ACTIVE, autoscaling.reason, generation=generation, now=now
        )
    message = _clip(f"{autoscaling.reason}; replicas hold until metrics return")
    return make_condition(
        st.SCALING_ACTIVE, "False", st.REASON_METRICS_UNAVAILABLE, message, generation=generation, now=now
    )


def _rollout_condition(rollout: AdapterRolloutStatus, generation: int, now: str) -> Condition:
    status: st.ConditionStatus
    if rollout.phase == "RolledBack":
        status, reason = "False", st.REASON_ROLLED_BACK
        message = f"{rollout.message}. Publish a fixed adapter version to try again."
    elif rollout.phase == "Progressing":
        status, reason = "Unknown", st.REASON_ADAPTERS_ROLLING
        message = f"{rollout.step}: {rollout.message}"
    else:
        status, reason, message = "True", st.REASON_ADAPTERS_SERVING, rollout.message
    if rollout.checks:
        waiting = ", ".join(f"{c.check} on pod {c.pod} unanswered since {c.since}" for c in rollout.checks)
        message = f"{message}; waiting: {waiting}"
    return make_condition(st.ADAPTER_ROLLOUT, status, reason, _clip(message), generation=generation, now=now)


FIX_THE_SPEC = "Fix the spec and apply it again."


def invalid_spec_status(
    message: str, *, generation: int, previous: Sequence[Condition], now: str, next_step: str = FIX_THE_SPEC
) -> LlamaDeploymentStatus:
    text = _clip(f"{message}. {next_step}".rstrip(". ") + ".")
    conditions = [
        make_condition(st.READY, "False", st.REASON_INVALID_SPEC, text, generation=generation, now=now),
        make_condition(st.DEGRADED, "True", st.REASON_INVALID_SPEC, text, generation=generation, now=now),
    ]
    return LlamaDeploymentStatus(
        observed_generation=generation, phase="Failed", conditions=merge_conditions(previous, conditions)
    )
