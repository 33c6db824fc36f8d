"""placement.deviceAllocation: DRA rendered: a ResourceClaimTemplate asking DeviceClass gpu.nvidia.com for the
plan's GPU count with at least the plan's memory per device, claimed by every serving pod instead of
nvidia.com/gpu limits and the GPU Feature Discovery node affinity."""

from __future__ import annotations

import re
from typing import Any

import pytest

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.engines.devices import CLAIM_TEMPLATES, DEVICE_CLASS, device_memory_mib
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.reconcile import OperatorContext, dra_problem
from llama_operator.render import Owner, RenderOptions, render
from llama_operator.sizing.gpu_classes import (
    GPU_RESOURCE,
    LABEL_MEMORY_MIB,
    MIB,
    NodeFacts,
    inventory_from_nodes,
    slice_gpus_from_manifest,
    with_slice_gpus,
)
from llama_operator_dev.dra import resource_slices
from llama_operator_dev.pools import load_node_pools
from tests.unit.render_cases import INVENTORY, LLAMA_8B

Manifest = dict[str, Any]
LLAMA_405B = {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"}
GGUF_CPU = {
    "model": {"catalogName": "llama-3.2-3b", "source": "hf://o/r/m.gguf", "format": "gguf", "quantization": "q4_k_m"},
    "placement": {"cpuOnly": True},
}


def body(model: dict[str, Any] = LLAMA_8B, **placement: Any) -> dict[str, Any]:
    return {"model": {**model, "contextLength": 8192}, "engine": {"type": "vllm"}, "placement": placement}


def children(spec_body: dict[str, Any], **options: Any) -> list[Manifest]:
    spec = parse_spec(spec_body)
    decision = plan(spec, "chat", INVENTORY)
    return render("chat", "team-a", spec, decision, options=RenderOptions(**options), owner=Owner("chat", "uid-1"))


def of_kind(found: list[Manifest], kind: str) -> list[Manifest]:
    return [c for c in found if c["kind"] == kind]


def pod_templates(found: list[Manifest]) -> list[Manifest]:
    workload = next(c for c in found if c["kind"] in ("Deployment", "LeaderWorkerSet"))
    if workload["kind"] == "LeaderWorkerSet":
        lws = workload["spec"]["leaderWorkerTemplate"]
        return [lws["leaderTemplate"], lws["workerTemplate"]]
    return [workload["spec"]["template"]]


def request_of(template: Manifest) -> Manifest:
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    exactly: Manifest = request["exactly"]
    return exactly


def memory_floor_mib(template: Manifest) -> int:
    expressions = [s["cel"]["expression"] for s in request_of(template)["selectors"]]
    found = [re.search(r"memory\.compareTo\(quantity\('(\d+)Mi'\)\) >= 0", e) for e in expressions]
    (floor,) = [int(m.group(1)) for m in found if m]
    return floor


def test_the_claim_asks_for_the_plans_gpus_by_memory_and_every_pod_claims_it() -> None:
    found = children(body(deviceAllocation="DRA"))
    (template,) = of_kind(found, "ResourceClaimTemplate")
    assert found[0] is template  # applied before the workload whose pods name it
    assert template["apiVersion"] == "resource.k8s.io/v1"
    assert template["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    request = request_of(template)
    decision = plan(parse_spec(body(deviceAllocation="DRA")), "chat", INVENTORY)
    assert decision.chosen is not None
    assert request["deviceClassName"] == DEVICE_CLASS
    assert request["allocationMode"] == "ExactCount"
    assert request["count"] == decision.chosen.shape.gpus_per_node
    assert memory_floor_mib(template) == device_memory_mib(decision)
    for pod in pod_templates(found):
        spec = pod["spec"]
        assert spec["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": template["metadata"]["name"]}]
        (container,) = spec["containers"]
        assert container["resources"]["claims"] == [{"name": "gpus"}]
        assert GPU_RESOURCE not in container["resources"]["requests"]
        assert GPU_RESOURCE not in container["resources"]["limits"]
        assert LABEL_MEMORY_MIB not in str(spec.get("affinity", {}))  # no GPU Feature Discovery labels needed
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_the_device_plugin_is_the_default_and_renders_no_claim() -> None:
    found = children(body())
    assert of_kind(found, "ResourceClaimTemplate") == []
    (pod,) = pod_templates(found)
    assert "resourceClaims" not in pod["spec"]
    assert GPU_RESOURCE in pod["spec"]["containers"][0]["resources"]["limits"]
    assert LABEL_MEMORY_MIB in str(pod["spec"]["affinity"])


def test_the_operators_default_applies_unless_the_spec_says() -> None:
    assert len(of_kind(children(body(), device_allocation="DRA"), "ResourceClaimTemplate")) == 1
    explicit = children(body(deviceAllocation="DevicePlugin"), device_allocation="DRA")
    assert of_kind(explicit, "ResourceClaimTemplate") == []


def test_a_cpu_plan_claims_no_device() -> None:
    found = children(GGUF_CPU, device_allocation="DRA")
    assert of_kind(found, "ResourceClaimTemplate") == []
    assert "resourceClaims" not in pod_templates(found)[0]["spec"]


@pytest.mark.parametrize(
    ("model", "placement"),
    [
        (LLAMA_8B, {}),
        (LLAMA_8B, {"gpuClass": "h100-80gb"}),
        (LLAMA_405B, {"maxNodesPerReplica": 2}),
    ],
)
def test_a_device_with_the_floors_memory_holds_the_plan_and_the_chosen_class_passes(
    model: dict[str, Any], placement: dict[str, Any]
) -> None:
    """The floor is what the engine uses at its utilisation: its budget on such a device holds the plan's
    total, one MiB less does not, and the class the sizing chose is at or above it."""
    decision = plan(parse_spec(body(model, deviceAllocation="DRA", **placement)), "chat", INVENTORY)
    chosen = decision.chosen
    assert chosen is not None
    assert chosen.gpu_class is not None
    floor = device_memory_mib(decision)
    fraction = chosen.memory.budget / chosen.gpu_class.memory_bytes
    assert floor * MIB * fraction >= chosen.memory.total
    assert (floor - 1) * MIB * fraction < chosen.memory.total
    assert chosen.memory.total < floor * MIB <= chosen.gpu_class.memory_bytes


def test_a_multi_node_replica_claims_for_the_leader_and_each_worker() -> None:
    found = children(body(LLAMA_405B, deviceAllocation="DRA", maxNodesPerReplica=2))
    (template,) = of_kind(found, "ResourceClaimTemplate")
    leader, worker = pod_templates(found)
    assert leader["spec"]["resourceClaims"] == worker["spec"]["resourceClaims"]
    assert request_of(template)["count"] == 8


def test_product_names_become_an_attribute_selector() -> None:
    found = children(body(deviceAllocation="DRA", productNames=["NVIDIA L4", "NVIDIA L40S"]))
    (template,) = of_kind(found, "ResourceClaimTemplate")
    expressions = [s["cel"]["expression"] for s in request_of(template)["selectors"]]
    assert "device.attributes['gpu.nvidia.com'].productName in ['NVIDIA L4', 'NVIDIA L40S']" in expressions


def test_product_names_cannot_break_out_of_the_cel_literal() -> None:
    with pytest.raises(InvalidSpecError, match=r"productNames"):
        parse_spec(body(deviceAllocation="DRA", productNames=["L4'] || true || ['"]))
    with pytest.raises(InvalidSpecError, match=r"placement.productNames needs placement.deviceAllocation: DRA"):
        parse_spec(body(productNames=["NVIDIA L4"]))


def test_a_new_claim_is_a_new_template_and_the_same_claim_the_same_name() -> None:
    """A ResourceClaimTemplate's spec cannot change: its name follows its content, and the pods roll over."""
    first = of_kind(children(body(deviceAllocation="DRA")), "ResourceClaimTemplate")[0]
    again = of_kind(children(body(deviceAllocation="DRA")), "ResourceClaimTemplate")[0]
    other = of_kind(children(body(deviceAllocation="DRA", productNames=["NVIDIA L4"])), "ResourceClaimTemplate")[0]
    assert first == again
    assert first["metadata"]["name"].startswith("chat-gpus-")
    assert other["metadata"]["name"] != first["metadata"]["name"]


def test_dra_without_the_api_says_what_to_install() -> None:
    spec = parse_spec(body(deviceAllocation="DRA"))
    decision = plan(spec, "chat", INVENTORY)
    without = OperatorContext(kube=None, config=OperatorConfig(), watched_crds=frozenset())  # type: ignore[arg-type]
    problem = dra_problem(without, spec, decision)
    assert problem is not None
    assert "resource.k8s.io/v1" in problem
    assert "dra.enabled: true" in problem
    assert "placement.deviceAllocation: DevicePlugin" in problem
    with_api = OperatorContext(kube=None, config=OperatorConfig(), watched_crds=frozenset({CLAIM_TEMPLATES}))  # type: ignore[arg-type]
    assert dra_problem(with_api, spec, decision) is None
    assert dra_problem(without, parse_spec(body()), plan(parse_spec(body()), "chat", INVENTORY)) is None


def test_gpus_only_the_dra_driver_publishes_are_inventory() -> None:
    """A node without nvidia.com/gpu (no device plugin) whose ResourceSlice lists 8 H100s: sizing sees an
    h100-80gb node with 8 GPUs of the slice's memory; a node the device plugin reports keeps its own facts."""
    pools = [p for p in load_node_pools() if p.name in ("h100-80gb", "gpu-24gb")]
    slices = [s for s in (slice_gpus_from_manifest(m) for m in resource_slices(pools)) if s is not None]
    assert {(s.node, s.count, s.memory_mib, s.product) for s in slices} >= {
        ("kwok-h100-80gb-0", 8, 81_559, "NVIDIA H100 80GB HBM3"),
        ("kwok-gpu-24gb-1", 4, 23_034, "NVIDIA L4"),
    }
    dra_only = NodeFacts("kwok-h100-80gb-0", {}, allocatable_gpus=0, allocatable_memory_bytes=2 * 1024**4)
    plugin = NodeFacts("kwok-gpu-24gb-1", {LABEL_MEMORY_MIB: "23034"}, allocatable_gpus=2, allocatable_memory_bytes=1)
    merged = {n.name: n for n in with_slice_gpus([dra_only, plugin], slices)}
    assert merged["kwok-h100-80gb-0"].allocatable_gpus == 8
    assert merged["kwok-h100-80gb-0"].labels[LABEL_MEMORY_MIB] == "81559"
    assert merged["kwok-gpu-24gb-1"] == plugin
    inventory = inventory_from_nodes(merged.values())
    h100 = inventory.gpu_class("h100-80gb")
    assert h100 is not None
    assert (h100.gpus_per_node, h100.memory_mib, h100.nodes) == (8, 81_559, 1)
    assert inventory_from_nodes([dra_only]).gpu_classes == ()  # without the slice: a CPU node


def test_slices_of_other_drivers_and_non_gpu_devices_are_not_gpus() -> None:
    (h100,) = [p for p in load_node_pools() if p.name == "h100-80gb"]
    manifest = resource_slices([h100])[0]
    other = {**manifest, "spec": {**manifest["spec"], "driver": "dra.example.com"}}
    assert slice_gpus_from_manifest(other) is None
    devices = [{**d, "attributes": {**d["attributes"], "type": {"string": "mig"}}} for d in manifest["spec"]["devices"]]
    assert slice_gpus_from_manifest({**manifest, "spec": {**manifest["spec"], "devices": devices}}) is None
    broken = {**manifest, "spec": {**manifest["spec"], "devices": "not a list"}}
    assert slice_gpus_from_manifest(broken) is None
