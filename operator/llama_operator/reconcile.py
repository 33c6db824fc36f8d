"""The reconcile service: parse -> size -> compare with the cached children -> apply what differs -> status.

A pass reads only from caches fed by watches (`ObjectView`, the node inventory); its API calls are the
writes it needs. With nothing changed it makes none.

A child the apiserver does not take is reported in status and tried again after a back-off
(`child_failures`); a refused body is not sent again before then, a changed spec is applied at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from llama_operator.adapters.checks import CheckRunner
from llama_operator.adapters.drive import RolloutIO, RolloutResult, drive_rollout, state_from_status, status_from_state
from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import KIND, LlamaDeploymentSpec
from llama_operator.api.status import LlamaDeploymentStatus, ModelCacheStatus
from llama_operator.api.timestamps import rfc3339
from llama_operator.autoscale.keda import KEDA_API, KEDA_CRD, TRIGGER_AUTH_CRD, keda_query, keda_target, keda_wanted
from llama_operator.cache_names import cache_of, job_name
from llama_operator.child_failures import ApplyFailure, ChildFailures, ChildKey, body_digest
from llama_operator.child_names import child_name_problem
from llama_operator.engines.base import served_model_name
from llama_operator.engines.devices import CLAIM_TEMPLATE_KIND, CLAIM_TEMPLATES, DRA_API
from llama_operator.engines.pod import DOWNLOAD_CONTAINER
from llama_operator.keda_status import KedaReading, read_scaled_object
from llama_operator.kill_points import kill_point
from llama_operator.kube import LWS_CRD, SERVICE_MONITOR_CRD, ConflictError, Kube, KubeError
from llama_operator.metrics import CHILD_APPLIES, SIZING_DECISIONS, record_phase
from llama_operator.model_cache import (
    CLAIM_API,
    JOB_API,
    CacheObjects,
    CacheReading,
    expected_bytes,
    finished_pod,
    read_cache,
    render_claim,
    render_job,
    running_pod,
    user_reference,
    users,
)
from llama_operator.observed import ChildRecord, ObjectView, child_record, first_difference, freshest, needs_apply
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.promql import PrometheusUrlRefusedError, choose_prometheus_url
from llama_operator.render import INFERENCE_POOL_API, INFERENCE_POOL_CRD, LWS_API, Owner, RenderOptions, render
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import Inventory
from llama_operator.status_report import FIX_THE_SPEC, Observation, PoolReading, invalid_spec_status, report

Manifest = dict[str, Any]


@dataclass
class AppliedChildren:
    """What our own applies returned, until the watch catches up: a pass right after an apply compares
    with the applied object, not the older cached one, and so does not apply it again."""

    _records: dict[ChildKey, ChildRecord] = field(default_factory=dict)

    def remember(self, namespace: str, body: Mapping[str, Any]) -> None:
        record = child_record(body)
        self._records[(record.api_version, record.kind, namespace, record.name)] = record

    def fresher(
        self, namespace: str, cached: ChildRecord | None, api_version: str, kind: str, name: str
    ) -> ChildRecord | None:
        key = (api_version, kind, namespace, name)
        mine = self._records.get(key)
        if mine is not None and cached is not None and cached.resource_version >= mine.resource_version:
            del self._records[key]  # the watch has it now
            return cached
        return freshest(cached, mine)

    def revisions(self, namespace: str, name: str) -> tuple[tuple[str, int], ...]:
        return tuple(sorted((k[1], r.resource_version) for k, r in self._records.items() if k[2:] == (namespace, name)))

    def drop(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """A child we deleted: no memory of it may stand in for the watch."""
        self._records.pop((api_version, kind, namespace, name), None)

    def forget(self, namespace: str, name: str) -> None:
        for key in [k for k in self._records if k[2] == namespace and k[3] == name]:
            del self._records[key]


@dataclass(frozen=True)
class OperatorContext:
    kube: Kube
    config: OperatorConfig
    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)  # smoke requests and Prometheus
    checks: CheckRunner = field(default_factory=CheckRunner)
    applied: AppliedChildren = field(default_factory=AppliedChildren)
    failures: ChildFailures = field(default_factory=ChildFailures)
    clock: Callable[[], float] = time.monotonic  # for back-offs
    # CRDs of optional child kinds the operator watches: only those are rendered (an unwatched kind would
    # look missing to every pass and be applied again and again).
    watched_crds: frozenset[str] = frozenset(
        {SERVICE_MONITOR_CRD, LWS_CRD, INFERENCE_POOL_CRD, CLAIM_TEMPLATES, KEDA_CRD, TRIGGER_AUTH_CRD}
    )


@dataclass(frozen=True)
class ObjectRef:
    name: str
    namespace: str
    uid: str
    generation: int


@dataclass(frozen=True)
class Outcome:
    status: LlamaDeploymentStatus
    decision: SizingDecision | None
    applied: tuple[str, ...] = ()
    invalid: str | None = None
    rollbacks: tuple[str, ...] = ()  # why adapter sets were rolled back in this pass
    smoke_results: tuple[str, ...] = ()
    failures: tuple[ApplyFailure, ...] = ()  # children not applied, this pass or held back from an earlier one
    failed_now: tuple[str, ...] = ()  # applies that failed in this pass, for the log (one line each)

    @property
    def apply_error(self) -> str | None:
        """What status says about children not applied; the pass is retried after `retry_in`."""
        return "; ".join(f.message for f in self.failures) or None

    @property
    def rejected(self) -> bool:
        return any(f.rejected for f in self.failures)

    def retry_in(self, now: float) -> float | None:
        """Seconds until a child not applied may be tried again; None when all were applied."""
        return min((f.retry_in(now) for f in self.failures), default=None)


def utc_now() -> str:
    return rfc3339(time.time())


@functools.lru_cache(maxsize=4096)
def _cached_plan(spec_json: str, name: str, inventory: Inventory) -> SizingDecision:
    """Sizing is pure: the same spec on the same inventory gives the same decision (passes repeat it often)."""
    return plan(LlamaDeploymentSpec.model_validate_json(spec_json), name, inventory)


def decide(spec: LlamaDeploymentSpec, name: str, inventory: Inventory) -> SizingDecision:
    return _cached_plan(spec.model_dump_json(by_alias=True), name, inventory)


def has_adapters(spec: LlamaDeploymentSpec, status: LlamaDeploymentStatus) -> bool:
    """Adapter rollouts need the rollout machine on pod events too."""
    return bool(spec.adapters or status.adapter_rollout)


def _workload_kind(decision: SizingDecision | None) -> tuple[str, str]:
    if decision and decision.chosen and decision.chosen.shape.nodes > 1:
        return (LWS_API, "LeaderWorkerSet")
    return ("apps/v1", "Deployment")


async def _rollout(
    ctx: OperatorContext, ref: ObjectRef, spec: LlamaDeploymentSpec, decision: SizingDecision, *,
    status: LlamaDeploymentStatus, view: ObjectView,
) -> RolloutResult:  # fmt: skip
    return await drive_rollout(
        RolloutIO(ctx.kube, ctx.http, ctx.checks),
        namespace=ref.namespace,
        spec=spec,
        engine=decision.request.engine,
        served_name=served_model_name(spec, ref.name),
        state=state_from_status(status),
        pods=view.pods,
        prometheus_url=ctx.config.prometheus_url,
        prometheus_allowed_urls=ctx.config.prometheus_allowed_urls,
        now=time.time(),
    )


@dataclass
class ApplyResult:
    applied: list[str] = field(default_factory=list)
    failures: list[ApplyFailure] = field(default_factory=list)
    failed_now: list[str] = field(default_factory=list)


async def _apply_differences(
    ctx: OperatorContext, ref: ObjectRef, children: list[Manifest], view: ObjectView
) -> ApplyResult:
    """Apply the children whose cached copy lacks a desired field; the others are left alone. A child the
    apiserver refused as invalid does not stop the others; a failure of the call itself does (the next would
    fail the same way)."""
    result = ApplyResult()
    keys = {(c["apiVersion"], c["kind"], ref.namespace, c["metadata"]["name"]) for c in children}
    ctx.failures.keep_only(ref.namespace, ref.name, keys)
    for child in children:
        meta = child["metadata"]
        key = (child["apiVersion"], child["kind"], ref.namespace, meta["name"])
        cached = view.child_named(key[0], key[1], meta["name"])
        observed = ctx.applied.fresher(ref.namespace, cached, key[0], key[1], meta["name"])
        if not needs_apply(child, observed):
            ctx.failures.clear(key)
            continue
        digest = body_digest(child)
        held = ctx.failures.held(key, digest, ctx.clock())
        if held is not None:  # the apiserver refused exactly this body: not again before the back-off is over
            result.failures.append(held)
            continue
        what = f"{child['kind']}/{meta['name']}"
        if observed is not None:
            what += f" ({first_difference(observed.body, child)})"
        try:
            kill_point(f"reconcile.apply:{child['kind']}:before")
            applied = await asyncio.to_thread(ctx.kube.apply, child)
            kill_point(f"reconcile.apply:{child['kind']}:after")
        except KubeError as error:
            failure = ctx.failures.record(key, digest, error, ctx.clock())
            result.failures.append(failure)
            result.failed_now.append(f"{failure.message} [attempt {failure.attempts}; next in "
                                     f"{failure.retry_in(ctx.clock()):.0f} s]")  # fmt: skip
            if failure.rejected:
                continue
            break
        ctx.failures.clear(key)
        ctx.applied.remember(ref.namespace, applied)
        CHILD_APPLIES.labels(child["kind"]).inc()
        result.applied.append(what)
    return result


@dataclass
class CacheStep:
    reading: CacheReading | None = None
    applied: list[str] = field(default_factory=list)
    failures: list[ApplyFailure] = field(default_factory=list)
    failed_now: list[str] = field(default_factory=list)


CACHE_LOG_LINES = 5
logger = logging.getLogger(__name__)


async def _cache_write(
    ctx: OperatorContext, step: CacheStep, key: ChildKey, *, what: str, point: str, write: Callable[[], object]
) -> bool:
    """One write to a cache object; a 409 (it exists, or changed since we read it) waits for the watch."""
    try:
        kill_point(f"cache.{point}:before")
        await asyncio.to_thread(write)
        kill_point(f"cache.{point}:after")
    except ConflictError:
        return False
    except KubeError as error:
        failure = ctx.failures.record(key, point, error, ctx.clock())
        step.failures.append(failure)
        step.failed_now.append(f"{failure.message} [attempt {failure.attempts}; next in "
                               f"{failure.retry_in(ctx.clock()):.0f} s]")  # fmt: skip
        return False
    ctx.failures.clear(key)
    step.applied.append(what)
    return True


async def _read_log(ctx: OperatorContext, namespace: str, pod: str | None) -> str | None:
    if pod is None:
        return None
    try:
        return await asyncio.to_thread(ctx.kube.pod_log, namespace, pod, DOWNLOAD_CONTAINER, tail_lines=CACHE_LOG_LINES)
    except KubeError as error:
        logger.debug("log of download pod %s/%s not read: %s", namespace, pod, error)
        return None  # progress is shown again at the next look; the Job's own state still counts


async def _model_cache(
    ctx: OperatorContext, ref: ObjectRef, spec: LlamaDeploymentSpec, decision: SizingDecision, *,
    options: RenderOptions, view: ObjectView, previous: ModelCacheStatus | None,
) -> CacheStep:  # fmt: skip
    """Create the cache's claim (or join it as a user), then its Job; read how far the download got."""
    step = CacheStep()
    name = cache_of(spec)
    if name is None:
        return step
    objects = view.cache if view.cache is not None and view.cache.name == name else CacheObjects(name)
    claim = objects.claim
    claim_key: ChildKey = (*CLAIM_API, ref.namespace, name)
    if claim is None:
        body = render_claim(ref.namespace, spec, decision, user_name=ref.name, user_uid=ref.uid)
        await _cache_write(
            ctx,
            step,
            claim_key,
            what=f"PersistentVolumeClaim/{name} (model cache)",
            point="claim:create",
            write=functools.partial(ctx.kube.create, body),
        )
    elif not (claim.get("metadata") or {}).get("deletionTimestamp"):
        meta = claim.get("metadata") or {}
        if ref.uid not in {r.get("uid") for r in users(claim)}:
            refs = [*(meta.get("ownerReferences") or []), user_reference(ref.name, ref.uid)]
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "ownerReferences": refs}}
            await _cache_write(
                ctx,
                step,
                claim_key,
                what=f"PersistentVolumeClaim/{name} (joined as a user)",
                point="claim:join",
                write=functools.partial(ctx.kube.merge_patch, *CLAIM_API, ref.namespace, name, patch),
            )
        if objects.job is None and meta.get("uid"):
            job = render_job(ref.name, ref.namespace, spec, decision, options=options, claim_uid=str(meta["uid"]))
            await _cache_write(
                ctx,
                step,
                (*JOB_API, ref.namespace, job_name(name)),
                what=f"Job/{job_name(name)}",
                point="job:create",
                write=functools.partial(ctx.kube.create, job),
            )
    kept = previous if previous is not None and previous.claim_name == name else None
    log = await _read_log(ctx, ref.namespace, running_pod(objects))
    if log is None and objects.job is not None and (kept is None or kept.phase != "Ready" or not kept.bytes_done):
        log = await _read_log(ctx, ref.namespace, finished_pod(objects))  # the whole download's bytes, once
    step.reading = read_cache(objects, source=spec.model.source, expected=expected_bytes(decision), log_tail=log,
                              previous=kept)  # fmt: skip
    return step


