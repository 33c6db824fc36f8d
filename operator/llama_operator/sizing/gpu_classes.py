"""GPU classes: read from NVIDIA GPU Feature Discovery node labels, with configurable defaults and costs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from llama_operator.sizing.quantity import parse_capacity

MIB = 1024**2
GIB = 1024**3

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY_MIB = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_CLASS = "llamaops.io/gpu-class"  # optional operator label; wins over the memory ranges
GPU_RESOURCE = "nvidia.com/gpu"
CPU_CLASS = "cpu"

# Assumed when no cluster is given (`llama-operator plan` without --nodes).
DEFAULT_GPUS_PER_NODE = 8
UNKNOWN_NODE_COUNT = 0  # 0 = not known: do not limit nodes per replica by what exists


@dataclass(frozen=True)
class GpuClass:
    """One kind of GPU node. Classes match nodes by `nvidia.com/gpu.memory` (MiB) ranges."""

    name: str
    min_memory_mib: int
    max_memory_mib: int
    memory_mib: int  # memory of one GPU: the smallest seen on a node of the class
    cost_per_gpu: float  # relative cost of one GPU; a plan costs cost_per_gpu x GPUs
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    nodes: int = UNKNOWN_NODE_COUNT
    product: str | None = None

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def matches(self, memory_mib: int) -> bool:
        return self.min_memory_mib <= memory_mib <= self.max_memory_mib


@dataclass(frozen=True)
class CpuClass:
    """Nodes without GPUs, for llama.cpp on CPU. A replica must fit one node's allocatable memory."""

    memory_bytes: int
    cost_per_replica: float
    nodes: int = UNKNOWN_NODE_COUNT
    name: str = CPU_CLASS


# Relative costs follow the usual on-demand price ratio of one L4 : L40S : H100 GPU-hour.
DEFAULT_GPU_CLASSES = (
    GpuClass("gpu-24gb", 20_000, 30_000, 23_034, 1.0, product="NVIDIA-L4"),
    GpuClass("gpu-48gb", 40_000, 50_000, 46_068, 2.2, product="NVIDIA-L40S"),
    GpuClass("h100-80gb", 78_000, 100_000, 81_559, 6.0, product="NVIDIA-H100-80GB-HBM3"),
)
DEFAULT_CPU_CLASS = CpuClass(memory_bytes=16 * GIB, cost_per_replica=0.25)


@dataclass(frozen=True)
class Inventory:
    """What a replica can be placed on."""

    gpu_classes: tuple[GpuClass, ...]
    cpu: CpuClass | None
    skipped_nodes: tuple[str, ...] = ()  # "node NAME: why", for nodes whose facts could not be read

    def gpu_class(self, name: str) -> GpuClass | None:
        return next((c for c in self.gpu_classes if c.name == name), None)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.gpu_classes] + ([self.cpu.name] if self.cpu else [])


DEFAULT_INVENTORY = Inventory(DEFAULT_GPU_CLASSES, DEFAULT_CPU_CLASS)


@dataclass(frozen=True)
class NodeFacts:
    """The parts of a Node that sizing reads."""

    name: str
    labels: Mapping[str, str]
    allocatable_gpus: int
    allocatable_memory_bytes: int
    unreadable: str | None = None  # why the node's facts could not be read; sizing then skips the node


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is a {type(value).__name__}, expected a mapping")
    return value


def node_facts_from_manifest(node: Mapping[str, object]) -> NodeFacts:
    """Read a Node manifest (dict as the API returns it).

    A node whose resources cannot be read (a quantity that is not one, a part that is not a mapping)
    gets `unreadable` set to the reason, and no GPUs or memory, instead of raising: one odd node must not
    stop sizing on the others.
    """
    name = ""
    try:
        metadata = _mapping(node.get("metadata"), "metadata")
        name = str(metadata.get("name", ""))
        labels = _mapping(metadata.get("labels"), "metadata.labels")
        status = _mapping(node.get("status"), "status")
        allocatable = _mapping(status.get("allocatable") or status.get("capacity"), "status.allocatable")
        try:
            allocatable_gpus = parse_capacity(str(allocatable.get(GPU_RESOURCE, "0")))
        except ValueError as error:
            raise ValueError(f"allocatable {GPU_RESOURCE} {error}") from error
        try:
            allocatable_memory_bytes = parse_capacity(str(allocatable.get("memory", "0")))
        except ValueError as error:
            raise ValueError(f"allocatable memory {error}") from error
    except ValueError as error:
        return NodeFacts(name, {}, 0, 0, unreadable=f"node {name or '(no name)'}: {error}")
    return NodeFacts(
        name=name,
        labels={str(k): str(v) for k, v in labels.items()},
        allocatable_gpus=allocatable_gpus,
        allocatable_memory_bytes=allocatable_memory_bytes,
    )


