"""GPU classes read from Node manifests as the Kubernetes API returns them (GPU Feature Discovery labels)."""

from __future__ import annotations

from typing import Any

import pytest

from llama_operator.sizing.catalog import CATALOG
from llama_operator.sizing.fit import SizingRequest, decide
from llama_operator.sizing.gpu_classes import (
    CPU_CLASS,
    DEFAULT_GPU_CLASSES,
    GIB,
    GpuClass,
    classify_node,
    inventory_from_nodes,
    node_facts_from_manifest,
)
from llama_operator.sizing.memory import Workload


def _node(
    name: str,
    *,
    product: str | None = None,
    memory_mib: int | None = None,
    gpus: int = 0,
    memory: str = "256Gi",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Node manifest with the labels GPU Feature Discovery puts on it."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    allocatable: dict[str, str] = {"cpu": "31850m", "memory": memory, "pods": "110"}
    if gpus:
        all_labels["nvidia.com/gpu.count"] = str(gpus)
        all_labels["nvidia.com/gpu.present"] = "true"
        allocatable["nvidia.com/gpu"] = str(gpus)
    if product is not None:
        all_labels["nvidia.com/gpu.product"] = product
    if memory_mib is not None:
        all_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    all_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "resourceVersion": "1"},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


def _classify(manifest: dict[str, Any]) -> str | None:
    return classify_node(node_facts_from_manifest(manifest), DEFAULT_GPU_CLASSES)


