"""Condition helpers: a condition's lastTransitionTime changes only when its status does."""

from __future__ import annotations

from collections.abc import Iterable

from llama_operator.api.status import Condition, ConditionStatus

CONDITION_ORDER = ("Ready", "Fits", "ModelCached", "Progressing", "Degraded", "AdapterRollout", "ScalingActive")

# Reasons of refusals by the apiserver (the others are in `api.status`).
REASON_CHILD_REJECTED = "ChildRejected"  # the apiserver refused a child as invalid (400/422): fix the spec
REASON_PODS_REJECTED = "PodsRejected"  # the workload cannot create pods (ReplicaFailure/FailedCreate)


def make_condition(
    type_: str, status: ConditionStatus, reason: str, message: str, *, generation: int, now: str
) -> Condition:
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


def merge_conditions(existing: Iterable[Condition], updates: Iterable[Condition]) -> list[Condition]:
    """Replace conditions by type; keep the old transition time when the status did not change."""
    merged = {c.type: c for c in existing}
    for update in updates:
        old = merged.get(update.type)
        keep_time = old is not None and old.status == update.status
        merged[update.type] = (
            update.model_copy(update={"last_transition_time": old.last_transition_time})
            if keep_time and old is not None
            else update
        )

    def order(c: Condition) -> tuple[int, str]:
        rank = CONDITION_ORDER.index(c.type) if c.type in CONDITION_ORDER else len(CONDITION_ORDER)
        return (rank, c.type)

    return sorted(merged.values(), key=order)


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