def _mounts(workload: ChildRecord | None, claim: str, field: str = "claimName") -> bool:
    """Whether the workload's pods may still use `claim` (a PersistentVolumeClaim, or with `field`
    resourceClaimTemplateName a ResourceClaimTemplate): its template names it, or a rollout away from it has
    not finished (old pods run)."""
    if workload is None:
        return False
    if f'"{field}":"{claim}"' in workload.body_json:
        return True
    status = workload.status
    rolled = int(status.get("observedGeneration") or 0) >= workload.generation
    return not rolled or int(status.get("updatedReplicas") or 0) < int(status.get("replicas") or 0)


async def _release_caches(
    ctx: OperatorContext, ref: ObjectRef, spec: LlamaDeploymentSpec, *, view: ObjectView,
    workload: ChildRecord | None, step: CacheStep,
) -> None:  # fmt: skip
    """Leave the caches this object no longer mounts: the last user deletes the claim (and so its Job)."""
    wanted = cache_of(spec)
    for name, claim in sorted(view.owned_caches.items()):
        meta = claim.get("metadata") or {}
        if name == wanted or meta.get("deletionTimestamp") or _mounts(workload, name):
            continue
        others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != ref.uid]
        key: ChildKey = (*CLAIM_API, ref.namespace, name)
        write: Callable[[], object]
        if any(r.get("kind") == KIND for r in others):
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "ownerReferences": others}}
            what, point = f"PersistentVolumeClaim/{name} (left as a user)", "claim:leave"
            write = functools.partial(ctx.kube.merge_patch, *CLAIM_API, ref.namespace, name, patch)
        else:
            what, point = f"PersistentVolumeClaim/{name} (deleted: no user left)", "claim:delete"
            write = functools.partial(ctx.kube.delete, *CLAIM_API, ref.namespace, name, uid=str(meta.get("uid")),
                                      resource_version=str(meta.get("resourceVersion")))  # fmt: skip
        await _cache_write(ctx, step, key, what=what, point=point, write=write)


