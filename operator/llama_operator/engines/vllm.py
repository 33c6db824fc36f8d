"""vLLM (`vllm serve`, OpenAI API on :8000, /metrics on the same port, adapters at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_operator.engines.engine import HTTP_PORT_NAME, Engine, EngineContainer, RenderedFlags
from llama_operator.engines.pod import (
    HF_ENDPOINT_ENV,
    adapter_path,
    engine_container,
    model_path,
)
from llama_operator.sizing.memory import (
    VLLM_GPU_MEMORY_UTILIZATION,
    VLLM_MAX_BATCHED_TOKENS,
    Shape,
    Workload,
    vllm_lora_rank,
    vllm_lora_slots,
)

if TYPE_CHECKING:  # base.py asks the registry, which imports this module
    from llama_operator.engines.base import EngineInput

PORT = 8000
QUEUE_METRIC = "vllm:num_requests_waiting"
RUNNING_METRIC = "vllm:num_requests_running"
TOOL_PARSERS = {"llama3": "llama3_json", "llama4": "llama4_pythonic"}
DTYPE_FLAGS = {"none": ["--dtype", "auto"], "bf16": ["--dtype", "bfloat16"], "fp16": ["--dtype", "float16"]}
# fp8 on a bf16 checkpoint quantizes at load; int8/int4/awq/gptq checkpoints declare their method and
# vLLM picks the fastest kernel for it (forcing `awq` would disable the Marlin kernels).
QUANTIZATION_FLAGS = {"fp8": ["--quantization", "fp8"]}
# What sets each flag the operator renders; engine.extraArgs may not repeat one (the last would win in argparse).
RENDERED_FLAGS = RenderedFlags(
    sources={
        "--served-model-name": "spec.serving.servedModelName",
        "--host": "the pod listens on its own address, behind its Service",
        "--port": "the port the probes, the Service and the metrics scrape use",
        "--dtype": "spec.model.quantization",
        "--quantization": "spec.model.quantization",
        "--tensor-parallel-size": "spec.placement.gpuCount",
        "--pipeline-parallel-size": "spec.placement.maxNodesPerReplica",
        "--max-model-len": "spec.model.contextLength",
        "--max-num-seqs": "spec.serving.maxConcurrentSequences",
        "--max-num-batched-tokens": "the batch the sizing planned, from spec.serving.maxConcurrentSequences",
        "--gpu-memory-utilization": "the share of each GPU the sizing planned for weights, KV cache and overhead",
        "--kv-cache-dtype": "spec.model.kvCacheDtype",
        "--max-loras": "spec.adapters",
        "--max-lora-rank": "spec.adapters[].rank",
        "--enable-lora": "spec.adapters",
        "--lora-modules": "spec.adapters",
        "--enable-auto-tool-choice": "spec.serving.toolCalling",
        "--tool-call-parser": "spec.serving.toolCalling",
        "--distributed-executor-backend": "spec.placement.maxNodesPerReplica",
    },
    aliases={
        "-tp": "--tensor-parallel-size",
        "-pp": "--pipeline-parallel-size",
        "-q": "--quantization",
        "--device-memory-utilization": "--gpu-memory-utilization",
        "--no-enable-lora": "--enable-lora",
        "--no-enable-auto-tool-choice": "--enable-auto-tool-choice",
    },
    abbreviations=True,  # vLLM's parser is argparse with allow_abbrev
)


def sizing_args(work: Workload, shape: Shape) -> tuple[str, ...]:
    """Parallelism, context, sequences, batch and memory share exactly as the sizing planned them."""
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
    return tuple(args)


def image(inp: EngineInput) -> str:
    return inp.spec.engine.image or inp.images.vllm


def serve_args(inp: EngineInput) -> list[str]:
    spec = inp.spec
    quantization = spec.model.quantization
    args = [
        model_path(inp),
        "--served-model-name", inp.served_model_name,
        "--host", "0.0.0.0",  # noqa: S104 - the pod's own address; the Service fronts it
        "--port", str(PORT),
        *DTYPE_FLAGS.get(quantization, []),
        *QUANTIZATION_FLAGS.get(quantization, []),
        *sizing_args(inp.work, inp.shape),
    ]  # fmt: skip
    if inp.adapters:
        args += ["--enable-lora"]
    if inp.pod_adapters:  # runtime-loaded adapters come through the API instead
        # One flag, every adapter after it: vLLM keeps only the last of repeated --lora-modules.
        args += ["--lora-modules", *(f"{a.name}={adapter_path(inp, a.name, a.version)}" for a in inp.pod_adapters)]
    if spec.serving.tool_calling:
        family = inp.work.model.family
        args += ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSERS.get(family, "llama3_json")]
    if inp.nodes > 1:
        args += ["--distributed-executor-backend", "ray"]
    return args + list(spec.engine.extra_args)


def render_vllm_container(inp: EngineInput) -> EngineContainer:
    engine_env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # no telemetry from a customer's cluster
    if inp.adapters:
        engine_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
        engine_env[HF_ENDPOINT_ENV] = inp.hub_endpoint  # hub adapters load at run time: vLLM downloads them
    return engine_container(
        inp,
        image=image(inp),
        command=["vllm", "serve"],
        args=serve_args(inp),
        engine_env=engine_env,
        ports=[{"name": HTTP_PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
    )


ENGINE = Engine(
    name="vllm",
    sizing_args=sizing_args,
    container=render_vllm_container,
    image=image,
    model_format="safetensors",
    runs_on_cpu=False,
    spans_nodes=True,  # Ray over a LeaderWorkerSet, pipeline stages across nodes
    picked_by_auto=True,
    queue_metric=QUEUE_METRIC,
    running_metric=RUNNING_METRIC,
    default_queue_target=2.0,
    smoke_style="model-name",  # an unknown adapter name is a 404
    # POST /v1/load_lora_adapter with a hub id: vLLM downloads it; other sources need the pod's init containers.
    supports_runtime_lora=True,
    runtime_lora_sources=("hf://",),
    rendered_flags=RENDERED_FLAGS,
)
