"""Pure: what a LeaderWorkerSet's own status says, folded into the LlamaDeployment's conditions.

The LWS controller (sigs.k8s.io/lws, v1) writes `Available` (reason AllGroupsReady: every group's leader
pod and worker StatefulSet are ready), `Progressing` (GroupsProgressing: a group is being created or is not
ready yet) and `UpdateInProgress` (GroupsUpdating: a template change rolls group by group), each True while
it holds, with the LWS's generation as `observedGeneration`; Available and Progressing exclude each other.
Only conditions of the LWS's current generation count: an older one describes a spec it no longer has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_operator.api import status as st
from llama_operator.api.status import ConditionStatus, Phase

LWS_KIND = "LeaderWorkerSet"
LWS_AVAILABLE = "Available"
LWS_PROGRESSING = "Progressing"
LWS_UPDATE_IN_PROGRESS = "UpdateInProgress"
REASON_LWS_NOT_AVAILABLE = "LeaderWorkerSetNotAvailable"

Fields = tuple[str, ConditionStatus, str, str]  # type, status, reason, message (as status_report builds them)


@dataclass(frozen=True)
class LwsReading:
    """The LWS's current-generation conditions that hold (status True), by type."""

    name: str
    generation: int
    holding: dict[str, str]  # type -> "Type (Reason: message)"

    @property
    def reported(self) -> bool:
        """The controller has written conditions for the LWS's current spec."""
        return bool(self.holding)

    @property
    def available(self) -> bool:
        return LWS_AVAILABLE in self.holding

    @property
    def updating(self) -> bool:
        return LWS_UPDATE_IN_PROGRESS in self.holding

    def describe(self) -> str:
        """`LeaderWorkerSet NAME: Progressing (GroupsProgressing: Replicas are progressing)`, or why it says nothing."""
        if not self.reported:
            return f"{LWS_KIND} {self.name} has no conditions for generation {self.generation} yet (is its controller running?)"
        return f"{LWS_KIND} {self.name}: " + "; ".join(self.holding[t] for t in sorted(self.holding))


def read_leader_worker_set(workload: dict[str, Any]) -> LwsReading:
    """The conditions of a LeaderWorkerSet (the workload of a plan whose replica spans nodes)."""
    metadata = workload.get("metadata") or {}
    generation = int(metadata.get("generation") or 0)
    holding: dict[str, str] = {}
    for condition in (workload.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True" or int(condition.get("observedGeneration") or 0) != generation:
            continue
        kind = str(condition.get("type", ""))
        detail = ": ".join(str(part) for part in (condition.get("reason"), condition.get("message")) if part)
        holding[kind] = f"{kind} ({detail})" if detail else kind
    return LwsReading(str(metadata.get("name", "")), generation, holding)


def with_lws_conditions(
    reading: LwsReading, phase: Phase, fields: Sequence[Fields], *, ready: int, updated: int, desired: int
) -> tuple[Phase, list[Fields]]:
    """Ready only while the LWS is Available too, each message quoting what the LWS says; Progressing while
    the LWS reports a rolling update."""
    result: list[Fields] = []
    for field in fields:
        kind, status, reason, message = field
        if kind == st.READY and desired > 0:
            if status == "True" and not reading.available:
                status, reason = "False", REASON_LWS_NOT_AVAILABLE
                message = f"{ready}/{desired} replicas ready; {reading.describe()}"
                phase = "Progressing" if phase == "Ready" else phase
            else:
                message = f"{message}; {reading.describe()}"
        elif kind == st.PROGRESSING and reading.updating and status != "True":
            status, reason = "True", st.REASON_ROLLING_OUT
            message = f"{updated}/{desired} replicas updated; {reading.describe()}"
        elif kind == st.PROGRESSING and reading.updating:
            message = f"{message}; {reading.describe()}"
        result.append((kind, status, reason, message))
    return phase, result