# Optional children that go when the spec stops asking for them: (apiVersion, kind, kill point, why).
PRUNED_WHEN_OFF = (
    # routing.inferencePool off (or no plan to serve): no gateway routes to pods it no longer should.
    (INFERENCE_POOL_API, "InferencePool", "reconcile.inference_pool", "routing.inferencePool is off"),
    # autoscaling.mode no longer KEDA: KEDA's HPA must not keep writing replicas.
    (KEDA_API, "ScaledObject", "reconcile.scaled_object", "autoscaling.mode is not KEDA"),
    (KEDA_API, "TriggerAuthentication", "reconcile.trigger_auth", "KEDA needs no Prometheus token"),
)


async def _prune_optional(
    ctx: OperatorContext, ref: ObjectRef, children: Sequence[Manifest], view: ObjectView, applied: ApplyResult
) -> None:
    """Delete the optional children the spec no longer asks for (PRUNED_WHEN_OFF)."""
    for api_version, kind, point, why in PRUNED_WHEN_OFF:
        record = ctx.applied.fresher(ref.namespace, view.child(api_version, kind), api_version, kind,
                                     ref.name)  # fmt: skip
        if record is None or any(c["kind"] == kind for c in children):
            continue
        uid = str((record.body.get("metadata") or {}).get("uid") or "")
        try:
            kill_point(f"{point}:delete:before")
            await asyncio.to_thread(ctx.kube.delete, api_version, kind, ref.namespace, record.name, uid=uid,
                                    resource_version=None)  # fmt: skip
        except KubeError as error:
            applied.failed_now.append(f"{kind}/{record.name} not deleted: {error}")
            continue
        ctx.applied.drop(api_version, kind, ref.namespace, record.name)
        applied.applied.append(f"{kind}/{record.name} (deleted: {why})")


