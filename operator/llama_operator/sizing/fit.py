"""The fit decision: the cheapest placement whose memory model fits, or a refusal that says what would."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from llama_operator.sizing.gpu_classes import GIB, GpuClass, Inventory
from llama_operator.sizing.memory import (
    CPU_USABLE_FRACTION,
    MemoryEstimate,
    ServingEngine,
    Shape,
    Workload,
    estimate,
)
from llama_operator.sizing.quantization import GGUF_LADDER, QUANTIZATIONS, SAFETENSORS_LADDER

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
MIN_SUGGESTED_CONTEXT = 2048
MAX_SUGGESTED_NODES = 4


@dataclass(frozen=True)
class SizingRequest:
    """Everything the decision depends on, already resolved from the spec."""

    work: Workload
    engine: ServingEngine
    gpu_class: str = "auto"  # or a class name
    gpu_count: int | None = None  # None = auto
    cpu_only: bool = False
    max_nodes: int = 1
    gguf: bool = False


@dataclass(frozen=True)
class Candidate:
    """One placement and its memory arithmetic."""

    gpu_class: GpuClass | None  # None = CPU
    shape: Shape
    memory: MemoryEstimate
    cost: float

    @property
    def label(self) -> str:
        if self.gpu_class is None:
            return "cpu"
        if self.shape.nodes > 1:
            return f"{self.shape.nodes} nodes x {self.shape.gpus_per_node} x {self.gpu_class.name}"
        return f"{self.shape.gpus} x {self.gpu_class.name}"

    def describe(self) -> str:
        used = self.memory.total / GIB
        budget = self.memory.budget / GIB
        unit = "per replica" if self.gpu_class is None else "per GPU"
        return f"{self.label} (cost {self.cost:g}, {used:.1f} of {budget:.1f} GiB {unit})"


@dataclass(frozen=True)
class SizingDecision:
    request: SizingRequest
    chosen: Candidate | None
    reason: str
    alternatives: tuple[str, ...]
    closest: Candidate | None = None  # for a refusal: the largest placement tried

    @property
    def fits(self) -> bool:
        return self.chosen is not None


def _shards_evenly(request: SizingRequest, tp: int) -> bool:
    """vLLM and TGI shard attention and KV heads evenly (vLLM replicates KV heads when TP exceeds them);
    llama.cpp splits whole layers and takes any count."""
    model = request.work.model
    if request.engine == "llamacpp":
        return True
    if model.attention_heads % tp:
        return False
    return model.kv_heads % tp == 0 or (request.engine == "vllm" and tp % model.kv_heads == 0)


def _tensor_parallel_sizes(request: SizingRequest, gpus_per_node: int) -> Iterator[int]:
    for tp in TENSOR_PARALLEL_SIZES:
        if tp > gpus_per_node:
            return
        if _shards_evenly(request, tp):
            yield tp


def _gpu_shapes(request: SizingRequest, gpu_class: GpuClass) -> Iterator[Shape]:
    for tp in _tensor_parallel_sizes(request, gpu_class.gpus_per_node):
        yield Shape(gpus_per_node=tp)
    if request.engine != "vllm" or gpu_class.gpus_per_node < 1:
        return
    node_limit = request.max_nodes if gpu_class.nodes == 0 else min(request.max_nodes, gpu_class.nodes)
    full_node = gpu_class.gpus_per_node
    if not _shards_evenly(request, full_node):
        return
    for nodes in range(2, node_limit + 1):
        yield Shape(gpus_per_node=full_node, nodes=nodes)


def candidates(request: SizingRequest, inventory: Inventory) -> list[Candidate]:
    """Every placement the inventory and the request allow, fitting or not, cheapest first."""
    found: list[Candidate] = []
    if request.cpu_only:
        if request.engine == "llamacpp" and inventory.cpu is not None:
            memory = estimate(request.work, "llamacpp", Shape(gpus_per_node=0), None)
            budget = int(inventory.cpu.memory_bytes * CPU_USABLE_FRACTION)
            found.append(Candidate(None, Shape(0), replace(memory, budget=budget), inventory.cpu.cost_per_replica))
        return found
    for gpu_class in inventory.gpu_classes:
        if request.gpu_class not in ("auto", gpu_class.name):
            continue
        for shape in _gpu_shapes(request, gpu_class):
            if request.gpu_count is not None and shape.gpus != request.gpu_count:
                continue
            memory = estimate(request.work, request.engine, shape, gpu_class.memory_bytes)
            found.append(Candidate(gpu_class, shape, memory, round(gpu_class.cost_per_gpu * shape.gpus, 4)))
    return sorted(found, key=lambda c: (c.cost, c.shape.gpus, c.memory.budget, c.label))


def _best(request: SizingRequest, inventory: Inventory) -> Candidate | None:
    return next((c for c in candidates(request, inventory) if c.memory.fits), None)


def _cheaper_quantizations(request: SizingRequest) -> Iterator[str]:
    ladder = GGUF_LADDER if request.gguf else SAFETENSORS_LADDER
    current_bits = QUANTIZATIONS[request.work.quantization].bits_per_weight
    for name in ladder:
        if QUANTIZATIONS[name].bits_per_weight < current_bits:
            yield name


def _what_would_fit(request: SizingRequest, inventory: Inventory) -> list[str]:
    """Single changes to the request that produce a fitting plan, most conservative first."""
    suggestions: list[str] = []
    if request.gpu_class != "auto" or request.gpu_count is not None:
        relaxed = _best(replace(request, gpu_class="auto", gpu_count=None), inventory)
        if relaxed is not None:
            suggestions.append(f"placement gpuClass/gpuCount auto: {relaxed.describe()}")
    if request.engine == "vllm" and request.max_nodes < MAX_SUGGESTED_NODES and not request.cpu_only:
        for nodes in range(request.max_nodes + 1, MAX_SUGGESTED_NODES + 1):
            wider = _best(replace(request, max_nodes=nodes), inventory)
            if wider is not None:
                suggestions.append(f"placement.maxNodesPerReplica: {nodes}: {wider.describe()}")
                break
    for quantization in _cheaper_quantizations(request):
        smaller = _best(replace(request, work=replace(request.work, quantization=quantization)), inventory)
        if smaller is not None:
            suggestions.append(f"model.quantization: {quantization}: {smaller.describe()}")
            break
    context = request.work.context_length // 2
    while context >= MIN_SUGGESTED_CONTEXT:
        shorter = _best(replace(request, work=replace(request.work, context_length=context)), inventory)
        if shorter is not None:
            suggestions.append(f"model.contextLength: {context}: {shorter.describe()}")
            break
        context //= 2
    sequences = request.work.max_sequences // 2
    while sequences >= 1:
        fewer = _best(replace(request, work=replace(request.work, max_sequences=sequences)), inventory)
        if fewer is not None:
            suggestions.append(f"serving.maxConcurrentSequences: {sequences}: {fewer.describe()}")
            break
        sequences //= 2
    return suggestions


def _largest(tried: list[Candidate]) -> Candidate | None:
    return max(tried, key=lambda c: (c.memory.budget * max(c.shape.gpus, 1), -c.cost), default=None)


def _refusal_reason(request: SizingRequest, inventory: Inventory, largest: Candidate | None) -> str:
    work = request.work
    what = (
        f"{work.model.name} {work.quantization} with {work.context_length} tokens x "
        f"{work.max_sequences} sequences on {request.engine}"
    )
    if largest is None:
        if request.cpu_only:
            return f"{what}: no CPU nodes to place it on"
        known = ", ".join(c.name for c in inventory.gpu_classes) or "none"
        return f"{what}: no GPU class matches gpuClass={request.gpu_class} gpuCount={request.gpu_count or 'auto'} (classes: {known})"
    return (
        f"{what} does not fit: the largest placement, {largest.label}, needs "
        f"{largest.memory.total / GIB:.1f} GiB of {largest.memory.budget / GIB:.1f} GiB "
        f"{'per replica' if largest.gpu_class is None else 'per GPU'} "
        f"(weights {largest.memory.weights / GIB:.1f}, KV cache {largest.memory.kv_cache / GIB:.1f}, "
        f"overhead {largest.memory.overhead / GIB:.1f})"
    )


def decide(request: SizingRequest, inventory: Inventory) -> SizingDecision:
    """Pick the cheapest fitting placement; ties go to fewer GPUs, then the smaller card."""
    tried = candidates(request, inventory)
    fitting = [c for c in tried if c.memory.fits]
    if not fitting:
        largest = _largest(tried)
        return SizingDecision(
            request=request,
            chosen=None,
            reason=_refusal_reason(request, inventory, largest),
            alternatives=tuple(_what_would_fit(request, inventory)),
            closest=largest,
        )
    chosen = fitting[0]
    reason = f"cheapest fitting plan: {chosen.describe()}"
    others = tuple(f"also fits: {c.describe()}" for c in fitting[1:4])
    return SizingDecision(
        request=request,
        chosen=chosen,
        reason=reason,
        alternatives=others,
    )
