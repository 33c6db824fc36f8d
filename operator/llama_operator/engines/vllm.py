"""vLLM (`vllm serve`, OpenAI API on :8000, /metrics on the same port, adapters at run time)."""

from __future__ import annotations

from llama_operator.engines.base import HTTP_PORT_NAME, EngineContainer, EngineInput
from llama_operator.engines.pod import (
    adapter_path,
    engine_container,
    model_path,
)

PORT = 8000
QUEUE_METRIC = "vllm:num_requests_waiting"
RUNNING_METRIC = "vllm:num_requests_running"
TOOL_PARSERS = {"llama3": "llama3_json", "llama4": "llama4_pythonic"}
DTYPE_FLAGS = {"none": ["--dtype", "auto"], "bf16": ["--dtype", "bfloat16"], "fp16": ["--dtype", "float16"]}
# fp8 on a bf16 checkpoint quantizes at load; int8/int4/awq/gptq checkpoints declare their method and
# vLLM picks the fastest kernel for it (forcing `awq` would disable the Marlin kernels).
QUANTIZATION_FLAGS = {"fp8": ["--quantization", "fp8"]}


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
        *inp.decision.engine_args,
    ]  # fmt: skip
    if inp.adapters:
        args += ["--enable-lora"]
    if inp.pod_adapters:  # runtime-loaded adapters come through the API instead
        # One flag, every adapter after it: vLLM keeps only the last of repeated --lora-modules.
        args += ["--lora-modules", *(f"{a.name}={adapter_path(inp, a.name, a.version)}" for a in inp.pod_adapters)]
    if spec.serving.tool_calling:
        family = inp.decision.request.work.model.family
        args += ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSERS.get(family, "llama3_json")]
    if inp.nodes > 1:
        args += ["--distributed-executor-backend", "ray"]
    return args + list(spec.engine.extra_args)


def render_vllm_container(inp: EngineInput) -> EngineContainer:
    engine_env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # no telemetry from a customer's cluster
    if inp.adapters:
        engine_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
    return engine_container(
        inp,
        image=image(inp),
        command=["vllm", "serve"],
        args=serve_args(inp),
        engine_env=engine_env,
        ports=[{"name": HTTP_PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        queue_metric=QUEUE_METRIC,
        running_metric=RUNNING_METRIC,
    )
