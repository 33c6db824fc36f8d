"""What every engine builder receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama_operator.adapters.rollout import loads_at_runtime
from llama_operator.api.spec import Adapter, LlamaDeploymentSpec
from llama_operator.sizing.fit import SizingDecision

Manifest = dict[str, Any]

MODEL_MOUNT = "/models"
ADAPTER_MOUNT = "/adapters"
HTTP_PORT_NAME = "http"


# The engine releases the tests run, and so the tags of the default images. hack/build-vllm-runtime.sh
# reads VLLM_VERSION from this line; LLAMACPP_BUILD is the llama.cpp build that hack/build-llama-server.sh
# compiles (LLAMA_CPP_BUILD_NUMBER in hack/llama-server-version.env). tests/unit/test_image_versions.py
# fails when they drift apart.
VLLM_VERSION = "0.32.0"
LLAMACPP_BUILD = 11312


@dataclass(frozen=True)
class EngineImages:
    """Default images, pinned; the chart's values and spec.engine.image override them."""

    vllm: str = f"vllm/vllm-openai:v{VLLM_VERSION}"
    tgi: str = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    llamacpp_cpu: str = f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMACPP_BUILD}"
    llamacpp_cuda: str = f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMACPP_BUILD}"
    downloader: str = "curlimages/curl:8.16.0"
    s3_downloader: str = "amazon/aws-cli:2.31.0"


def served_model_name(spec: LlamaDeploymentSpec, name: str) -> str:
    """The `model` clients send: serving.servedModelName, else the object's name."""
    return spec.serving.served_model_name or name


@dataclass(frozen=True)
class EngineInput:
    """A fitting plan for one LlamaDeployment, ready to render."""

    name: str
    spec: LlamaDeploymentSpec
    decision: SizingDecision
    images: EngineImages = field(default_factory=EngineImages)
    adapters: tuple[Adapter, ...] = ()  # the set the pods serve (during a rollout: the canary's)

    @property
    def runtime_adapters(self) -> bool:
        """The engine loads the adapters into running pods: they are not part of the pod template."""
        return loads_at_runtime(self.decision.request.engine, self.adapters)

    @property
    def pod_adapters(self) -> tuple[Adapter, ...]:
        """Adapters the pods start with (fetched by init containers, named in args)."""
        return () if self.runtime_adapters else self.adapters

    @property
    def served_model_name(self) -> str:
        return served_model_name(self.spec, self.name)

    @property
    def gpus_per_pod(self) -> int:
        chosen = self.decision.chosen
        return chosen.shape.gpus_per_node if chosen else 0

    @property
    def nodes(self) -> int:
        chosen = self.decision.chosen
        return chosen.shape.nodes if chosen else 1


@dataclass(frozen=True)
class EngineContainer:
    """An engine's part of the pod: its container and the facts the rest of the rendering needs."""

    container: Manifest
    port: int
    metrics_port: int
    metrics_path: str
    queue_metric: str
    running_metric: str
    volumes: list[Manifest] = field(default_factory=list)
    init_containers: list[Manifest] = field(default_factory=list)
