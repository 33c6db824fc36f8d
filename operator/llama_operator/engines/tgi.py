"""Text Generation Inference (`text-generation-launcher`; adapters only at start-up)."""

from __future__ import annotations

from llama_operator.engines.base import HTTP_PORT_NAME, EngineContainer, EngineInput
from llama_operator.engines.pod import (
    adapter_path,
    engine_container,
    model_path,
)

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


def image(inp: EngineInput) -> str:
    return inp.spec.engine.image or inp.images.tgi


def launcher_args(inp: EngineInput) -> list[str]:
    args = [
        "--model-id", model_path(inp),
        "--hostname", "0.0.0.0",  # noqa: S104 - the pod's own address; the Service fronts it
        "--port", str(PORT),
        "--prometheus-port", str(PROMETHEUS_PORT),
        *QUANTIZE_FLAGS.get(inp.spec.model.quantization, []),
        *inp.decision.engine_args,
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
        queue_metric=QUEUE_METRIC,
        running_metric=RUNNING_METRIC,
    )
