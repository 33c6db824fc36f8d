"""Per-engine memory model: weights + KV cache + engine overhead, per GPU (or per CPU replica).

Every number is derived from the model's facts and the plan's shape; the parts are reported so a
user can check the arithmetic in `status.sizing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from llama_operator.sizing.catalog import ModelFacts
from llama_operator.sizing.quantization import embedding_bytes, weight_bytes

ServingEngine = Literal["vllm", "tgi", "llamacpp"]

MIB = 1024**2
GIB = 1024**3

CUDA_CONTEXT_BYTES = 512 * MIB  # CUDA context and cuBLAS/cuDNN workspaces of one process
NCCL_BYTES = 768 * MIB  # NCCL communicator buffers per GPU when a replica spans GPUs
VLLM_CUDA_GRAPH_BYTES = 512 * MIB  # captured decode graphs
TGI_CUDA_GRAPH_BYTES = 256 * MIB  # TGI captures graphs for batch sizes 1..32
LLAMACPP_CUDA_CONTEXT_BYTES = 384 * MIB
CPU_PROCESS_BYTES = 256 * MIB  # llama-server's own heap, tokenizer and HTTP threads

# The share of a card each engine lets itself use. vLLM reserves --gpu-memory-utilization x card;
# TGI fills 0.9 of what is free after its warm-up; llama.cpp allocates exactly and leaves the rest.
VLLM_GPU_MEMORY_UTILIZATION = 0.90
TGI_USABLE_FRACTION = 0.90
LLAMACPP_USABLE_FRACTION = 0.95
CPU_USABLE_FRACTION = 0.85  # leave room for the kubelet, the page cache and the OS on a CPU node

VLLM_MAX_BATCHED_TOKENS = 8192  # rendered as --max-num-batched-tokens so the profile run matches
LLAMACPP_UBATCH = 512  # llama-server's default physical batch
ACTIVATION_BYTES = 2  # bf16 activations
LOGIT_BYTES = 4  # fp32 logits in the sampler
LORA_BYTES = 2  # bf16/f16 adapter weights
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_LORA_RANK = 16
MAX_VLLM_LORA_SLOTS = 8


@dataclass(frozen=True)
class Workload:
    """What must fit, independent of where it is placed."""

    model: ModelFacts
    quantization: str
    context_length: int
    max_sequences: int
    kv_dtype_bytes: int = 2
    adapters: int = 0
    max_adapter_rank: int = DEFAULT_LORA_RANK

    @property
    def tokens(self) -> int:
        """KV cache is sized so every sequence can hold a full context."""
        return self.context_length * self.max_sequences


@dataclass(frozen=True)
class Shape:
    """How one replica is laid out: GPUs per node (tensor parallel) x nodes (pipeline stages); 0 GPUs = CPU."""

    gpus_per_node: int
    nodes: int = 1

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int
    budget: int  # what the engine may use on one GPU (or one CPU replica)
    host_bytes: int  # memory request of the pod (per node)
    overhead_parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts for --max-lora-rank that holds `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def vllm_lora_slots(adapters: int) -> int:
    return max(1, min(adapters, MAX_VLLM_LORA_SLOTS))


def tgi_max_input_tokens(context_length: int) -> int:
    """Leave half the context, at most 2048 tokens, for the answer (TGI needs max input < max total)."""
    return context_length - min(context_length // 2, 2048)


def kv_cache_bytes_per_gpu(work: Workload, shape: Shape) -> int:
    """Layers split over pipeline stages, KV heads over tensor-parallel ranks (replicated when TP > heads)."""
    gpus_per_node = max(shape.gpus_per_node, 1)
    layers = math.ceil(work.model.layers / shape.nodes)
    kv_heads = math.ceil(work.model.kv_heads / gpus_per_node)
    return 2 * layers * kv_heads * work.model.head_dim * work.kv_dtype_bytes * work.tokens


def _activation_bytes(work: Workload, batched_tokens: int, tensor_parallel: int) -> int:
    model = work.model
    per_token = 4 * model.hidden_size + 3 * model.intermediate_size // tensor_parallel
    logits = work.max_sequences * model.vocab_size * LOGIT_BYTES
    return batched_tokens * per_token * ACTIVATION_BYTES + logits


def _lora_bytes(work: Workload, slots: int, rank: int, gpus: int) -> int:
    if work.adapters == 0:
        return 0
    return slots * rank * work.model.lora_parameters_per_rank() * LORA_BYTES // gpus


def _vllm(work: Workload, shape: Shape, card_bytes: int) -> MemoryEstimate:
    gpus = shape.gpus
    parts = {
        "cudaContext": CUDA_CONTEXT_BYTES,
        "activations": _activation_bytes(work, VLLM_MAX_BATCHED_TOKENS, shape.gpus_per_node),
        "cudaGraphs": VLLM_CUDA_GRAPH_BYTES,
        "lora": _lora_bytes(work, vllm_lora_slots(work.adapters), vllm_lora_rank(work.max_adapter_rank), gpus),
        "nccl": NCCL_BYTES if gpus > 1 else 0,
    }
    weights = weight_bytes(work.model, work.quantization) // gpus
    return MemoryEstimate(
        weights=weights,
        kv_cache=kv_cache_bytes_per_gpu(work, shape),
        overhead=sum(parts.values()),
        budget=int(card_bytes * VLLM_GPU_MEMORY_UTILIZATION),
        host_bytes=_gpu_host_bytes(weights * shape.gpus_per_node),
        overhead_parts=parts,
    )


def _tgi(work: Workload, shape: Shape, card_bytes: int) -> MemoryEstimate:
    gpus = shape.gpus
    prefill_tokens = tgi_max_input_tokens(work.context_length)
    parts = {
        "cudaContext": CUDA_CONTEXT_BYTES,
        "prefillWarmup": _activation_bytes(work, prefill_tokens, shape.gpus_per_node),
        "cudaGraphs": TGI_CUDA_GRAPH_BYTES,
        "lora": _lora_bytes(work, work.adapters, work.max_adapter_rank, gpus),
        "nccl": NCCL_BYTES if gpus > 1 else 0,
    }
    weights = weight_bytes(work.model, work.quantization) // gpus
    return MemoryEstimate(
        weights=weights,
        kv_cache=kv_cache_bytes_per_gpu(work, shape),
        overhead=sum(parts.values()),
        budget=int(card_bytes * TGI_USABLE_FRACTION),
        host_bytes=_gpu_host_bytes(weights * shape.gpus_per_node),
        overhead_parts=parts,
    )


def _llamacpp_compute_bytes(work: Workload) -> int:
    model = work.model
    return LLAMACPP_UBATCH * (model.vocab_size + 4 * model.hidden_size + 3 * model.intermediate_size) * 4


def _llamacpp(work: Workload, shape: Shape, card_bytes: int | None) -> MemoryEstimate:
    all_weights = weight_bytes(work.model, work.quantization)
    host_embedding = 0 if work.model.tied_embeddings else embedding_bytes(work.model, work.quantization)
    adapters = _lora_bytes(work, work.adapters, work.max_adapter_rank, 1)
    if card_bytes is None:  # CPU: everything lives in the pod's memory
        parts = {"compute": _llamacpp_compute_bytes(work), "process": CPU_PROCESS_BYTES, "lora": adapters}
        kv = kv_cache_bytes_per_gpu(work, Shape(gpus_per_node=1))
        overhead = sum(parts.values())
        return MemoryEstimate(
            weights=all_weights,
            kv_cache=kv,
            overhead=overhead,
            budget=0,  # set by the caller from the CPU node's memory
            host_bytes=all_weights + kv + overhead,
            overhead_parts=parts,
        )
    # GPUs split the layers (llama.cpp's layer split); the untied token embedding stays on the host.
    gpus = shape.gpus
    parts = {
        "cudaContext": LLAMACPP_CUDA_CONTEXT_BYTES,
        "compute": _llamacpp_compute_bytes(work),
        "lora": adapters // gpus,
    }
    layer_split = Shape(gpus_per_node=1, nodes=gpus)  # each GPU holds whole layers with all KV heads
    return MemoryEstimate(
        weights=(all_weights - host_embedding) // gpus,
        kv_cache=kv_cache_bytes_per_gpu(work, layer_split),
        overhead=sum(parts.values()),
        budget=int(card_bytes * LLAMACPP_USABLE_FRACTION),
        host_bytes=host_embedding + CPU_PROCESS_BYTES + 2 * GIB,
        overhead_parts=parts,
    )


def _gpu_host_bytes(weights_on_node: int) -> int:
    """Pod memory request for vLLM/TGI: loading streams shards through host memory (half the node's
    weights at most at once) plus 8 GiB for the server, tokenizer workers and vLLM's CPU swap space."""
    return 8 * GIB + weights_on_node // 2


def estimate(work: Workload, engine: ServingEngine, shape: Shape, card_bytes: int | None) -> MemoryEstimate:
    """Memory per GPU of `engine` serving `work` laid out as `shape` on cards of `card_bytes` (None: CPU)."""
    if engine == "llamacpp":
        return _llamacpp(work, shape, card_bytes)
    if card_bytes is None:
        raise ValueError(f"{engine} needs GPUs; only llama.cpp runs on CPU")
    if engine == "vllm":
        return _vllm(work, shape, card_bytes)
    return _tgi(work, shape, card_bytes)
