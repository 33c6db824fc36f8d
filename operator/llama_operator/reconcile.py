"""The reconcile service: parse -> size -> apply -> observe -> status. Kubernetes I/O only through `Kube`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError

from llama_operator.adapters.drive import (
    RolloutResult,
    drive_rollout,
    fake_node_names,
    state_from_status,
    status_from_state,
)
from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.status import AdapterRolloutStatus, Condition, LlamaDeploymentStatus
from llama_operator.api.timestamps import rfc3339
from llama_operator.engines.base import served_model_name
from llama_operator.kube import SERVICE_MONITOR_CRD, Kube, KubeError
from llama_operator.metrics import SIZING_DECISIONS, record_phase
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.render import LABEL_DEPLOYMENT, Owner, RenderOptions, render
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import Inventory, inventory_from_nodes, node_facts_from_manifest
from llama_operator.status_report import Observation, invalid_spec_status, report

Manifest = dict[str, Any]


@dataclass(frozen=True)
class OperatorContext:
    kube: Kube
    config: OperatorConfig
    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)  # smoke requests and Prometheus


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
    apply_error: str | None = None  # a child the API refused; the pass is retried


def utc_now() -> str:
    return rfc3339(time.time())


def previous_conditions(status: Mapping[str, Any]) -> list[Condition]:
    conditions = []
    for raw in status.get("conditions") or []:
        try:
            conditions.append(Condition.model_validate(raw))
        except ValidationError:
            continue  # a hand-edited condition we cannot read is replaced
    return conditions


async def cluster_nodes(ctx: OperatorContext) -> list[Manifest]:
    return await asyncio.to_thread(ctx.kube.list, "v1", "Node", None)


def cluster_inventory(ctx: OperatorContext, nodes: list[Manifest]) -> Inventory:
    facts = [node_facts_from_manifest(n) for n in nodes]
    return inventory_from_nodes(facts, ctx.config.class_list(), ctx.config.cpu_cost_per_replica)


def has_adapters(spec_body: Mapping[str, Any], status_body: Mapping[str, Any]) -> bool:
    """Adapter rollouts need the full pass (smoke requests, re-renders) on pod events too."""
    return bool(spec_body.get("adapters") or status_body.get("adapterRollout"))


async def observe(ctx: OperatorContext, ref: ObjectRef, workload_kind: tuple[str, str]) -> Observation:
    workload = await asyncio.to_thread(ctx.kube.get, *workload_kind, ref.namespace, ref.name)
    pods = await asyncio.to_thread(ctx.kube.list, "v1", "Pod", ref.namespace, f"{LABEL_DEPLOYMENT}={ref.name}")
    return Observation(workload=workload, pods=pods)


def _workload_kind(decision: SizingDecision | None) -> tuple[str, str]:
    if decision and decision.chosen and decision.chosen.shape.nodes > 1:
        return ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    return ("apps/v1", "Deployment")


async def reconcile(
    ctx: OperatorContext, ref: ObjectRef, spec_body: Mapping[str, Any], status_body: Mapping[str, Any], *, apply: bool
) -> Outcome:
    """One level-triggered pass. `apply=False` only refreshes status from the children."""
    previous = previous_conditions(status_body)
    now = utc_now()
    try:
        spec = parse_spec(spec_body)
        nodes = await cluster_nodes(ctx)
        decision = plan(spec, ref.name, cluster_inventory(ctx, nodes))
    except InvalidSpecError as error:
        status = invalid_spec_status(str(error), generation=ref.generation, previous=previous, now=now)
        record_phase(ref.namespace, ref.name, status.phase)
        return Outcome(status=status, decision=None, invalid=str(error))
    SIZING_DECISIONS.labels(decision.request.engine, str(decision.fits).lower()).inc()
    rollout: RolloutResult | None = None
    if apply and decision.fits and has_adapters(spec_body, status_body):
        pods = await asyncio.to_thread(ctx.kube.list, "v1", "Pod", ref.namespace, f"{LABEL_DEPLOYMENT}={ref.name}")
        rollout = await drive_rollout(
            ctx.kube,
            ctx.http,
            namespace=ref.namespace,
            spec=spec,
            engine=decision.request.engine,
            served_name=served_model_name(spec, ref.name),
            state=state_from_status(status_body),
            pods=pods,
            fake_nodes=fake_node_names(nodes),
            prometheus_url=ctx.config.prometheus_url,
            now=time.time(),
        )
    applied: list[str] = []
    apply_error = None if apply else _unresolved_apply_error(previous, ref.generation)
    if apply and decision.fits:
        with_monitor = await asyncio.to_thread(ctx.kube.crd_exists, SERVICE_MONITOR_CRD)
        options = RenderOptions(images=ctx.config.engine_images(), service_monitor=with_monitor)
        children = render(
            ref.name,
            ref.namespace,
            spec,
            decision,
            options=options,
            owner=Owner(ref.name, ref.uid),
            adapters=rollout.state.serving if rollout else None,
        )
        for child in children:
            what = f"{child['kind']}/{child['metadata']['name']}"
            try:
                await asyncio.to_thread(ctx.kube.apply, child)
            except KubeError as error:
                apply_error = (
                    f"could not apply {what}: {error.message}; check the operator's RBAC and admission webhooks"
                )
                break
            applied.append(what)
    observation = await observe(ctx, ref, _workload_kind(decision))
    rollout_status = status_from_state(rollout.state) if rollout else _saved_rollout(status_body)
    status = report(
        ref.name, ref.namespace, spec, decision, observation, generation=ref.generation, previous=previous, now=now,
        rollout=rollout_status, apply_error=apply_error,
    )  # fmt: skip
    record_phase(ref.namespace, ref.name, status.phase)
    return Outcome(
        status=status,
        decision=decision,
        applied=tuple(applied),
        rollbacks=tuple(n.reason for n in rollout.rollbacks) if rollout else (),
        smoke_results=rollout.smoke_results if rollout else (),
        apply_error=apply_error,
    )


def _unresolved_apply_error(previous: list[Condition], generation: int) -> str | None:
    """A status-only pass cannot clear an apply failure of this generation: only a successful apply can."""
    degraded = next((c for c in previous if c.type == "Degraded"), None)
    if degraded and degraded.reason == "ApplyFailed" and degraded.observed_generation == generation:
        return degraded.message
    return None


def _saved_rollout(status_body: Mapping[str, Any]) -> AdapterRolloutStatus | None:
    raw = status_body.get("adapterRollout")
    return AdapterRolloutStatus.model_validate(raw) if raw else None


def status_patch(outcome: Outcome) -> Manifest:
    # status.autoscaling belongs to the autoscaler; leave it out so a merge patch never erases it.
    patch: Manifest = outcome.status.model_dump(by_alias=True, mode="json", exclude={"autoscaling"})
    return patch


def changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Write status only when it differs from what the object carries."""
    return any(current.get(key) != value for key, value in new.items())


def owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "LlamaDeployment" and ref.get("controller"):
            return str(ref.get("name"))
    return None


def decision_summary(outcome: Outcome) -> str | None:
    """A one-line statement of the sizing decision, for Events."""
    if outcome.decision is None:
        return None
    status = outcome.status
    return f"{status.engine} on {status.gpus}: {outcome.decision.reason}"