def classify_node(node: NodeFacts, classes: Iterable[GpuClass]) -> str | None:
    """The class name of a node: its operator label, else the class whose memory range holds it."""
    if node.allocatable_gpus <= 0:
        return CPU_CLASS
    if LABEL_CLASS in node.labels:
        return node.labels[LABEL_CLASS]
    memory = node.labels.get(LABEL_MEMORY_MIB, "")
    if not memory.isdigit():
        return None
    return next((c.name for c in classes if c.matches(int(memory))), None)


def inventory_from_nodes(
    nodes: Iterable[NodeFacts],
    classes: Iterable[GpuClass] = DEFAULT_GPU_CLASSES,
    cpu_cost_per_replica: float = DEFAULT_CPU_CLASS.cost_per_replica,
) -> Inventory:
    """Classes present in a cluster: GPUs per node is the largest node, memory the smallest GPU.

    Nodes whose facts could not be read are left out, and their reasons kept in `skipped_nodes`.
    """
    class_list = list(classes)
    found: dict[str, GpuClass] = {}
    cpu_memory: list[int] = []
    skipped: list[str] = []
    for node in nodes:
        if node.unreadable is not None:
            skipped.append(node.unreadable)
            continue
        name = classify_node(node, class_list)
        if name == CPU_CLASS:
            cpu_memory.append(node.allocatable_memory_bytes)
            continue
        base = next((c for c in class_list if c.name == name), None)
        if base is None:
            continue
        memory_label = node.labels.get(LABEL_MEMORY_MIB, "")
        memory_mib = int(memory_label) if memory_label.isdigit() else base.memory_mib
        seen = found.get(base.name)
        if seen is None:
            found[base.name] = replace(
                base,
                memory_mib=memory_mib,
                gpus_per_node=node.allocatable_gpus,
                nodes=1,
                product=node.labels.get(LABEL_PRODUCT, base.product),
            )
        else:
            found[base.name] = replace(
                seen,
                memory_mib=min(seen.memory_mib, memory_mib),
                gpus_per_node=max(seen.gpus_per_node, node.allocatable_gpus),
                nodes=seen.nodes + 1,
            )
    ordered = tuple(found[c.name] for c in class_list if c.name in found)
    cpu = (
        CpuClass(memory_bytes=max(cpu_memory), cost_per_replica=cpu_cost_per_replica, nodes=len(cpu_memory))
        if cpu_memory
        else None
    )
    return Inventory(ordered, cpu, tuple(skipped))


# -- GPUs published by the NVIDIA DRA driver (resource.k8s.io/v1 ResourceSlices) ----------------------------

DRA_DRIVER = "gpu.nvidia.com"


@dataclass(frozen=True)
class SliceGpus:
    """The GPUs one ResourceSlice of the NVIDIA DRA driver lists for one node."""

    node: str
    count: int
    memory_mib: int  # the smallest device's memory
    product: str | None


def slice_gpus_from_manifest(body: Mapping[str, object]) -> SliceGpus | None:
    """The whole-GPU devices of a ResourceSlice (attribute `type: gpu` and a memory capacity); None for other
    drivers, slices without a node, or none readable."""
    try:
        spec = _mapping(body.get("spec"), "spec")
        if spec.get("driver") != DRA_DRIVER or not spec.get("nodeName"):
            return None
        memories: list[int] = []
        products: list[str] = []
        devices = spec.get("devices") or []
        if not isinstance(devices, list):
            return None
        for device in devices:
            device_map = _mapping(device, "device")
            attributes = _mapping(device_map.get("attributes"), "attributes")
            if _mapping(attributes.get("type"), "type").get("string") != "gpu":
                continue
            memory = _mapping(_mapping(device_map.get("capacity"), "capacity").get("memory"), "memory").get("value")
            memories.append(parse_capacity(str(memory)) // MIB)
            product = _mapping(attributes.get("productName"), "productName").get("string")
            if isinstance(product, str):
                products.append(product)
    except (ValueError, TypeError):
        return None
    if not memories:
        return None
    return SliceGpus(str(spec["nodeName"]), len(memories), min(memories), products[0] if products else None)


def with_slice_gpus(nodes: Iterable[NodeFacts], slices: Iterable[SliceGpus]) -> list[NodeFacts]:
    """Nodes whose GPUs only the DRA driver publishes (no nvidia.com/gpu allocatable) get them from their
    slices, with the memory and product labels GPU Feature Discovery would have set; other nodes are kept."""
    per_node: dict[str, list[SliceGpus]] = {}
    for found in slices:
        per_node.setdefault(found.node, []).append(found)
    merged = []
    for node in nodes:
        published = per_node.get(node.name)
        if node.unreadable is not None or node.allocatable_gpus > 0 or not published:
            merged.append(node)
            continue
        labels = dict(node.labels)
        labels[LABEL_MEMORY_MIB] = str(min(s.memory_mib for s in published))
        product = next((s.product for s in published if s.product), None)
        if product is not None:
            labels.setdefault(LABEL_PRODUCT, product.replace(" ", "-"))
        merged.append(replace(node, labels=labels, allocatable_gpus=sum(s.count for s in published)))
    return merged
