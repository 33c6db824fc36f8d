"""The `LlamaDeployment` status and the condition helpers that keep it stable."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llama_operator.api.spec import Adapter, CamelModel

ConditionStatus = Literal["True", "False", "Unknown"]
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]

# Condition types.
READY = "Ready"
FITS = "Fits"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
ADAPTER_ROLLOUT = "AdapterRollout"
SCALING_ACTIVE = "ScalingActive"
MODEL_CACHED = "ModelCached"
INFERENCE_POOL = "InferencePool"

# Reasons (CamelCase constants; each message says what to do next).
REASON_INVALID_SPEC = "InvalidSpec"
REASON_DOES_NOT_FIT = "DoesNotFit"
REASON_FITS = "PlanFound"
REASON_ROLLING_OUT = "RollingOut"
REASON_ROLLED_OUT = "RolledOut"
REASON_AVAILABLE = "ReplicasAvailable"
REASON_UNAVAILABLE = "ReplicasUnavailable"
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_CRASHING = "ContainerCrashing"
REASON_APPLY_FAILED = "ApplyFailed"
REASON_HEALTHY = "Healthy"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_SCALING_ACTIVE = "MetricsAvailable"
REASON_ROLLED_BACK = "RolledBack"
REASON_ADAPTERS_ROLLING = "Progressing"
REASON_ADAPTERS_SERVING = "Serving"
REASON_METRICS_UNAVAILABLE = "MetricsUnavailable"
REASON_CACHE_PENDING = "CachePending"
REASON_DOWNLOADING = "Downloading"
REASON_CACHED = "Cached"
REASON_DOWNLOAD_FAILED = "DownloadFailed"
REASON_POOL_RENDERED = "Rendered"
REASON_CRD_NOT_INSTALLED = "CRDNotInstalled"


class Condition(CamelModel):
    type: str = Field(description="Condition type: Ready, Fits, Progressing, Degraded, AdapterRollout.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field(default="", description="What happened and what to do next.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int = Field(default=0, description="The spec generation this condition describes.")


class PerGpuBytes(CamelModel):
    weights: int = Field(description="Weight bytes per GPU (host bytes for CPU plans).")
    kv_cache: int = Field(description="KV cache bytes per GPU for contextLength x maxConcurrentSequences tokens.")
    overhead: int = Field(description="Engine overhead bytes per GPU: CUDA context, activations, graphs, LoRA, NCCL.")
    total: int = Field(description="weights + kvCache + overhead.")


class SizingStatus(CamelModel):
    """The sizing decision and its arithmetic, as `llama-operator plan` prints it."""

    fits: bool = Field(description="Whether a plan was found.")
    engine: str = Field(description="The engine the plan is for.")
    gpu_class: str | None = Field(default=None, description="The chosen GPU class; null for CPU-only plans.")
    gpu_memory_bytes: int | None = Field(default=None, description="Memory of one GPU of that class.")
    gpus_per_replica: int = Field(default=0, description="GPUs per replica (0 for CPU-only).")
    tensor_parallel: int = Field(default=1, description="Tensor-parallel degree within a node.")
    nodes_per_replica: int = Field(default=1, description="Nodes one replica spans (pipeline stages).")
    per_gpu_bytes: PerGpuBytes | None = Field(
        default=None, description="Memory per GPU (per replica host memory on CPU)."
    )
    context_length: int = Field(description="Tokens per sequence.")
    max_concurrent_sequences: int = Field(description="Sequences per replica.")
    engine_args: list[str] = Field(default_factory=list, description="Sizing flags rendered into the engine.")
    reason: str = Field(description="Why this plan, or why none fits.")
    alternatives: list[str] = Field(default_factory=list, description="Other plans, or changes that would fit.")
    cost_per_replica: float | None = Field(default=None, description="Relative cost of one replica of the plan.")


class ScalingRecommendation(CamelModel):
    time: int = Field(description="When (Unix seconds).")
    replicas: int = Field(description="Replicas the metric asked for then.")


class AutoscalingStatus(CamelModel):
    """The autoscaler's last evaluation; its recommendations survive an operator restart here."""

    desired_replicas: int = Field(description="Replicas the last evaluation asked for.")
    current_metric: float | None = Field(default=None, description="Summed metric over the pods; null when unknown.")
    target_per_replica: float = Field(description="Target metric value per replica.")
    query: str = Field(description="The PromQL evaluated.")
    reason: str = Field(description="Why the last decision.")
    last_evaluation_time: str = Field(description="RFC 3339.")
    last_scale_time: str | None = Field(default=None, description="When replicas were last changed (RFC 3339).")
    recommendations: list[ScalingRecommendation] = Field(
        default_factory=list, description="Recommendations inside the stabilization windows."
    )
    metrics_available: bool = Field(
        default=True, description="Whether the last evaluation read complete, fresh metrics (ScalingActive)."
    )


