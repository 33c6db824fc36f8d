"""Engine flags that keep each engine inside the memory the sizing planned for."""

from __future__ import annotations

from llama_operator.sizing.memory import (
    LLAMACPP_UBATCH,
    VLLM_GPU_MEMORY_UTILIZATION,
    VLLM_MAX_BATCHED_TOKENS,
    ServingEngine,
    Shape,
    Workload,
    tgi_max_input_tokens,
    vllm_lora_rank,
    vllm_lora_slots,
)


def _vllm_args(work: Workload, shape: Shape) -> list[str]:
    args = [
        "--tensor-parallel-size", str(shape.gpus_per_node),
        "--pipeline-parallel-size", str(shape.nodes),
        "--max-model-len", str(work.context_length),
        "--max-num-seqs", str(work.max_sequences),
        "--max-num-batched-tokens", str(max(VLLM_MAX_BATCHED_TOKENS, work.max_sequences)),
        "--gpu-memory-utilization", f"{VLLM_GPU_MEMORY_UTILIZATION:.2f}",
        "--kv-cache-dtype", "fp8" if work.kv_dtype_bytes == 1 else "auto",
    ]  # fmt: skip
    if work.adapters:
        args += ["--max-loras", str(vllm_lora_slots(work.adapters)),
                 "--max-lora-rank", str(vllm_lora_rank(work.max_adapter_rank))]  # fmt: skip
    return args


def _tgi_args(work: Workload, shape: Shape) -> list[str]:
    max_input = tgi_max_input_tokens(work.context_length)
    return [
        "--num-shard", str(shape.gpus_per_node),
        "--max-input-tokens", str(max_input),
        "--max-total-tokens", str(work.context_length),
        "--max-batch-prefill-tokens", str(max_input),
        "--max-batch-total-tokens", str(work.tokens),
    ]  # fmt: skip


def llamacpp_http_threads(parallel: int) -> int:
    return min(256, max(4 * parallel, parallel + 8))


def _llamacpp_args(work: Workload, shape: Shape) -> list[str]:
    gpu_layers = work.model.layers + 1 if shape.gpus else 0  # + 1: the output layer
    args = [
        "--n-gpu-layers", str(gpu_layers),
        "--ctx-size", str(work.tokens),  # total over all slots
        "--parallel", str(work.max_sequences),
        "--ubatch-size", str(LLAMACPP_UBATCH),
        "--cache-type-k", "f16",
        "--cache-type-v", "f16",
        # Waiting requests hold an HTTP thread each: leave room for queued requests, /health and /metrics.
        "--threads-http", str(llamacpp_http_threads(work.max_sequences)),
    ]  # fmt: skip
    if shape.gpus > 1:
        args += ["--split-mode", "layer"]
    return args


def engine_sizing_args(engine: ServingEngine, work: Workload, shape: Shape) -> tuple[str, ...]:
    if engine == "vllm":
        return tuple(_vllm_args(work, shape))
    if engine == "tgi":
        return tuple(_tgi_args(work, shape))
    return tuple(_llamacpp_args(work, shape))