@pytest.mark.parametrize(
    ("product", "memory_mib", "expected"),
    [
        ("NVIDIA-L4", 23034, "gpu-24gb"),
        ("NVIDIA-A10G", 23028, "gpu-24gb"),
        ("NVIDIA-L40S", 46068, "gpu-48gb"),
        ("NVIDIA-A100-SXM4-40GB", 40960, "gpu-48gb"),
        ("NVIDIA-H100-80GB-HBM3", 81559, "h100-80gb"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", 81559, "h100-80gb"),
    ],
)
def test_gpu_nodes_classify_by_memory_range(product: str, memory_mib: int, expected: str) -> None:
    assert _classify(_node("n1", product=product, memory_mib=memory_mib, gpus=8)) == expected


def test_product_string_alone_does_not_decide_the_class() -> None:
    """A product name that says 80GB but a 23 GiB memory label goes by memory."""
    assert _classify(_node("n1", product="NVIDIA-H100-80GB-HBM3", memory_mib=23034, gpus=1)) == "gpu-24gb"


def test_gpu_node_outside_every_range_has_no_class() -> None:
    assert _classify(_node("v100", product="Tesla-V100-SXM2-16GB", memory_mib=16384, gpus=8)) is None


def test_gpu_node_without_memory_label_has_no_class() -> None:
    assert _classify(_node("n1", product="NVIDIA-L4", gpus=1)) is None


def test_operator_label_wins_over_the_memory_range() -> None:
    manifest = _node("n1", product="NVIDIA-L4", memory_mib=23034, gpus=4, labels={"llamaops.io/gpu-class": "gpu-48gb"})
    assert _classify(manifest) == "gpu-48gb"


@pytest.mark.parametrize(
    "manifest",
    [
        _node("cpu-1"),
        _node("cpu-2", labels={"nvidia.com/gpu.memory": "23034"}),  # stale label, no allocatable GPU
        _node("cpu-3", gpus=0, labels={"llamaops.io/gpu-class": "h100-80gb"}),
    ],
)
def test_nodes_without_allocatable_gpus_are_cpu(manifest: dict[str, Any]) -> None:
    assert _classify(manifest) == CPU_CLASS


def test_node_with_zero_gpu_resource_is_cpu() -> None:
    manifest = _node("drained", product="NVIDIA-L4", memory_mib=23034)
    manifest["status"]["allocatable"]["nvidia.com/gpu"] = "0"
    assert _classify(manifest) == CPU_CLASS


@pytest.mark.parametrize("quantity", ["64Gi", "65536Mi", "67108864Ki", "68719476736"])
def test_memory_quantities_parse(quantity: str) -> None:
    assert node_facts_from_manifest(_node("n1", memory=quantity)).allocatable_memory_bytes == 64 * GIB


@pytest.mark.parametrize(("quantity", "expected"), [("64G", 64 * 10**9), ("512M", 512 * 10**6), ("1Ti", 1024 * GIB)])
def test_decimal_and_large_quantities_parse(quantity: str, expected: int) -> None:
    assert node_facts_from_manifest(_node("n1", memory=quantity)).allocatable_memory_bytes == expected


def test_node_facts_read_name_labels_and_allocatable() -> None:
    facts = node_facts_from_manifest(_node("gpu-a", product="NVIDIA-L40S", memory_mib=46068, gpus=4, memory="503Gi"))
    assert facts.name == "gpu-a"
    assert facts.allocatable_gpus == 4
    assert facts.allocatable_memory_bytes == 503 * GIB
    assert facts.labels["nvidia.com/gpu.product"] == "NVIDIA-L40S"


def test_capacity_is_used_when_allocatable_is_missing() -> None:
    manifest = _node("n1", product="NVIDIA-L4", memory_mib=23034, gpus=2)
    del manifest["status"]["allocatable"]
    facts = node_facts_from_manifest(manifest)
    assert facts.allocatable_gpus == 2
    assert facts.allocatable_memory_bytes == 256 * GIB


def test_bare_manifest_is_a_cpu_node_with_no_memory() -> None:
    facts = node_facts_from_manifest({"metadata": {"name": "bare"}})
    assert facts.allocatable_gpus == 0
    assert facts.allocatable_memory_bytes == 0
    assert classify_node(facts, DEFAULT_GPU_CLASSES) == CPU_CLASS


def test_inventory_takes_most_gpus_per_node_and_smallest_memory() -> None:
    nodes = [
        _node("l4-a", product="NVIDIA-L4", memory_mib=23034, gpus=2),
        _node("l4-b", product="NVIDIA-L4", memory_mib=22900, gpus=4),
        _node("l4-c", product="NVIDIA-L4", memory_mib=23034, gpus=1),
        _node("h100-a", product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, gpus=8),
        _node("cpu-a", memory="64Gi"),
        _node("cpu-b", memory="128Gi"),
    ]
    inventory = inventory_from_nodes(node_facts_from_manifest(n) for n in nodes)
    assert [c.name for c in inventory.gpu_classes] == ["gpu-24gb", "h100-80gb"]
    l4 = inventory.gpu_class("gpu-24gb")
    assert l4 is not None
    assert l4.gpus_per_node == 4
    assert l4.memory_mib == 22900
    assert l4.nodes == 3
    assert l4.product == "NVIDIA-L4"
    h100 = inventory.gpu_class("h100-80gb")
    assert h100 is not None
    assert (h100.gpus_per_node, h100.memory_mib, h100.nodes) == (8, 81559, 1)
    assert inventory.gpu_class("gpu-48gb") is None
    assert inventory.cpu is not None
    assert inventory.cpu.nodes == 2
    assert inventory.cpu.memory_bytes == 128 * GIB  # a replica must fit one node: the largest
    assert inventory.class_names == ["gpu-24gb", "h100-80gb", "cpu"]


def test_inventory_keeps_class_costs_and_skips_unclassified_nodes() -> None:
    nodes = [
        _node("l40s", product="NVIDIA-L40S", memory_mib=46068, gpus=4),
        _node("v100", product="Tesla-V100-SXM2-16GB", memory_mib=16384, gpus=8),
        _node("mystery", product="NVIDIA-L4", memory_mib=23034, gpus=1, labels={"llamaops.io/gpu-class": "tpu"}),
    ]
    inventory = inventory_from_nodes(node_facts_from_manifest(n) for n in nodes)
    assert [c.name for c in inventory.gpu_classes] == ["gpu-48gb"]
    assert (
        inventory.gpu_classes[0].cost_per_gpu
        == next(c for c in DEFAULT_GPU_CLASSES if c.name == "gpu-48gb").cost_per_gpu
    )
    assert inventory.cpu is None


def test_custom_classes_from_configuration() -> None:
    classes = (GpuClass("a100-80gb", 80_000, 82_000, 81_920, 4.0), GpuClass("h200", 140_000, 145_000, 143_771, 8.0))
    nodes = [
        _node("a100", product="NVIDIA-A100-SXM4-80GB", memory_mib=81920, gpus=8),
        _node("h200", product="NVIDIA-H200", memory_mib=143771, gpus=8),
        _node("cpu", memory="32Gi"),
    ]
    inventory = inventory_from_nodes((node_facts_from_manifest(n) for n in nodes), classes, cpu_cost_per_replica=0.1)
    assert [c.name for c in inventory.gpu_classes] == ["a100-80gb", "h200"]
    assert [c.cost_per_gpu for c in inventory.gpu_classes] == [4.0, 8.0]
    assert inventory.cpu is not None
    assert inventory.cpu.cost_per_replica == 0.1


def test_sizing_on_a_cluster_with_small_l4_nodes_uses_what_the_nodes_offer() -> None:
    """Two-GPU L4 nodes cannot hold 70B awq at all; the plan moves to the H100 node."""
    nodes = [
        _node("l4-a", product="NVIDIA-L4", memory_mib=23034, gpus=2),
        _node("h100-a", product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, gpus=8),
    ]
    inventory = inventory_from_nodes(node_facts_from_manifest(n) for n in nodes)
    work = Workload(CATALOG["llama-3.1-70b"], "awq", 8192, 4)
    decision = decide(SizingRequest(work, "vllm"), inventory)
    assert decision.chosen is not None
    assert decision.chosen.gpu_class is not None
    assert decision.chosen.label == "1 x h100-80gb"
    assert all("gpu-24gb" not in c for c in decision.alternatives)


# Quantities as the apiserver writes them: it normalises to its own canonical form, so a node's
# allocatable 1000 GPUs comes back as `1k`, and hand-written --nodes files use every suffix.


def test_gpu_count_the_apiserver_writes_as_1k_is_a_thousand_gpus() -> None:
    manifest = _node("big", product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, gpus=8)
    manifest["status"]["allocatable"]["nvidia.com/gpu"] = "1k"
    facts = node_facts_from_manifest(manifest)
    assert facts.allocatable_gpus == 1000
    h100 = inventory_from_nodes([facts]).gpu_class("h100-80gb")
    assert h100 is not None
    assert h100.gpus_per_node == 1000


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("1e3", 1000),
        ("1E3", 1000),
        ("64Ei", 64 * 1024**6),
        ("2E", 2 * 10**18),
        ("1.5Gi", 3 * GIB // 2),
        ("9007199254740993", 2**53 + 1),  # above float precision: read exactly
        ("128974848000m", 128974848),  # the apiserver's form of a value with a fraction of a byte
        ("1500m", 1),  # whole bytes, rounded down
    ],
)
def test_memory_quantities_in_every_form_parse_exactly(quantity: str, expected: int) -> None:
    assert node_facts_from_manifest(_node("n1", memory=quantity)).allocatable_memory_bytes == expected