AdapterRolloutPhase = Literal["Idle", "Progressing", "Succeeded", "RolledBack"]


class EngineCheck(CamelModel):
    """A request to an engine in flight: a smoke request or a runtime adapter load on one pod."""

    pod: str = Field(description="The pod being checked.")
    check: str = Field(description="SmokeRequest or LoadAdapters.")
    since: str = Field(description="When the check started (RFC 3339); no answer yet.")


class AdapterRolloutStatus(CamelModel):
    """Progress of an adapter rollout; an operator restart resumes from here."""

    phase: AdapterRolloutPhase = Field(default="Idle", description="Idle, Progressing, Succeeded or RolledBack.")
    target: list[str] = Field(default_factory=list, description="The adapter set being rolled out (name@version).")
    serving: list[Adapter] = Field(default_factory=list, description="The adapters the pods are rendered with now.")
    last_good: list[Adapter] = Field(default_factory=list, description="The last adapters that passed every check.")
    failed: list[str] = Field(
        default_factory=list, description="Sets that failed (joined by ','); not retried until the spec changes."
    )
    step: str = Field(default="", description="What the rollout waits for.")
    verified_pods: list[str] = Field(default_factory=list, description="Pods that passed the smoke request.")
    start_time: str | None = Field(default=None, description="When the rollout started (RFC 3339).")
    canary_verified_time: str | None = Field(default=None, description="When the canary passed (RFC 3339).")
    message: str = Field(default="", description="The last check's outcome.")
    checks: list[EngineCheck] = Field(default_factory=list, description="Engine checks in flight, by pod.")


ModelCachePhase = Literal["Pending", "Downloading", "Ready", "Failed"]


class ModelCacheStatus(CamelModel):
    """The shared model cache this LlamaDeployment mounts: its claim, and how far its download got."""

    claim_name: str = Field(description="The PersistentVolumeClaim the model is downloaded into.")
    job: str = Field(description="The Job that downloads it.")
    phase: ModelCachePhase = Field(description="Pending, Downloading, Ready or Failed.")
    bytes_done: int = Field(default=0, description="Bytes downloaded so far (the last progress line of the Job).")
    bytes_expected: int = Field(description="The model's weight bytes, from the sizing plan.")
    progress: str = Field(default="", description="bytesDone/bytesExpected as text, e.g. 1.2/4.0 GiB (30%).")
    message: str = Field(default="", description="What the cache waits for, or why its download failed.")


class LlamaDeploymentStatus(CamelModel):
    observed_generation: int = Field(default=0, description="Last spec generation the operator acted on.")
    phase: Phase = Field(default="Pending", description="Pending, Progressing, Ready, Degraded or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Fits, Progressing, Degraded.")
    sizing: SizingStatus | None = Field(default=None, description="The sizing decision.")
    engine: str | None = Field(default=None, description="Engine in use.")
    gpus: str | None = Field(default=None, description="GPU class x count per replica, e.g. gpu-24gb x1, or cpu.")
    replicas: int = Field(default=0, description="Replicas of the current Deployment (scale subresource).")
    ready_replicas: int = Field(default=0, description="Replicas ready to serve.")
    ready: str = Field(default="0/0", description="ready/desired replicas.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the OpenAI-compatible API.")
    adapters: str | None = Field(default=None, description="Adapters served, as name@version.")
    autoscaling: AutoscalingStatus | None = Field(default=None, description="The autoscaler's last decision.")
    adapter_rollout: AdapterRolloutStatus | None = Field(default=None, description="Adapter rollout progress.")
    model_cache: ModelCacheStatus | None = Field(default=None, description="The shared model cache (model.cache).")
