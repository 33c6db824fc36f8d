"""The engines the operator serves with, by name: one entry per engine module.

Adding an engine: its module (building an `Engine`), a line in ENGINES, its name in the CRD's enum
(`EngineName` in api/spec.py and `ServingEngine` in sizing/memory.py, with its memory model there) and a
golden rendering of an example. tests/unit/test_engine_registry.py fails while these disagree.
"""

from __future__ import annotations

from llama_operator.engines import llamacpp, tgi, vllm
from llama_operator.engines.engine import Engine
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.memory import ServingEngine, Shape, Workload

ENGINES: dict[str, Engine] = {
    "vllm": vllm.ENGINE,
    "tgi": tgi.ENGINE,
    "llamacpp": llamacpp.ENGINE,
}


def engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None


def auto_engine(*, model_format: str, cpu_only: bool) -> ServingEngine:
    """`engine.type: auto`: the first engine (in ENGINES order) that auto may pick and that runs on CPU
    for a CPU-only plan, else serves the model's format. Today: llama.cpp for GGUF or CPU-only, vLLM otherwise."""
    for candidate in ENGINES.values():
        if candidate.picked_by_auto and (candidate.runs_on_cpu if cpu_only else candidate.model_format == model_format):
            return candidate.name
    raise ValueError(f"no engine serves {model_format} models{' on CPU' if cpu_only else ''}")


def engine_sizing_args(name: str, work: Workload, shape: Shape) -> tuple[str, ...]:
    """The sizing flags `name` renders for `work` laid out as `shape`."""
    return engine(name).sizing_args(work, shape)


def engine_args(decision: SizingDecision) -> tuple[str, ...]:
    """The sizing flags of a decision's chosen plan (none for a refusal): what `status.sizing.engineArgs` shows."""
    if decision.chosen is None:
        return ()
    return engine_sizing_args(decision.request.engine, decision.request.work, decision.chosen.shape)
