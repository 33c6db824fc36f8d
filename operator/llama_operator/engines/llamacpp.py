"""llama.cpp's `llama-server` (GGUF, CPU or CUDA; adapters at start-up, scales at run time)."""

from __future__ import annotations

from llama_operator.engines.base import HTTP_PORT_NAME, EngineContainer, EngineInput
from llama_operator.engines.pod import (
    adapter_path,
    engine_container,
    model_path,
)

PORT = 8080
QUEUE_METRIC = "llamacpp:requests_deferred"
RUNNING_METRIC = "llamacpp:requests_processing"
SERVER_BINARY = "/app/llama-server"


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
        *inp.decision.engine_args,
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
        queue_metric=QUEUE_METRIC,
        running_metric=RUNNING_METRIC,
    )
