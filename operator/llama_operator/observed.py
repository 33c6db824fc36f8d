"""Pure: what the operator keeps of watched objects, and whether an observed child already holds its desired state.

Passes read nodes, CRDs, children and pods from watch-fed caches, never from a LIST per pass. The caches keep
slim copies (pods: what status and rollouts read; children: the body without status and managedFields as one
compact JSON string, plus a workload's status), so a thousand LlamaDeployments cost megabytes, not hundreds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from llama_operator.engines.devices import CLAIM_TEMPLATE_KIND
from llama_operator.model_cache import CacheObjects
from llama_operator.render import LABEL_DEPLOYMENT
from llama_operator.sizing.quantity import parse_quantity

Manifest = dict[str, Any]
OwnerKey = tuple[str, str]  # (namespace, LlamaDeployment name)

_POD_ANNOTATIONS = ("llamaops.io/adapters",)


def resource_version(body: Mapping[str, Any]) -> int:
    """etcd revisions are integers; an unreadable one sorts first, so a fresher copy always wins."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def owner_of(child: Mapping[str, Any]) -> str | None:
    """The LlamaDeployment that controls a child: its controller owner reference."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "LlamaDeployment" and ref.get("controller"):
            return str(ref.get("name"))
    return None


def slim_pod(pod: Mapping[str, Any]) -> Manifest:
    """What status reports and rollouts read of a pod; the rest of its body is not kept."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in _POD_ANNOTATIONS}
    containers = [{"name": c.get("name"), "ports": c.get("ports") or []} for c in spec.get("containers") or []]
    kept_status = {
        k: status[k]
        for k in ("podIP", "phase", "conditions", "containerStatuses", "initContainerStatuses")
        if k in status
    }
    kept_meta = {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "resourceVersion": meta.get("resourceVersion"),
        "labels": {LABEL_DEPLOYMENT: (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)},
        "annotations": annotations,
    }
    if meta.get("deletionTimestamp"):
        kept_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    return {"metadata": kept_meta, "spec": {"nodeName": spec.get("nodeName"), "containers": containers},
            "status": kept_status}  # fmt: skip


@dataclass(frozen=True)
class ChildRecord:
    """One child as last seen: its body (compact JSON, without status and managedFields) and status."""

    api_version: str
    kind: str
    name: str
    resource_version: int
    body_json: str
    generation: int = 0
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> Manifest:
        parsed: Manifest = json.loads(self.body_json)
        return parsed

    def as_workload(self) -> Manifest:
        """The shape status reports read of a Deployment or LeaderWorkerSet."""
        return {"metadata": {"name": self.name, "generation": self.generation}, "status": dict(self.status)}


def child_record(body: Mapping[str, Any]) -> ChildRecord:
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    kept = {k: v for k, v in body.items() if k not in ("status", "metadata")}
    kept["metadata"] = meta
    return ChildRecord(
        api_version=str(body.get("apiVersion")),
        kind=str(body.get("kind")),
        name=str(meta.get("name")),
        resource_version=resource_version(body),
        body_json=json.dumps(kept, separators=(",", ":"), sort_keys=True),
        generation=int(meta.get("generation") or 0),
        status=dict(body.get("status") or {}),
    )


def _quantity(value: object) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return parse_quantity(str(value))
    except ValueError:
        return None


def _same_scalar(observed: object, desired: object) -> bool:
    if observed == desired:
        return True
    if isinstance(observed, bool) or isinstance(desired, bool):
        return False
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(observed) == float(desired)
    # The apiserver writes quantities in canonical form ("0.5" -> "500m", 1 -> "1").
    left, right = _quantity(observed), _quantity(desired)
    return left is not None and left == right


def _empty(value: object) -> bool:
    """What the apiserver omits when it serialises a field (Go's omitempty): absent means the same."""
    return value is None or value is False or value in ({}, [], "", 0)


def contains(observed: object, desired: object) -> bool:
    """Whether `observed` already holds every field `desired` sets (defaults the server added are fine)."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return _empty(desired) and observed is None
        return all(
            contains(observed[key], value) if key in observed else _empty(value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return not desired and observed is None
        return len(observed) == len(desired) and all(contains(o, d) for o, d in zip(observed, desired, strict=True))
    return _same_scalar(observed, desired)


def first_difference(observed: object, desired: object, path: str = "") -> str | None:
    """The first path where `observed` does not hold `desired` (for the log line of an apply)."""
    if isinstance(desired, Mapping) and isinstance(observed, Mapping):
        return _first_in_mapping(observed, desired, path)
    if isinstance(desired, list) and isinstance(observed, list):
        found = next(
            (d for i, (o, v) in enumerate(zip(observed, desired, strict=False))
             if (d := first_difference(o, v, f"{path}[{i}]"))),
            None,
        )  # fmt: skip
        if found is None and len(desired) != len(observed):
            found = f"{path}: {len(observed)} items -> {len(desired)}"
        return found
    return None if contains(observed, desired) else f"{path}: {str(observed)[:80]} -> {str(desired)[:80]}"


def _first_in_mapping(observed: Mapping[str, Any], desired: Mapping[str, Any], path: str) -> str | None:
    for key, value in desired.items():
        if key not in observed:
            found = None if _empty(value) else f"{path}.{key} missing"
        else:
            found = first_difference(observed[key], value, f"{path}.{key}")
        if found:
            return found
    return None


def freshest(*records: ChildRecord | None) -> ChildRecord | None:
    present = [r for r in records if r is not None]
    return max(present, key=lambda r: r.resource_version) if present else None


@dataclass(frozen=True)
class ObjectView:
    """Everything one pass reads about one LlamaDeployment, from the caches."""

    children: Mapping[tuple[str, str], ChildRecord]  # (apiVersion, kind) -> child
    pods: Sequence[Manifest]
    crds: frozenset[str]
    cache: CacheObjects | None = None  # the model cache the spec asks for (model.cache)
    owned_caches: Mapping[str, Manifest] = field(default_factory=dict)  # claims listing this object as a user
    # ResourceClaimTemplates it owns, by name: a template cannot change, so a new claim is a new one beside it.
    claim_templates: Mapping[str, ChildRecord] = field(default_factory=dict)

    def child(self, api_version: str, kind: str) -> ChildRecord | None:
        return self.children.get((api_version, kind))

    def child_named(self, api_version: str, kind: str, name: str) -> ChildRecord | None:
        """The cached child of that kind and name (a kind with one child per owner: that child, by name)."""
        if kind == CLAIM_TEMPLATE_KIND:
            return self.claim_templates.get(name)
        record = self.child(api_version, kind)
        return record if record is not None and record.name == name else None

    def workload(self, api_version: str, kind: str) -> Manifest | None:
        record = self.child(api_version, kind)
        return record.as_workload() if record is not None else None


def needs_apply(desired: Mapping[str, Any], observed: ChildRecord | None) -> bool:
    """Apply a child only when it is missing or a field we set differs (a hand edit, a new spec)."""
    return observed is None or not contains(observed.body, desired)


def children_by_kind(records: Iterable[ChildRecord]) -> dict[tuple[str, str], ChildRecord]:
    out: dict[tuple[str, str], ChildRecord] = {}
    for record in records:
        key = (record.api_version, record.kind)
        out[key] = freshest(out.get(key), record) or record
    return out
