"""What every engine builder receives, and the pinned default images."""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_operator.api.spec import Adapter, LlamaDeploymentSpec
from llama_operator.engines.devices import claim_spec, claim_template_name, device_selectors
from llama_operator.engines.engine import (
    ADAPTER_MOUNT,
    HTTP_PORT_NAME,
    MODEL_MOUNT,
    Engine,
    EngineContainer,
    Manifest,
)
from llama_operator.engines.registry import engine
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.memory import Shape, Workload

__all__ = [
    "ADAPTER_MOUNT",
    "DEFAULT_HUB_ENDPOINT",
    "HTTP_PORT_NAME",
    "LLAMACPP_BUILD",
    "MODEL_MOUNT",
    "VLLM_VERSION",
    "EngineContainer",
    "EngineImages",
    "EngineInput",
    "Manifest",
    "served_model_name",
]


# The engine releases the tests run, and so the tags of the default images. hack/build-vllm-runtime.sh
# reads VLLM_VERSION from this line; LLAMACPP_BUILD is the llama.cpp build that hack/build-llama-server.sh
# compiles (LLAMA_CPP_BUILD_NUMBER in hack/llama-server-version.env). tests/unit/test_image_versions.py
# fails when they drift apart.
VLLM_VERSION = "0.32.0"
LLAMACPP_BUILD = 11312
# The Hugging Face Hub; the operator's `hubEndpoint` setting points hf:// downloads at a mirror instead.
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"


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
    # Where hf:// sources are downloaded from (a mirror in air-gapped clusters).
    hub_endpoint: str = DEFAULT_HUB_ENDPOINT
    # DevicePlugin (nvidia.com/gpu limits) or DRA (a ResourceClaimTemplate): spec, else the operator's default.
    device_allocation: str = "DevicePlugin"

    @property
    def engine(self) -> Engine:
        return engine(self.decision.request.engine)

    @property
    def runtime_adapters(self) -> bool:
        """The engine loads the adapters into running pods: they are not part of the pod template."""
        return self.engine.loads_at_runtime(self.adapters)

    @property
    def pod_adapters(self) -> tuple[Adapter, ...]:
        """Adapters the pods start with (fetched by init containers, named in args)."""
        return () if self.runtime_adapters else self.adapters

    @property
    def served_model_name(self) -> str:
        return served_model_name(self.spec, self.name)

    @property
    def work(self) -> Workload:
        return self.decision.request.work

    @property
    def shape(self) -> Shape:
        """The chosen placement's shape (0 GPUs for a CPU plan)."""
        chosen = self.decision.chosen
        if chosen is None:
            raise ValueError(f"{self.name}: no fitting placement to render")
        return chosen.shape

    @property
    def gpus_per_pod(self) -> int:
        chosen = self.decision.chosen
        return chosen.shape.gpus_per_node if chosen else 0

    @property
    def dra(self) -> bool:
        """The pods claim their GPUs by Dynamic Resource Allocation (a GPU plan only)."""
        return self.device_allocation == "DRA" and self.gpus_per_pod > 0

    @property
    def claim_spec(self) -> Manifest:
        """The ResourceClaim of each pod under DRA (see `devices`)."""
        return claim_spec(self.gpus_per_pod, device_selectors(self.decision, self.spec.placement.product_names))

    @property
    def claim_template(self) -> str:
        return claim_template_name(self.name, self.claim_spec)

    @property
    def nodes(self) -> int:
        chosen = self.decision.chosen
        return chosen.shape.nodes if chosen else 1
