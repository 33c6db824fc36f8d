"""Operator-wide settings: GPU classes and their costs, engine images, Prometheus. Read from one YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from llama_operator.api.spec import DeviceAllocation
from llama_operator.engines.base import DEFAULT_HUB_ENDPOINT, EngineImages
from llama_operator.sizing.gpu_classes import DEFAULT_CPU_CLASS, DEFAULT_GPU_CLASSES, GIB, CpuClass, GpuClass, Inventory
from llama_operator.yaml_input import safe_load


class _Settings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GpuClassSetting(_Settings):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    min_memory_mib: int = Field(ge=1, description="Smallest nvidia.com/gpu.memory (MiB) of the class.")
    max_memory_mib: int = Field(ge=1, description="Largest nvidia.com/gpu.memory (MiB) of the class.")
    memory_mib: int = Field(ge=1, description="Memory assumed when no node of the class is seen.")
    cost_per_gpu: float = Field(gt=0, description="Relative cost of one GPU of the class.")
    gpus_per_node: int = Field(default=8, ge=1, le=64, description="GPUs per node assumed without a cluster.")
    product: str | None = None

    def to_class(self) -> GpuClass:
        return GpuClass(
            self.name,
            self.min_memory_mib,
            self.max_memory_mib,
            self.memory_mib,
            self.cost_per_gpu,
            gpus_per_node=self.gpus_per_node,
            product=self.product,
        )


def _default_classes() -> list[GpuClassSetting]:
    return [
        GpuClassSetting(
            name=c.name,
            min_memory_mib=c.min_memory_mib,
            max_memory_mib=c.max_memory_mib,
            memory_mib=c.memory_mib,
            cost_per_gpu=c.cost_per_gpu,
            gpus_per_node=c.gpus_per_node,
            product=c.product,
        )
        for c in DEFAULT_GPU_CLASSES
    ]


class OperatorConfig(_Settings):
    gpu_classes: list[GpuClassSetting] = Field(default_factory=_default_classes)
    cpu_cost_per_replica: float = Field(default=DEFAULT_CPU_CLASS.cost_per_replica, gt=0)
    cpu_memory_gib: float = Field(default=DEFAULT_CPU_CLASS.memory_bytes / GIB, gt=0)
    images: dict[str, str] = Field(default_factory=dict, description="Overrides of EngineImages fields.")
    prometheus_url: str | None = Field(default=None, description="Default Prometheus for autoscaling.")
    prometheus_allowed_urls: list[Annotated[str, Field(pattern=r"^https?://[^\s]+$")]] = Field(
        default_factory=list,
        description=(
            "URL prefixes a LlamaDeployment's spec.autoscaling.prometheusUrl may name (scheme, host and port "
            "equal, path at or below); the operator's own prometheusUrl is always allowed. Any other URL is "
            "refused and never queried."
        ),
    )
    device_allocation: DeviceAllocation = Field(
        default="DevicePlugin",
        description=(
            "How pods get their GPUs when a LlamaDeployment does not set placement.deviceAllocation: "
            "DevicePlugin (nvidia.com/gpu) or DRA (resource.k8s.io/v1 ResourceClaimTemplates)."
        ),
    )
    hub_endpoint: str = Field(
        default=DEFAULT_HUB_ENDPOINT,
        pattern=r"^https?://[^\s'\"\\]+$",
        description="Where hf:// models and adapters are downloaded from: the Hugging Face Hub, or a mirror.",
    )

    def class_list(self) -> tuple[GpuClass, ...]:
        return tuple(c.to_class() for c in self.gpu_classes)

    def default_inventory(self) -> Inventory:
        """The inventory assumed without a cluster: every class, 8 GPUs per node, a CPU class."""
        cpu = CpuClass(memory_bytes=int(self.cpu_memory_gib * GIB), cost_per_replica=self.cpu_cost_per_replica)
        return Inventory(self.class_list(), cpu)

    def engine_images(self) -> EngineImages:
        known = set(EngineImages.__dataclass_fields__)
        unknown = sorted(set(self.images) - known)
        if unknown:
            raise ValueError(f"unknown image keys {unknown}; known: {sorted(known)}")
        return EngineImages(**self.images)


def load_config(path: Path | None) -> OperatorConfig:
    if path is None:
        return OperatorConfig()
    data: Any = safe_load(path.read_text()) or {}
    return OperatorConfig.model_validate(data)