async def _prune_claim_templates(
    ctx: OperatorContext, ref: ObjectRef, children: Sequence[Manifest], *, view: ObjectView,
    workload: ChildRecord | None, applied: ApplyResult,
) -> None:  # fmt: skip
    """ResourceClaimTemplates no pod template names any more, once the pods that claimed from them are gone
    (a rollout to a new claim, or DRA turned off)."""
    wanted = {c["metadata"]["name"] for c in children if c["kind"] == CLAIM_TEMPLATE_KIND}
    for name, record in sorted(view.claim_templates.items()):
        if name in wanted or _mounts(workload, name, "resourceClaimTemplateName"):
            continue
        uid = str((record.body.get("metadata") or {}).get("uid") or "")
        try:
            kill_point("reconcile.claim_template:delete:before")
            await asyncio.to_thread(ctx.kube.delete, DRA_API, CLAIM_TEMPLATE_KIND, ref.namespace, name, uid=uid,
                                    resource_version=None)  # fmt: skip
        except KubeError as error:
            applied.failed_now.append(f"{CLAIM_TEMPLATE_KIND}/{name} not deleted: {error}")
            continue
        ctx.applied.drop(DRA_API, CLAIM_TEMPLATE_KIND, ref.namespace, name)
        applied.applied.append(f"{CLAIM_TEMPLATE_KIND}/{name} (deleted: no pod claims from it)")


