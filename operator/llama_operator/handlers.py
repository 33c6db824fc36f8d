"""kopf handlers only: thin, parse -> decide -> apply -> status, all through `reconcile`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import httpx
import kopf

from llama_operator.adapters.rollout import ADAPTERS_ANNOTATION
from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import GROUP, PLURAL, VERSION
from llama_operator.api.status import SCALING_ACTIVE
from llama_operator.autoscale.evaluate import evaluate
from llama_operator.autoscale.evaluate import status_patch as autoscale_status_patch
from llama_operator.kube import Kube, KubeError
from llama_operator.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, forget_deployment
from llama_operator.operator_config import OperatorConfig
from llama_operator.reconcile import (
    ObjectRef,
    OperatorContext,
    Outcome,
    changed,
    decision_summary,
    owner_name,
    reconcile,
    status_patch,
)
from llama_operator.render import LABEL_DEPLOYMENT

DRIFT_INTERVAL_SECONDS = 20.0
DEFAULT_EVALUATION_SECONDS = 15.0
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "llama-operator"}


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.execution.max_workers = 8
    settings.posting.level = logging.INFO  # our decisions (Planned, ScaledUp, ...) are Normal events
    settings.posting.loggers = False  # log lines stay logs; only explicit kopf.info/warn become Events
    settings.execution.default_backoff = 5  # a retry after an API hiccup should not wait a minute
    if "context" not in memo:
        memo["context"] = OperatorContext(kube=Kube.from_environment(), config=OperatorConfig())


def _context(memo: kopf.Memo) -> OperatorContext:
    context: OperatorContext = memo["context"]
    return context


# One lock per LlamaDeployment for the whole process. (Not in kopf's memo: handlers of other objects,
# such as the pod and Deployment events below, get their own shallow copies of it.)
_PASS_LOCKS: dict[str, asyncio.Lock] = {}


def _lock(namespace: str, name: str) -> asyncio.Lock:
    """One pass at a time per LlamaDeployment: the main handler, the timer and child events share it."""
    return _PASS_LOCKS.setdefault(f"{namespace}/{name}", asyncio.Lock())


def _post_events(owner: dict[str, Any], before: dict[str, Any], outcome: Outcome) -> None:
    body = kopf.Body(cast("kopf.RawBody", owner))
    sizing = outcome.status.sizing
    was = (before.get("gpus"), (before.get("sizing") or {}).get("fits"))
    if sizing is not None and was != (outcome.status.gpus, sizing.fits):
        if sizing.fits:
            kopf.info(body, reason="Planned", message=decision_summary(outcome) or sizing.reason)
        else:
            kopf.warn(body, reason="DoesNotFit", message="; ".join([sizing.reason, *sizing.alternatives]))
    for reason in outcome.rollbacks:
        kopf.warn(body, reason="AdapterRolledBack", message=reason)
    if outcome.invalid is not None and before.get("phase") != "Failed":
        kopf.warn(body, reason="InvalidSpec", message=outcome.invalid)


async def _pass(
    ctx: OperatorContext, memo: kopf.Memo, namespace: str, name: str, logger: kopf.Logger, *, apply: bool
) -> Outcome | None:
    """Read the object fresh, reconcile it, write status when it changed, post events on decisions."""
    async with _lock(namespace, name):
        owner = await asyncio.to_thread(ctx.kube.get, f"{GROUP}/{VERSION}", "LlamaDeployment", namespace, name)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return None
        meta = owner["metadata"]
        ref = ObjectRef(name, namespace, meta["uid"], int(meta.get("generation", 0)))
        current = owner.get("status") or {}
        with RECONCILE_SECONDS.time():
            outcome = await reconcile(ctx, ref, owner.get("spec") or {}, current, apply=apply)
        new_status = status_patch(outcome)
        if changed(current, new_status):
            await asyncio.to_thread(ctx.kube.patch_llamadeployment_status, namespace, name, new_status)
    _post_events(owner, current, outcome)
    if outcome.applied:
        logger.info("applied %s", ", ".join(outcome.applied))
    for line in outcome.smoke_results:
        logger.info("smoke request on %s", line)
    return outcome


async def _owner_pass(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger) -> None:
    meta = body.metadata
    try:
        outcome = await _pass(_context(memo), memo, str(meta.namespace), str(meta.name), logger, apply=True)
    except KubeError as error:
        RECONCILE_ERRORS.labels("api").inc()
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=5) from error
    if outcome is not None and outcome.invalid is not None:
        RECONCILE_ERRORS.labels("invalid_spec").inc()
        raise kopf.PermanentError(f"invalid spec: {outcome.invalid}")
    if outcome is not None and outcome.apply_error is not None:
        RECONCILE_ERRORS.labels("apply").inc()
        raise kopf.TemporaryError(outcome.apply_error, delay=10)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile_handler(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await _owner_pass(body, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, id="drift", interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
async def drift(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Re-apply the children (server-side apply undoes hand edits) and refresh status."""
    await _owner_pass(body, memo, logger)


