"""Fake GPU node pools: read from data (``pools.yaml``), turned into Node objects, registered.

The Node objects carry the labels NVIDIA GPU Feature Discovery puts on real GPU nodes and
``nvidia.com/gpu`` capacity, so the real scheduler places GPU pods on them; KWOK, which
manages only nodes with the ``llamaops.io/kwok=true`` label, plays their kubelet. Nodes
labelled ``llamaops.io/process-backed=true`` are left to the process-backed kubelet when the
control plane runs one (``kwok_node_selector``); otherwise KWOK plays theirs too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from kubernetes.client import ApiClient, CoreV1Api, V1Node
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llama_operator_dev.errors import NodePoolsError

LOGGER = logging.getLogger(__name__)

DEFAULT_POOLS_FILE = Path(__file__).with_name("pools.yaml")
KWOK_MANAGED_LABEL = "llamaops.io/kwok"
NODE_POOL_LABEL = "llamaops.io/node-pool"
KWOK_MANAGED_SELECTOR = f"{KWOK_MANAGED_LABEL}=true"
PROCESS_BACKED_LABEL = "llamaops.io/process-backed"
DEFAULT_MAX_PODS = "110"
HTTP_CONFLICT = 409

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class NodeTaint(BaseModel):
    """A taint every node of the pool carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class NodePool(BaseModel):
    """A group of identical fake nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=40)
    node_count: int = Field(alias="nodeCount", ge=0, le=100)
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: dict[str, str]
    taints: list[NodeTaint] = Field(default_factory=list)

    def node_names(self) -> list[str]:
        return [f"kwok-{self.name}-{index}" for index in range(self.node_count)]


class NodePoolsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: list[NodePool]


def kwok_node_selector(excluded_labels: Mapping[str, str] | None = None) -> str:
    """KWOK's node label selector: our labelled nodes, minus those another kubelet plays."""
    excluded = [f"{key}!={value}" for key, value in sorted((excluded_labels or {}).items())]
    return ",".join([KWOK_MANAGED_SELECTOR, *excluded])


def load_node_pools(path: Path = DEFAULT_POOLS_FILE) -> list[NodePool]:
    """Parse and validate a pools file; pool names must be unique."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        pools = NodePoolsFile.model_validate(document).pools
    except (OSError, yaml.YAMLError, ValidationError) as error:
        raise NodePoolsError(f"cannot read node pools from {path}: {error}") from error
    names = [pool.name for pool in pools]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise NodePoolsError(f"{path}: pool names must be unique, repeated: {', '.join(duplicates)}")
    return pools


def node_labels(pool: NodePool, node_name: str) -> dict[str, str]:
    """The pool's labels plus the ones a kubelet sets and the ones KWOK and we select on."""
    labels = {
        **pool.labels,
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": node_name,
        "type": "kwok",
        KWOK_MANAGED_LABEL: "true",
        NODE_POOL_LABEL: pool.name,
    }
    return dict(sorted(labels.items()))


def node_manifest(pool: NodePool, node_name: str) -> dict[str, Any]:
    """A Node with capacity and allocatable in status (the API keeps status given on create)."""
    capacity = dict(sorted({"pods": DEFAULT_MAX_PODS, **pool.capacity}.items()))
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": node_labels(pool, node_name),
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
    if pool.taints:
        manifest["spec"]["taints"] = [taint.model_dump() for taint in pool.taints]
    return manifest


def pool_node_manifests(pools: Iterable[NodePool]) -> list[dict[str, Any]]:
    return [node_manifest(pool, node_name) for pool in pools for node_name in pool.node_names()]


def create_pool_nodes(api_client: ApiClient, manifests: Iterable[Mapping[str, Any]]) -> list[str]:
    """Register the nodes through the API; a node that already exists is left as it is."""
    core = CoreV1Api(api_client)
    names: list[str] = []
    for manifest in manifests:
        name = str(manifest["metadata"]["name"])
        try:
            core.create_node(body=V1Node.model_validate(manifest))
        except ApiException as error:
            if error.status != HTTP_CONFLICT:
                raise
            LOGGER.info("node %s already exists; keeping it", name)
        names.append(name)
    return names
