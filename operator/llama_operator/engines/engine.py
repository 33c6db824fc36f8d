"""What an engine is to the operator: its registry entry (`Engine`) and the container part it renders.

One module per engine (vllm.py, tgi.py, llamacpp.py) builds one `Engine`; registry.py lists them.
Everything engine-specific the rest of the operator needs is a field here, so no other module
branches on an engine's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llama_operator.api.spec import Adapter
from llama_operator.sizing.memory import ServingEngine, Shape, Workload

if TYPE_CHECKING:  # base.py asks the registry, which imports the engine modules, which import this one
    from llama_operator.engines.base import EngineInput

Manifest = dict[str, Any]

MODEL_MOUNT = "/models"
ADAPTER_MOUNT = "/adapters"
HTTP_PORT_NAME = "http"

# How the smoke request selects an adapter (adapters/smoke.py):
#   lora-ids: the base model's name, and `"lora": [{"id": i, "scale": 1.0}]` by the adapter's start-up index;
#   model-name: the adapter's name as the request's `model` (an unknown name is an error);
#   model-name-verify-differs: the same, and the reply must differ from the base model's, because the
#     engine answers an unknown adapter with the base model instead of an error.
SmokeStyle = Literal["lora-ids", "model-name", "model-name-verify-differs"]
ModelFormat = Literal["safetensors", "gguf"]


@dataclass(frozen=True)
class EngineContainer:
    """An engine's part of the pod: its container and the facts the rest of the rendering needs."""

    container: Manifest
    port: int
    metrics_port: int
    metrics_path: str
    volumes: list[Manifest] = field(default_factory=list)
    init_containers: list[Manifest] = field(default_factory=list)
    # Who the pod runs as (pod.py): non-root under the `restricted` Pod Security Standard, unless the engine
    # names why its image cannot (`restricted_exception`); everything `baseline` asks holds either way.
    pod_security_context: Manifest = field(default_factory=dict)
    restricted_exception: str | None = None


@dataclass(frozen=True)
class RenderedFlags:
    """The flags the operator renders on an engine's command line, and the other spellings its parser reads
    as one of them: `engine.extraArgs` may not repeat one (planning refuses the spec, naming what sets it)."""

    # flag -> what sets it: a spec field ("spec.model.contextLength"), or why the operator owns it.
    sources: Mapping[str, str]
    # another spelling -> the flag it means (short forms, negations, alternative names).
    aliases: Mapping[str, str] = field(default_factory=dict)
    # The parser takes a unique prefix of a long flag (argparse's allow_abbrev).
    abbreviations: bool = False


@dataclass(frozen=True)
class Engine:
    """Everything engine-specific, for one engine."""

    name: ServingEngine
    # The flags that keep the engine inside the memory the sizing planned: sizing/ gives the numbers
    # (workload and shape), the engine spells them.
    sizing_args: Callable[[Workload, Shape], tuple[str, ...]]
    # The container, its ports, probes, volumes and init containers.
    container: Callable[[EngineInput], EngineContainer]
    # The image: spec.engine.image, else the pinned default (EngineImages) for this plan.
    image: Callable[[EngineInput], str]
    # What it serves and where: the spec's admission rules (api/spec.py) say the same, and
    # `engine.type: auto` picks by these (registry.auto_engine).
    model_format: ModelFormat
    runs_on_cpu: bool
    spans_nodes: bool  # one replica over several nodes (pipeline parallel)
    picked_by_auto: bool
    # The gauges on its /metrics the autoscaler scales on (and a runtime adapter load drains).
    queue_metric: str  # requests waiting
    running_metric: str  # requests being served
    default_queue_target: float  # waiting requests per replica worth another replica
    # Adapters: how the smoke request selects one, and whether a new set loads into running pods.
    smoke_style: SmokeStyle
    supports_runtime_lora: bool = False
    runtime_lora_sources: tuple[str, ...] = ()  # source prefixes the engine fetches itself at run time
    # The flags its command line gets from the operator (see RenderedFlags).
    rendered_flags: RenderedFlags = field(default_factory=lambda: RenderedFlags({}))

    def __post_init__(self) -> None:
        if self.supports_runtime_lora != bool(self.runtime_lora_sources):
            raise ValueError(f"{self.name}: runtime LoRA support needs the adapter sources it loads, and only then")

    def loads_at_runtime(self, adapters: Sequence[Adapter]) -> bool:
        """A set loads into running pods (no restart, pod by pod) when the engine supports it and fetches
        every source itself; otherwise pods that start with the new set are surged in."""
        return (
            self.supports_runtime_lora
            and bool(adapters)
            and all(a.source.startswith(self.runtime_lora_sources) for a in adapters)
        )