async def _child_pass(name: str, namespace: str, memo: kopf.Memo, logger: kopf.Logger, *, apply: bool) -> None:
    try:
        await _pass(_context(memo), memo, namespace, name, logger, apply=apply)
    except KubeError as error:
        logger.warning("could not refresh %s/%s: %s", namespace, name, error)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_LABELS, id="child-deployment")
async def child_deployment(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A Deployment of ours changed: re-apply (a hand edit is reverted at once) and refresh the owner's status."""
    name, namespace = owner_name(body), body.metadata.namespace
    if name and namespace and not body.metadata.get("deletionTimestamp"):
        await _child_pass(name, namespace, memo, logger, apply=True)


@kopf.on.event("", "v1", "pods", labels=MANAGED_LABELS, id="child-pod")
async def child_pod(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A pod of ours changed (scheduled, crashed, ready): refresh status; with adapters, drive the rollout."""
    name, namespace = body.metadata.labels.get(LABEL_DEPLOYMENT), body.metadata.namespace
    if name and namespace:
        rollout = ADAPTERS_ANNOTATION in body.metadata.annotations
        await _child_pass(name, namespace, memo, logger, apply=rollout)


def _autoscaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autoscaling") or {}).get("enabled"))


async def _autoscale_once(ctx: OperatorContext, http: httpx.AsyncClient, body: kopf.Body, logger: kopf.Logger) -> float:
    """One evaluation; returns the seconds until the next."""
    meta = body.metadata
    name, namespace = str(meta.name), str(meta.namespace)
    try:
        spec = parse_spec(body.spec)
    except InvalidSpecError:
        return DEFAULT_EVALUATION_SECONDS  # the reconcile handler reports the spec
    was_active = next(
        (c.get("status") for c in body.status.get("conditions") or [] if c.get("type") == SCALING_ACTIVE), None
    )
    try:
        evaluation = await evaluate(
            ctx.kube,
            http,
            name=name,
            namespace=namespace,
            spec=spec,
            status=body.status,
            default_prometheus_url=ctx.config.prometheus_url,
            generation=int(meta.get("generation") or 0),
            now=time.time(),
        )
        await asyncio.to_thread(
            ctx.kube.patch_llamadeployment_status, namespace, name, autoscale_status_patch(evaluation)
        )
    except KubeError as error:
        logger.warning("autoscaling %s/%s: %s", namespace, name, error)
        return float(spec.autoscaling.evaluation_interval_seconds)
    decision = evaluation.decision
    if evaluation.scaled:
        logger.info("scaled %s: %s (metric=%s)", name, decision.reason, decision.metric)
        kopf.info(body, reason="ScaledUp" if decision.action == "up" else "ScaledDown", message=decision.reason)
    if not decision.metrics_available and was_active != "False":
        kopf.warn(body, reason="MetricsUnavailable", message=evaluation.status.reason)
    return float(spec.autoscaling.evaluation_interval_seconds)


@kopf.daemon(GROUP, VERSION, PLURAL, id="autoscaler", when=_autoscaling_enabled, cancellation_timeout=10.0)
async def autoscaler(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Evaluate the queue metrics every evaluationIntervalSeconds while autoscaling is enabled."""
    ctx = _context(memo)
    while not stopped:
        interval = await _autoscale_once(ctx, ctx.http, body, logger)
        await stopped.wait(interval)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)
async def forget(name: str, namespace: str | None, **_: Any) -> None:
    """Children go by garbage collection (owner references); only the operator's own gauges remain."""
    forget_deployment(namespace or "", name)
    _PASS_LOCKS.pop(f"{namespace}/{name}", None)
