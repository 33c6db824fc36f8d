"""Text Generation Inference (`text-generation-launcher`; adapters only at start-up)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_operator.engines.engine import HTTP_PORT_NAME, Engine, EngineContainer, RenderedFlags
from llama_operator.engines.pod import (
    adapter_path,
    engine_container,
    model_path,
)
from llama_operator.sizing.memory import Shape, Workload, tgi_max_input_tokens

if TYPE_CHECKING:  # base.py asks the registry, which imports this module
    from llama_operator.engines.base import EngineInput

PORT = 8080
# The launcher also binds a Prometheus port (default 9000) and fails if it is taken: render it apart.
PROMETHEUS_PORT = 9000
QUEUE_METRIC = "tgi_queue_size"
RUNNING_METRIC = "tgi_batch_current_size"
QUANTIZE_FLAGS = {
    "fp8": ["--quantize", "fp8"],
    "awq": ["--quantize", "awq"],
    "gptq": ["--quantize", "gptq"],
    "int8": ["--quantize", "eetq"],
    "int4": ["--quantize", "compressed-tensors"],
    "bf16": ["--dtype", "bfloat16"],
    "fp16": ["--dtype", "float16"],
}
# What sets each flag the operator renders; engine.extraArgs may not repeat one (clap refuses a second one).
RENDERED_FLAGS = RenderedFlags(
    sources={
        "--model-id": "spec.model.source",
        "--hostname": "the pod listens on its own address, behind its Service",
        "--port": "the port the probes and the Service use",
        "--prometheus-port": "the launcher's metrics port, kept apart from the API port",
        "--quantize": "spec.model.quantization",
        "--dtype": "spec.model.quantization",
        "--num-shard": "spec.placement.gpuCount",
        "--max-input-tokens": "spec.model.contextLength",
        "--max-total-tokens": "spec.model.contextLength",
        "--max-batch-prefill-tokens": "spec.model.contextLength",
        "--max-batch-total-tokens": "spec.model.contextLength and spec.serving.maxConcurrentSequences",
    },
)
# The exception to the `restricted` Pod Security Standard this engine needs (pod.engine_container). Since
# 3.1 the image installs its Python with `uv python install` under /root/.local/share/uv (mode 700 /root),
# and the launcher links libpython from there: any other uid fails before the launcher starts (upstream
# issue huggingface/text-generation-inference#3082; pull request #3197 would move it). As root, its
# caches follow the image's HOME (/root) and HF_HOME (/data), on a writable root filesystem.
RUNS_AS_ROOT = "the TGI image installs its Python under /root, readable by root only (text-generation-inference#3082)"


def sizing_args(work: Workload, shape: Shape) -> tuple[str, ...]:
    """Shards and token bounds: TGI fills what is free with KV, so the totals bound what it admits."""
    max_input = tgi_max_input_tokens(work.context_length)
    return (
        "--num-shard", str(shape.gpus_per_node),
        "--max-input-tokens", str(max_input),
        "--max-total-tokens", str(work.context_length),
        "--max-batch-prefill-tokens", str(max_input),
        "--max-batch-total-tokens", str(work.tokens),
    )  # fmt: skip


def image(inp: EngineInput) -> str:
    return inp.spec.engine.image or inp.images.tgi


def launcher_args(inp: EngineInput) -> list[str]:
    args = [
        "--model-id", model_path(inp),
        "--hostname", "0.0.0.0",  # noqa: S104 - the pod's own address; the Service fronts it
        "--port", str(PORT),
        "--prometheus-port", str(PROMETHEUS_PORT),
        *QUANTIZE_FLAGS.get(inp.spec.model.quantization, []),
        *sizing_args(inp.work, inp.shape),
    ]  # fmt: skip
    return args + list(inp.spec.engine.extra_args)


def render_tgi_container(inp: EngineInput) -> EngineContainer:
    engine_env = {"USAGE_STATS": "off"}  # no telemetry from inside a customer's cluster
    if inp.adapters:
        engine_env["LORA_ADAPTERS"] = ",".join(f"{a.name}={adapter_path(inp, a.name, a.version)}" for a in inp.adapters)
    return engine_container(
        inp,
        image=image(inp),
        command=["text-generation-launcher"],
        args=launcher_args(inp),
        engine_env=engine_env,
        ports=[
            {"name": HTTP_PORT_NAME, "containerPort": PORT, "protocol": "TCP"},
            {"name": "prometheus", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"},
        ],
        runs_as_root=RUNS_AS_ROOT,
    )


ENGINE = Engine(
    name="tgi",
    sizing_args=sizing_args,
    container=render_tgi_container,
    image=image,
    model_format="safetensors",
    runs_on_cpu=False,
    spans_nodes=False,
    picked_by_auto=False,  # only when asked
    queue_metric=QUEUE_METRIC,
    running_metric=RUNNING_METRIC,
    default_queue_target=2.0,
    # An unknown adapter id silently runs the base model: the reply must differ from the base model's.
    smoke_style="model-name-verify-differs",
    supports_runtime_lora=False,  # LORA_ADAPTERS at start-up only
    rendered_flags=RENDERED_FLAGS,
)