def test_numbers_from_a_hand_written_yaml_file_parse() -> None:
    manifest = _node("n1", product="NVIDIA-L4", memory_mib=23034, gpus=1)
    manifest["status"]["allocatable"].update({"nvidia.com/gpu": 4, "memory": 68719476736})
    facts = node_facts_from_manifest(manifest)
    assert (facts.allocatable_gpus, facts.allocatable_memory_bytes) == (4, 64 * GIB)


@pytest.mark.parametrize(
    ("resource", "quantity"),
    [("nvidia.com/gpu", "lots"), ("nvidia.com/gpu", "-1"), ("memory", "64 GiB"), ("memory", "64gi")],
)
def test_a_node_with_an_unreadable_quantity_is_skipped_with_the_reason(resource: str, quantity: str) -> None:
    """One odd node must not stop the operator from sizing on the others."""
    broken = _node("odd", product="NVIDIA-L4", memory_mib=23034, gpus=2)
    broken["status"]["allocatable"][resource] = quantity
    nodes = [broken, _node("l40s", product="NVIDIA-L40S", memory_mib=46068, gpus=4), _node("cpu", memory="32Gi")]
    inventory = inventory_from_nodes(node_facts_from_manifest(n) for n in nodes)
    assert [c.name for c in inventory.gpu_classes] == ["gpu-48gb"]
    assert inventory.cpu is not None
    assert (inventory.cpu.nodes, inventory.cpu.memory_bytes) == (1, 32 * GIB)
    (reason,) = inventory.skipped_nodes
    assert reason.startswith("node odd: ")
    assert resource in reason
    assert repr(quantity) in reason


def test_a_cpu_node_with_unreadable_memory_is_skipped_not_counted_as_empty() -> None:
    nodes = [_node("cpu-a", memory="lots"), _node("cpu-b", memory="16Gi")]
    inventory = inventory_from_nodes(node_facts_from_manifest(n) for n in nodes)
    assert inventory.cpu is not None
    assert (inventory.cpu.nodes, inventory.cpu.memory_bytes) == (1, 16 * GIB)
    assert inventory.skipped_nodes == (
        "node cpu-a: allocatable memory 'lots' is not a Kubernetes quantity "
        "(a number with an optional suffix: Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent such as e3)",
    )


@pytest.mark.parametrize("part", ["metadata", "status"])
def test_a_node_whose_parts_are_not_mappings_is_skipped(part: str) -> None:
    broken = _node("odd", gpus=1)
    broken[part] = ["not", "a", "mapping"]
    inventory = inventory_from_nodes([node_facts_from_manifest(broken), node_facts_from_manifest(_node("cpu"))])
    assert inventory.cpu is not None
    assert inventory.cpu.nodes == 1
    (reason,) = inventory.skipped_nodes
    assert f"{part} is a list" in reason
