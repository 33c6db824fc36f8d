"""One pure builder per engine: LlamaDeployment + sizing decision -> the engine's container and facts."""

from __future__ import annotations

from collections.abc import Callable

from llama_operator.engines.base import EngineContainer, EngineInput
from llama_operator.engines.llamacpp import render_llamacpp_container
from llama_operator.engines.tgi import render_tgi_container
from llama_operator.engines.vllm import render_vllm_container

ENGINE_BUILDERS: dict[str, Callable[[EngineInput], EngineContainer]] = {
    "vllm": render_vllm_container,
    "tgi": render_tgi_container,
    "llamacpp": render_llamacpp_container,
}


def render_engine_container(inp: EngineInput) -> EngineContainer:
    return ENGINE_BUILDERS[inp.decision.request.engine](inp)
