"""Pure: the ScalingActive condition of autoscaling.mode: KEDA, read from the ScaledObject KEDA reports on.

KEDA writes `Ready` (the ScaledObject is valid and its HPA exists), `Active` (the trigger reads above its
activation threshold) and `Fallback` (the query failed `failureThreshold` times in a row and the fallback
holds replicas) on the ScaledObject's status. Only their types, statuses and reasons are repeated here:
KEDA's messages can carry what a Prometheus answered, and no answer of a URL reaches our status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_operator.api import status as st
from llama_operator.api.conditions import make_condition
from llama_operator.api.status import Condition, ConditionStatus
from llama_operator.autoscale.keda import KEDA_CRD

REASON_KEDA_NOT_INSTALLED = "KEDANotInstalled"
REASON_KEDA_PENDING = "KEDAPending"
REASON_KEDA_NOT_READY = "KEDANotReady"
REASON_KEDA_SCALING = "KEDAScaling"


@dataclass(frozen=True)
class KedaReading:
    """What the cluster shows of the object's ScaledObject: whether KEDA's API exists, and its conditions."""

    api_installed: bool
    name: str = ""
    query: str = ""
    target: float = 0.0
    conditions: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, reason)


def read_scaled_object(name: str, status: Mapping[str, Any] | None, *, query: str, target: float) -> KedaReading:
    conditions = {
        str(c.get("type")): (str(c.get("status") or "Unknown"), str(c.get("reason") or ""))
        for c in (status or {}).get("conditions") or []
        if isinstance(c, Mapping) and c.get("type")
    }
    return KedaReading(True, name, query, target, conditions)


def _said(reading: KedaReading, types: Sequence[str]) -> str:
    parts = [f"{t}={reading.conditions[t][0]}" + (f" ({reading.conditions[t][1]})" if reading.conditions[t][1]
             else "") for t in types if t in reading.conditions]  # fmt: skip
    return ", ".join(parts) or "no conditions yet"


def keda_condition(reading: KedaReading, *, generation: int, now: str) -> Condition:
    status: ConditionStatus
    shown = f"ScaledObject/{reading.name}"
    said = _said(reading, ("Ready", "Active", "Fallback"))
    if not reading.api_installed:
        status, reason = "False", REASON_KEDA_NOT_INSTALLED
        message = (
            f"autoscaling.mode is KEDA but the operator sees no ScaledObject API (keda.sh/v1alpha1): install KEDA "
            f"(the CRD {KEDA_CRD}, its operator and metrics adapter) or set autoscaling.mode: Builtin; "
            "replicas stay as they are"
        )
    elif reading.conditions.get("Fallback", ("", ""))[0] == "True":
        status, reason = "False", st.REASON_METRICS_UNAVAILABLE
        message = f"KEDA's query failed: its fallback holds the current replicas until metrics return ({said})"
    elif reading.conditions.get("Ready", ("", ""))[0] == "True":
        status, reason = "True", REASON_KEDA_SCALING
        message = f"KEDA scales spec.replicas through {shown} on {reading.query} (target {reading.target:g} per replica; {said})"
    elif reading.conditions.get("Ready", ("", ""))[0] == "False":
        status, reason = "False", REASON_KEDA_NOT_READY
        message = f"KEDA does not scale {shown}: {said}; see `kubectl describe scaledobject {reading.name}`"
    else:
        status, reason = "Unknown", REASON_KEDA_PENDING
        message = f"waiting for KEDA to take {shown} ({said})"
    return make_condition(st.SCALING_ACTIVE, status, reason, message, generation=generation, now=now)