def dra_problem(ctx: OperatorContext, spec: LlamaDeploymentSpec, decision: SizingDecision) -> str | None:
    """Why DRA cannot be used here, when the object asks for it (spec or operator default) on a GPU plan."""
    chosen = decision.chosen
    wanted = (spec.placement.device_allocation or ctx.config.device_allocation) == "DRA"
    if not wanted or chosen is None or chosen.gpu_class is None or CLAIM_TEMPLATES in ctx.watched_crds:
        return None
    return (
        "placement.deviceAllocation is DRA, but the operator does not watch resourceclaimtemplates.resource.k8s.io: "
        "DRA needs Kubernetes 1.34 or later (resource.k8s.io/v1) with the NVIDIA DRA driver, and the chart's "
        "dra.enabled: true for the operator's RBAC (then restart the operator); or set "
        "placement.deviceAllocation: DevicePlugin"
    )


def keda_prometheus_url(ctx: OperatorContext, spec: LlamaDeploymentSpec) -> str | None:
    """The Prometheus KEDA is to query for autoscaling.mode: KEDA (None when not KEDA); the same choice and
    allow-list as the built-in autoscaler's, refused as an invalid spec before anything is rendered."""
    if not keda_wanted(spec):
        return None
    config = ctx.config
    try:
        url = choose_prometheus_url(spec.autoscaling.prometheus_url, config.prometheus_url,
                                    config.prometheus_allowed_urls)  # fmt: skip
    except PrometheusUrlRefusedError as refused:
        raise InvalidSpecError(str(refused)) from refused
    if url is None:
        raise InvalidSpecError(
            "autoscaling.mode: KEDA needs a Prometheus for the ScaledObject: set spec.autoscaling.prometheusUrl "
            "or the operator's prometheusUrl"
        )
    return url


