"""One module per engine (vllm.py, tgi.py, llamacpp.py), listed in registry.py; pod.py holds what they share."""

from __future__ import annotations

from llama_operator.engines.base import EngineContainer, EngineInput


def render_engine_container(inp: EngineInput) -> EngineContainer:
    return inp.engine.container(inp)
