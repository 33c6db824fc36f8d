"""llama.cpp's `llama-server` (GGUF, CPU or CUDA; adapters at start-up, scales at run time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_operator.engines.engine import HTTP_PORT_NAME, Engine, EngineContainer, RenderedFlags
from llama_operator.engines.pod import (
    adapter_path,
    engine_container,
    model_path,
)
from llama_operator.sizing.memory import LLAMACPP_UBATCH, Shape, Workload

if TYPE_CHECKING:  # base.py asks the registry, which imports this module
    from llama_operator.engines.base import EngineInput

PORT = 8080
QUEUE_METRIC = "llamacpp:requests_deferred"
RUNNING_METRIC = "llamacpp:requests_processing"
SERVER_BINARY = "/app/llama-server"
# What sets each flag the operator renders; engine.extraArgs may not repeat one, in any spelling llama-server reads.
RENDERED_FLAGS = RenderedFlags(
    sources={
        "--model": "spec.model.source",
        "--alias": "spec.serving.servedModelName",
        "--host": "the pod listens on its own address, behind its Service",
        "--port": "the port the probes, the Service and the metrics scrape use",
        "--metrics": "the autoscaler reads the engine's /metrics",
        "--n-gpu-layers": "spec.placement",
        "--ctx-size": "spec.model.contextLength",
        "--parallel": "spec.serving.maxConcurrentSequences",
        "--ubatch-size": "the batch the sizing planned compute buffers for",
        "--cache-type-k": "the f16 KV cache the sizing planned",
        "--cache-type-v": "the f16 KV cache the sizing planned",
        "--threads-http": "spec.serving.maxConcurrentSequences",
        "--split-mode": "spec.placement.gpuCount",
        "--lora": "spec.adapters",
        "--lora-init-without-apply": "spec.adapters",
        "--jinja": "spec.serving.toolCalling",
    },
    aliases={
        "-m": "--model",
        "-mu": "--model",
        "--model-url": "--model",
        "-hf": "--model",
        "-hfr": "--model",
        "--hf-repo": "--model",
        "-hff": "--model",
        "--hf-file": "--model",
        "-a": "--alias",
        "-ngl": "--n-gpu-layers",
        "--gpu-layers": "--n-gpu-layers",
        "-c": "--ctx-size",
        "-np": "--parallel",
        "-ub": "--ubatch-size",
        "-ctk": "--cache-type-k",
        "-ctv": "--cache-type-v",
        "-sm": "--split-mode",
        "--no-jinja": "--jinja",
    },
)


def llamacpp_http_threads(parallel: int) -> int:
    return min(256, max(4 * parallel, parallel + 8))


def sizing_args(work: Workload, shape: Shape) -> tuple[str, ...]:
    """Offload, slots and the KV cache over all of them, as the sizing planned them."""
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
    return tuple(args)


def image(inp: EngineInput) -> str:
    if inp.spec.engine.image:
        return inp.spec.engine.image
    return inp.images.llamacpp_cuda if inp.gpus_per_pod else inp.images.llamacpp_cpu


def server_args(inp: EngineInput) -> list[str]:
    args = [
        "--model", model_path(inp),
        "--alias", inp.served_model_name,
        "--host", "0.0.0.0",  # noqa: S104 - the pod's own address; the Service fronts it
        "--port", str(PORT),
        "--metrics",
        *sizing_args(inp.work, inp.shape),
    ]  # fmt: skip
    # Adapter ids follow this order (sorted by name); none applies unless a request asks for it.
    for adapter in sorted(inp.adapters, key=lambda a: a.name):
        args += ["--lora", adapter_path(inp, adapter.name, adapter.version)]
    if inp.adapters:
        args.append("--lora-init-without-apply")
    if inp.spec.serving.tool_calling:
        args.append("--jinja")
    return args + list(inp.spec.engine.extra_args)


def render_llamacpp_container(inp: EngineInput) -> EngineContainer:
    return engine_container(
        inp,
        image=image(inp),
        command=[SERVER_BINARY],
        args=server_args(inp),
        engine_env={},
        ports=[{"name": HTTP_PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
    )


ENGINE = Engine(
    name="llamacpp",
    sizing_args=sizing_args,
    container=render_llamacpp_container,
    image=image,
    model_format="gguf",
    runs_on_cpu=True,
    spans_nodes=False,
    picked_by_auto=True,
    queue_metric=QUEUE_METRIC,
    running_metric=RUNNING_METRIC,
    default_queue_target=1.0,
    # Adapters load at start-up (--lora); a request selects one by its id in the sorted names.
    smoke_style="lora-ids",
    supports_runtime_lora=False,
    rendered_flags=RENDERED_FLAGS,
)