def keda_reading(
    spec: LlamaDeploymentSpec, view: ObjectView, decision: SizingDecision, namespace: str, name: str
) -> KedaReading | None:
    if not keda_wanted(spec):
        return None
    if KEDA_CRD not in view.crds:
        return KedaReading(api_installed=False, name=name)
    engine = decision.request.engine
    record = view.child(KEDA_API, "ScaledObject")
    return read_scaled_object(name, record.status if record is not None else None,
                              query=keda_query(spec, engine, namespace, name), target=keda_target(spec, engine))  # fmt: skip


def pool_reading(spec: LlamaDeploymentSpec, view: ObjectView, children: Sequence[Manifest]) -> PoolReading | None:
    """What became of routing.inferencePool: its port and selector as rendered, or that the API is missing."""
    if not spec.routing.inference_pool.enabled:
        return None
    if INFERENCE_POOL_CRD not in view.crds:
        return PoolReading(api_installed=False)
    for child in children:
        if child["kind"] == "InferencePool":
            labels = child["spec"]["selector"]["matchLabels"]
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            return PoolReading(True, int(child["spec"]["targetPorts"][0]["number"]), selector)
    return None  # not rendered: the sizing found no plan, which the other conditions say


async def reconcile(
    ctx: OperatorContext,
    ref: ObjectRef,
    spec_body: Mapping[str, Any],
    status: LlamaDeploymentStatus,
    *,
    view: ObjectView,
    inventory: Inventory,
) -> Outcome:
    """One level-triggered pass over one LlamaDeployment."""
    now = utc_now()
    next_step = FIX_THE_SPEC
    try:
        spec = parse_spec(spec_body)
        name_problem = child_name_problem(ref.name)
        if name_problem is not None:
            next_step = ""  # the message says what to do: the name cannot be changed
            raise InvalidSpecError(name_problem)
        decision = decide(spec, ref.name, inventory)
        device_problem = dra_problem(ctx, spec, decision)
        next_step = ""  # from here on each message says what to install or change
        if device_problem is not None:
            raise InvalidSpecError(device_problem)
        prometheus_url = keda_prometheus_url(ctx, spec)
    except InvalidSpecError as error:
        invalid = invalid_spec_status(str(error), generation=ref.generation, previous=status.conditions, now=now,
                                      next_step=next_step)  # fmt: skip
        record_phase(ref.namespace, ref.name, invalid.phase)
        return Outcome(status=invalid, decision=None, invalid=str(error))
    SIZING_DECISIONS.labels(decision.request.engine, str(decision.fits).lower()).inc()
    rollout = None
    if decision.fits and has_adapters(spec, status):
        kill_point("reconcile.rollout:before")
        rollout = await _rollout(ctx, ref, spec, decision, status=status, view=view)
        kill_point(f"reconcile.rollout:{rollout.state.phase}:{rollout.state.step}")
    applied = ApplyResult()
    cache = CacheStep()
    kind = _workload_kind(decision)
    children: list[Manifest] = []
    if decision.fits:
        options = RenderOptions(
            images=ctx.config.engine_images(),
            service_monitor=SERVICE_MONITOR_CRD in view.crds,
            hub_endpoint=ctx.config.hub_endpoint,
            inference_pool_api=INFERENCE_POOL_CRD in view.crds,
            device_allocation=ctx.config.device_allocation,
            keda_api=KEDA_CRD in view.crds,
            prometheus_url=prometheus_url,
        )
        cache = await _model_cache(ctx, ref, spec, decision, options=options, view=view, previous=status.model_cache)
        children = render(
            ref.name, ref.namespace, spec, decision, options=options, owner=Owner(ref.name, ref.uid),
            adapters=rollout.state.serving if rollout else None,
        )  # fmt: skip
        if cache.reading is not None and not cache.reading.ready:  # no pod waits on a download: not applied yet
            children = [c for c in children if (c["apiVersion"], c["kind"]) != kind]
        applied = await _apply_differences(ctx, ref, children, view)
    await _prune_optional(ctx, ref, children, view, applied)
    workload = ctx.applied.fresher(ref.namespace, view.child(*kind), *kind, ref.name)
    await _release_caches(ctx, ref, spec, view=view, workload=workload, step=cache)
    await _prune_claim_templates(ctx, ref, children, view=view, workload=workload, applied=applied)
    applied.applied += cache.applied
    applied.failures += cache.failures
    applied.failed_now += cache.failed_now
    observation = Observation(workload=workload.as_workload() if workload else None, pods=view.pods)
    rollout_status = (
        status_from_state(rollout.state).model_copy(update={"checks": list(rollout.checks)})
        if rollout
        else status.adapter_rollout
    )
    apply_error = "; ".join(f.message for f in applied.failures) or None
    new_status = report(
        ref.name, ref.namespace, spec, decision, observation, generation=ref.generation, previous=status.conditions,
        now=now, rollout=rollout_status, apply_error=apply_error, apply_rejected=any(f.rejected for f in applied.failures),
        autoscaling=status.autoscaling, cache=cache.reading, inference_pool=pool_reading(spec, view, children),
        keda=keda_reading(spec, view, decision, ref.namespace, ref.name),
    )  # fmt: skip
    record_phase(ref.namespace, ref.name, new_status.phase)
    return Outcome(
        status=new_status,
        decision=decision,
        applied=tuple(applied.applied),
        rollbacks=tuple(n.reason for n in rollout.rollbacks) if rollout else (),
        smoke_results=rollout.smoke_results if rollout else (),
        failures=tuple(applied.failures),
        failed_now=tuple(applied.failed_now),
    )


def status_patch(outcome: Outcome) -> Manifest:
    # status.autoscaling belongs to the autoscaler; leave it out so a merge patch never erases it.
    patch: Manifest = outcome.status.model_dump(by_alias=True, mode="json", exclude={"autoscaling"})
    return patch


def changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Write status only when it differs from what the object carries."""
    return any(current.get(key) != value for key, value in new.items())


def decision_summary(outcome: Outcome) -> str | None:
    """A one-line statement of the sizing decision, for Events."""
    if outcome.decision is None:
        return None
    status = outcome.status
    return f"{status.engine} on {status.gpus}: {outcome.decision.reason}"
