"""The `LlamaDeployment` spec: the single source of the CRD schema.

Field descriptions become `kubectl explain` text; `CEL_RULES` become the CRD's
`x-kubernetes-validations`, so the apiserver refuses bad input before the operator sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue

from llama_operator.api.string_rules import (
    LABEL_KEY,
    LOCAL_URL,
    NAMES_A_FILE,
    SOURCE_CHECKS,
    VISIBLE_NAME,
    SourceCheck,
    cel_matches,
    fully_matches,
)

GROUP = "llamaops.io"
VERSION = "v1alpha1"
KIND = "LlamaDeployment"
PLURAL = "llamadeployments"
SINGULAR = "llamadeployment"
SHORT_NAMES = ("llamad",)

CatalogName = Literal[
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.2-11b-vision",
    "llama-3.2-90b-vision",
    "llama-3.3-70b",
    "llama-4-scout",
    "llama-4-maverick",
]
SafetensorsQuantization = Literal["none", "bf16", "fp16", "fp8", "int8", "int4", "awq", "gptq"]
GGUFQuantization = Literal[
    "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k"
]
Quantization = Literal[
    "none", "bf16", "fp16", "fp8", "int8", "int4", "awq", "gptq",
    "f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k",
]  # fmt: skip
GGUF_ONLY_QUANTIZATIONS = ("f16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0",
                           "q3_k_m", "q2_k")  # fmt: skip
SAFETENSORS_ONLY_QUANTIZATIONS = ("none", "fp16", "fp8", "int8", "int4", "awq", "gptq")
EngineName = Literal["auto", "vllm", "tgi", "llamacpp"]

# No whitespace and no control characters: a source is shown in logs, events and kubectl output.
SOURCE_PATTERN = r"^(hf|pvc|s3|https)://[^\s\x00-\x1f\x7f]+$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class CamelModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, enforced twice from one table: by the apiserver (CEL) and by `parse_spec`."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def as_cel(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class RuledModel(CamelModel):
    """A model whose class attribute `rules` lists its cross-field rules."""

    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.rules:
            target["x-kubernetes-validations"] = [rule.as_cel() for rule in cls.rules]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        broken = [rule for rule in self.rules if not rule.check(self)]
        if broken:
            raise ValueError("; ".join(rule.message for rule in broken))
        return self


def model_source_rules() -> tuple[Rule, ...]:
    """The source checks on `model.source` (a rule of the Model object)."""
    return tuple(
        Rule(check.cel("self.source"), f"model.source{check.message}", _model_source_holds(check), ".source")
        for check in SOURCE_CHECKS
    )


def adapter_source_rules() -> tuple[Rule, ...]:
    """The source checks on every `adapters[].source`: rules of the spec, because Adapter is also a status type."""
    return tuple(
        Rule(
            f"!has(self.adapters) || self.adapters.all(a, {check.cel('a.source')})",
            f"adapters[].source{check.message}",
            _adapter_sources_hold(check),
            ".adapters",
        )
        for check in SOURCE_CHECKS
    )


def _model_source_holds(check: SourceCheck) -> Callable[[Any], bool]:
    return lambda model: check.holds(model.source)


def _adapter_sources_hold(check: SourceCheck) -> Callable[[Any], bool]:
    return lambda spec: all(check.holds(adapter.source) for adapter in spec.adapters)


class Architecture(RuledModel):
    """Architecture facts of a model that is not in the catalog."""

    rules = (
        Rule(
            "self.kvHeads <= self.attentionHeads",
            "architecture.kvHeads must not exceed attentionHeads",
            lambda a: a.kv_heads <= a.attention_heads,
            ".kvHeads",
        ),
        Rule(
            "self.attentionHeads % self.kvHeads == 0",
            "architecture.attentionHeads must be a multiple of kvHeads (grouped-query attention)",
            lambda a: a.attention_heads % a.kv_heads == 0,
            ".kvHeads",
        ),
        Rule(
            "!has(self.activeParametersBillions) || self.activeParametersBillions <= self.parametersBillions",
            "architecture.activeParametersBillions must not exceed parametersBillions",
            lambda a: a.active_parameters_billions is None or a.active_parameters_billions <= a.parameters_billions,
            ".activeParametersBillions",
        ),
    )

    layers: int = Field(ge=1, le=512, description="Number of transformer blocks (num_hidden_layers).")
    hidden_size: int = Field(ge=64, le=65536, description="Model width (hidden_size).")
    attention_heads: int = Field(ge=1, le=1024, description="Query heads (num_attention_heads).")
    kv_heads: int = Field(
        ge=1, le=1024, description="Key/value heads (num_key_value_heads); equals attentionHeads without GQA."
    )
    head_dim: int | None = Field(
        default=None,
        ge=16,
        le=1024,
        description="Per-head dimension; defaults to hiddenSize / attentionHeads.",
    )
    intermediate_size: int = Field(ge=64, le=262144, description="MLP width (intermediate_size).")
    vocab_size: int = Field(ge=256, le=1048576, description="Vocabulary size.")
    max_context_length: int = Field(ge=256, le=10485760, description="Longest context the model was trained for.")
    parameters_billions: float = Field(
        gt=0, le=10000, description="Total parameters in billions (all experts for MoE)."
    )
    active_parameters_billions: float | None = Field(
        default=None,
        gt=0,
        le=10000,
        description="Parameters used per token in billions (MoE); defaults to the total.",
    )
    experts: int = Field(default=1, ge=1, le=1024, description="Routed experts per MoE layer; 1 for dense models.")
    tied_embeddings: bool = Field(default=False, description="Whether the output head shares the input embedding.")


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"


class ModelCache(CamelModel):
    """A volume the model is downloaded into once, shared by every replica (and every LlamaDeployment of the
    namespace with the same source and format), instead of once per pod."""

    storage_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="StorageClass of the cache's PersistentVolumeClaim; the cluster's default class when unset.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = Field(
        default="ReadWriteMany",
        description=(
            "Access mode of the claim. ReadWriteMany lets replicas on any node mount it (read-only); with "
            "ReadWriteOnce every replica must land on the node the volume is attached to."
        ),
    )
    size: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="Size of the claim, e.g. 200Gi; defaults to the plan's weight bytes plus 20 % (at least 1Gi).",
    )


class Model(RuledModel):
    """Which model to serve and in what form."""

    rules = (
        Rule(
            "has(self.catalogName) != has(self.architecture)",
            "set exactly one of model.catalogName (a known Llama model) or model.architecture (facts of another model)",
            lambda m: (m.catalog_name is None) != (m.architecture is None),
        ),
        Rule(
            "self.format == 'gguf' || !(self.quantization in ['f16', 'q8_0', 'q6_k', 'q5_k_m', 'q5_k_s', 'q5_0', 'q4_k_m', 'q4_k_s', 'q4_0', 'q3_k_m', 'q2_k'])",
            "GGUF quantizations (f16, q8_0, q4_k_m, ...) need model.format: gguf",
            lambda m: m.format == "gguf" or m.quantization not in GGUF_ONLY_QUANTIZATIONS,
            ".quantization",
        ),
        Rule(
            "self.format == 'safetensors' || !(self.quantization in ['none', 'fp16', 'fp8', 'int8', 'int4', 'awq', 'gptq'])",
            "a GGUF model needs a GGUF quantization (f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, ...)",
            lambda m: m.format == "safetensors" or m.quantization not in SAFETENSORS_ONLY_QUANTIZATIONS,
            ".quantization",
        ),
        Rule(
            "!has(self.architecture) || !has(self.contextLength) || "
            "self.contextLength <= self.architecture.maxContextLength",
            "model.contextLength exceeds architecture.maxContextLength",
            lambda m: (
                m.architecture is None
                or m.context_length is None
                or m.context_length <= m.architecture.max_context_length
            ),
            ".contextLength",
        ),
        *model_source_rules(),
        Rule(
            "!has(self.cache) || !self.source.startsWith('pvc://')",
            "model.cache downloads the model into a shared volume once; a pvc:// source is on a volume already: "
            "remove model.cache",
            lambda m: m.cache is None or not m.source.startswith("pvc://"),
            ".cache",
        ),
        Rule(
            f"self.format != 'gguf' || {cel_matches('self.source', NAMES_A_FILE)}",
            "model.format: gguf loads one file: name it in model.source, e.g. "
            "hf://org/repo/model-Q4_K_M.gguf or pvc://models/model-Q4_K_M.gguf",
            lambda m: m.format != "gguf" or fully_matches(NAMES_A_FILE, m.source),
            ".source",
        ),
    )

    catalog_name: CatalogName | None = Field(
        default=None,
        description="A model of the built-in catalog; the instruct and base variants share one entry.",
    )
    architecture: Architecture | None = Field(
        default=None, description="Architecture facts of a model outside the catalog."
    )
    source: str = Field(
        pattern=SOURCE_PATTERN,
        max_length=2048,
        description=(
            "Where the weights come from: hf://org/repo[/file.gguf], pvc://claim/path, s3://bucket/path or "
            "https://host/path (a checkpoint folder there is a tar archive, unpacked). Paths have no empty, "
            "'.' or '..' segments."
        ),
    )
    format: Literal["safetensors", "gguf"] = Field(default="safetensors", description="Weight file format.")
    quantization: Quantization = Field(
        default="none",
        description=(
            "Weight precision. safetensors: none (native bf16), bf16, fp16, fp8, int8, int4/awq/gptq (4-bit); "
            "gguf: f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_0, q4_k_m, q4_k_s, q4_0, q3_k_m, q2_k."
        ),
    )
    context_length: int | None = Field(
        default=None,
        ge=256,
        le=10485760,
        description="Tokens per sequence (prompt + output) the engine must hold. Defaults to min(8192, model maximum).",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        default="auto",
        description="KV cache precision: auto (the model dtype, 2 bytes) or fp8 (1 byte; vLLM only).",
    )
    cache: ModelCache | None = Field(
        default=None,
        description=(
            "Download the model once into a shared PersistentVolumeClaim (filled by a Job, mounted read-only by "
            "every replica) instead of once per pod; `cache: {}` turns it on with defaults. Absent: each pod "
            "downloads the model into its own volume."
        ),
    )


class EnvVar(CamelModel):
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256, description="Variable name.")
    value: str = Field(default="", max_length=32768, description="Variable value (use secrets for credentials).")


class Engine(CamelModel):
    """The inference server and how to run it."""

    type: EngineName = Field(
        default="auto",
        description="auto picks llamacpp for GGUF or CPU-only models and vllm otherwise; tgi only when asked.",
    )
    image: str | None = Field(default=None, max_length=512, description="Override the engine's pinned default image.")
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=64, description="Arguments appended after the operator's own."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")


GPU_COUNT_RANGE = "placement.gpuCount must be 'auto' or an integer from 1 to 64"
PRODUCTS_NEED_DRA = "placement.productNames needs placement.deviceAllocation: DRA"
# Quoted into a CEL string literal of the ResourceClaimTemplate: no quote or backslash can occur.
PRODUCT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]*$"
DeviceAllocation = Literal["DevicePlugin", "DRA"]


class Placement(RuledModel):
    """Which GPUs a replica runs on; `auto` lets the sizing choose the cheapest plan that fits."""

    rules = (
        Rule(
            "!self.cpuOnly || (self.gpuClass == 'auto' && self.gpuCount == 'auto')",
            "placement.cpuOnly: true cannot be combined with a gpuClass or gpuCount",
            lambda p: not p.cpu_only or (p.gpu_class == "auto" and p.gpu_count == "auto"),
        ),
        Rule(
            "type(self.gpuCount) == string ? self.gpuCount == 'auto' : (self.gpuCount >= 1 && self.gpuCount <= 64)",
            GPU_COUNT_RANGE,
            lambda p: p.gpu_count == "auto" or (isinstance(p.gpu_count, int) and 1 <= p.gpu_count <= 64),
            ".gpuCount",
        ),
        Rule(
            "!has(self.productNames) || size(self.productNames) == 0 || "
            "(has(self.deviceAllocation) && self.deviceAllocation == 'DRA')",
            PRODUCTS_NEED_DRA,
            lambda p: not p.product_names or p.device_allocation == "DRA",
            ".productNames",
        ),
    )

    gpu_class: str = Field(
        default="auto",
        pattern=r"^(auto|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$",
        max_length=63,
        description="A GPU class name (gpu-24gb, gpu-48gb, h100-80gb, or one configured) or auto.",
    )
    gpu_count: int | Literal["auto"] = Field(
        default="auto", description="GPUs per replica (tensor-parallel degree times nodes), or auto."
    )
    cpu_only: bool = Field(
        default=False, description="Run on CPU nodes without GPUs (llama.cpp with a GGUF model only)."
    )
    max_nodes_per_replica: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Allow one replica to span this many nodes (vLLM only, as a LeaderWorkerSet).",
    )
    device_allocation: DeviceAllocation | None = Field(
        default=None,
        description=(
            "How pods get their GPUs: DevicePlugin (nvidia.com/gpu limits and GPU Feature Discovery node labels) "
            "or DRA (a ResourceClaimTemplate of DeviceClass gpu.nvidia.com selecting devices with at least the "
            "plan's memory per GPU). Absent: the operator's deviceAllocation setting."
        ),
    )
    product_names: list[Annotated[str, Field(pattern=PRODUCT_NAME_PATTERN, max_length=128)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "DRA only: allow only devices whose productName attribute is one of these "
            "(as the NVIDIA DRA driver reports it, e.g. 'NVIDIA H100 80GB HBM3')."
        ),
    )

    @field_validator("gpu_count", mode="before")
    @classmethod
    def _auto_or_an_integer(cls, value: object) -> object:
        """A string such as "2" is not 2: the apiserver's rule refuses any string but 'auto' with the rule's
        message, and so does this, instead of pydantic's two messages for the two sides of the union."""
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError(GPU_COUNT_RANGE)


class Serving(RuledModel):
    rules = (
        Rule(
            f"!has(self.servedModelName) || {cel_matches('self.servedModelName', VISIBLE_NAME)}",
            "serving.servedModelName must be visible characters (no spaces, control characters or invisible "
            "Unicode) and must not start with '-'; e.g. llama-3.1-8b-chat or meta-llama/Llama-3.1-8B-Instruct",
            lambda s: s.served_model_name is None or fully_matches(VISIBLE_NAME, s.served_model_name),
            ".servedModelName",
        ),
    )

    max_concurrent_sequences: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Sequences served at once per replica; each gets a full contextLength of KV cache.",
    )
    tool_calling: bool = Field(default=False, description="Enable function calling with the model's tool parser.")
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "Name clients send as `model`; defaults to the object name. Visible characters only (no spaces or "
            "control characters), not starting with '-'."
        ),
    )


class ScalingPolicy(CamelModel):
    stabilization_window_seconds: int = Field(
        default=0, ge=0, le=3600, description="Use the most conservative recommendation over this window."
    )
    max_step: int = Field(default=4, ge=1, le=100, description="At most this many replicas added or removed at once.")
    cooldown_seconds: int = Field(default=0, ge=0, le=3600, description="Wait this long after a scaling step.")


def _scale_down_default() -> ScalingPolicy:
    return ScalingPolicy(stabilization_window_seconds=300, max_step=1, cooldown_seconds=60)


class SecretKeyRef(CamelModel):
    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Secret name.")
    key: str = Field(default="token", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key in the Secret.")


class Autoscaling(RuledModel):
    """Scale on the engine's request queue, read from Prometheus."""

    rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
            ".minReplicas",
        ),
        Rule(
            f"!has(self.prometheusUrl) || !{cel_matches('self.prometheusUrl', LOCAL_URL, ignore_case=True)}",
            "autoscaling.prometheusUrl must not point at the operator's own host or a link-local address "
            "(localhost, 127.0.0.0/8, 0.0.0.0, 169.254.0.0/16, ::1, fe80::/10); "
            "name the Prometheus Service, e.g. http://prometheus-operated.monitoring:9090",
            lambda a: a.prometheus_url is None or not fully_matches(LOCAL_URL, a.prometheus_url, ignore_case=True),
            ".prometheusUrl",
        ),
    )

    enabled: bool = Field(default=False, description="Let the operator set spec.replicas from queue metrics.")
    mode: Literal["Builtin", "KEDA"] = Field(
        default="Builtin",
        description=(
            "Builtin: the operator evaluates the query and writes spec.replicas. KEDA: the operator renders a "
            "KEDA ScaledObject on the scale subresource with the same query, target and bounds (and a fallback "
            "that holds replicas when the query fails), and never writes replicas itself."
        ),
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Lower bound of replicas.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Upper bound of replicas.")
    metric: Literal["queue", "inFlight"] = Field(
        default="queue",
        description=(
            "queue: waiting requests (vllm:num_requests_waiting, tgi_queue_size, llamacpp:requests_deferred); "
            "inFlight: running requests (vllm:num_requests_running, tgi_batch_current_size, "
            "llamacpp:requests_processing)."
        ),
    )
    target_per_replica: float | None = Field(
        default=None, gt=0, le=100000, description="Target metric value per replica; defaults per engine."
    )
    query: str | None = Field(default=None, max_length=4096, description="Custom PromQL returning one number.")
    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description=(
            "Overrides the operator-wide Prometheus URL; the operator queries it only when it is under one of "
            "the operator's prometheusAllowedUrls."
        ),
    )
    prometheus_auth_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Bearer token for Prometheus, from a Secret in this namespace."
    )
    evaluation_interval_seconds: int = Field(default=15, ge=1, le=600, description="How often to evaluate.")
    scale_up: ScalingPolicy = Field(default_factory=ScalingPolicy, description="Behaviour when adding replicas.")
    scale_down: ScalingPolicy = Field(
        default_factory=_scale_down_default, description="Behaviour when removing replicas."
    )


class Adapter(CamelModel):
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Adapter name clients send as `model`.")
    source: str = Field(
        pattern=SOURCE_PATTERN,
        max_length=2048,
        description=(
            "Where the adapter comes from: hf://org/repo[/file.gguf], pvc://claim/path, s3://bucket/path or "
            "https://host/path (a PEFT folder there is a tar archive, unpacked)."
        ),
    )
    version: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$",
        description="Version or digest (letters, digits, . _ : + -); a change rolls the adapter out.",
    )
    rank: int | None = Field(default=None, ge=1, le=512, description="LoRA rank, checked against the engine limit.")
    base_model: str | None = Field(default=None, max_length=253, description="Guard: the base model it was trained on.")


class SmokeRequest(CamelModel):
    """A chat request each new adapter must answer on a fresh pod before that pod takes traffic."""

    prompt: str = Field(default="Say hello.", min_length=1, max_length=4096, description="User message sent.")
    max_tokens: int = Field(default=8, ge=1, le=1024, description="Tokens to generate.")
    expected_status: int = Field(default=200, ge=100, le=599, description="HTTP status the engine must answer.")
    expected_substring: str | None = Field(
        default=None, max_length=1024, description="Text the reply must contain (none: any reply with tokens)."
    )
    timeout_seconds: int = Field(default=60, ge=1, le=600, description="How long one smoke request may take.")


class MetricGate(CamelModel):
    """A PromQL check after the canary: an error ratio above the limit rolls back."""

    query: str = Field(max_length=4096, description="PromQL returning one number (for example an error ratio).")
    max_value: float = Field(ge=0, description="Roll back when the query returns more than this.")
    window_seconds: int = Field(default=60, ge=0, le=3600, description="Watch the canary this long before deciding.")


class AdapterRolloutPolicy(CamelModel):
    strategy: Literal["Canary", "AllAtOnce"] = Field(
        default="Canary", description="Canary: one pod (or canaryReplicas) first, gated; AllAtOnce: every pod at once."
    )
    canary_replicas: int = Field(default=1, ge=1, le=100, description="Pods that take the new adapters first.")
    canary_percent: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Canary size as a percentage of replicas (rounded up, at least one pod); wins over canaryReplicas.",
    )
    smoke_request: SmokeRequest = Field(default_factory=SmokeRequest, description="Request every new pod must pass.")
    metric_gate: MetricGate | None = Field(default=None, description="Optional Prometheus check after the canary.")
    pause_seconds: int = Field(default=0, ge=0, le=3600, description="Wait between pods after the canary.")
    timeout_seconds: int = Field(default=1800, ge=30, le=86400, description="Roll back when not done in time.")


def canary_size(policy: AdapterRolloutPolicy, replicas: int) -> int:
    """Pods in the canary step: canaryPercent of replicas (rounded up) or canaryReplicas, within 1..replicas."""
    wanted = -(-replicas * policy.canary_percent // 100) if policy.canary_percent else policy.canary_replicas
    return max(1, min(wanted, max(replicas, 1)))


class LocalObjectReference(CamelModel):
    name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of an object in the same namespace."
    )


class Scheduling(RuledModel):
    """Passed through to the pods as written."""

    rules = (
        Rule(
            f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.size() <= 317 && {cel_matches('k', LABEL_KEY)})",
            "scheduling.nodeSelector keys must be label keys: an optional DNS subdomain prefix and '/', then at "
            "most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, e.g. "
            "nvidia.com/gpu.product",
            lambda s: all(len(key) <= 317 and fully_matches(LABEL_KEY, key) for key in s.node_selector),
            ".nodeSelector",
        ),
    )

    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=32, description="Extra node labels the pods require (at most 32)."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, max_length=32, description="Extra tolerations (core/v1 Toleration)."
    )
    affinity: dict[str, Any] = Field(default_factory=dict, description="Pod affinity (core/v1 Affinity).")

    @field_validator("affinity")
    @classmethod
    def _node_affinity_shaped(cls, affinity: dict[str, Any]) -> dict[str, Any]:
        """The operator ANDs its GPU-class terms into the required node terms, so that part must have
        the core/v1 shape; the rest passes through as written."""
        node = affinity.get("nodeAffinity", {})
        required = node.get("requiredDuringSchedulingIgnoredDuringExecution", {}) if isinstance(node, dict) else None
        terms = required.get("nodeSelectorTerms", []) if isinstance(required, dict) else None
        if not isinstance(terms, list) or not all(
            isinstance(term, dict) and isinstance(term.get("matchExpressions", []), list) for term in terms
        ):
            raise ValueError(
                "affinity.nodeAffinity must be a core/v1 NodeAffinity: requiredDuringSchedulingIgnoredDuringExecution"
                " a mapping whose nodeSelectorTerms is a list of terms with a matchExpressions list; fix its shape"
            )
        return affinity


KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
GROUP_PATTERN = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class EndpointPickerRef(RuledModel):
    """The endpoint picker a gateway asks which pod serves each request (the InferencePool's
    `endpointPickerRef`, Gateway API Inference Extension v1)."""

    rules = (
        Rule(
            "self.kind != 'Service' || has(self.port)",
            "routing.inferencePool.endpointPickerRef.port is required when kind is Service (the default): "
            "the port of the endpoint picker's gRPC service, e.g. 9002",
            lambda s: s.kind != "Service" or s.port is not None,
            ".port",
        ),
    )

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the endpoint picker.")
    kind: str = Field(default="Service", pattern=KIND_PATTERN, max_length=63, description="Its kind; Service.")
    group: str = Field(default="", pattern=GROUP_PATTERN, max_length=253, description="Its API group; core: empty.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Its port; required for a Service.")
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailClose",
        description="What the gateway does when the picker does not answer: FailClose refuses the request.",
    )


class InferencePoolRouting(CamelModel):
    """An InferencePool (inference.networking.k8s.io/v1) selecting this deployment's serving pods."""

    enabled: bool = Field(default=False, description="Render an InferencePool named like the LlamaDeployment.")
    endpoint_picker_ref: EndpointPickerRef | None = Field(
        default=None, description="The endpoint picker of the pool (llm-d's or the extension's EPP)."
    )


class Routing(CamelModel):
    """How gateways find the serving pods, beside the Service."""

    inference_pool: InferencePoolRouting = Field(
        default_factory=InferencePoolRouting, description="Gateway API Inference Extension InferencePool."
    )


class LlamaDeploymentSpec(RuledModel):
    """Desired state of a LlamaDeployment."""

    rules = (
        Rule(
            "!(self.engine.type in ['vllm', 'tgi']) || self.model.format == 'safetensors'",
            "vllm and tgi serve safetensors models; use engine.type: llamacpp (or auto) for GGUF",
            lambda s: s.engine.type not in ("vllm", "tgi") or s.model.format == "safetensors",
            ".engine.type",
        ),
        Rule(
            "self.engine.type != 'llamacpp' || self.model.format == 'gguf'",
            "llama.cpp serves GGUF files; set model.format: gguf with a GGUF quantization",
            lambda s: s.engine.type != "llamacpp" or s.model.format == "gguf",
            ".engine.type",
        ),
        Rule(
            "!self.placement.cpuOnly || (self.model.format == 'gguf' && self.engine.type in ['auto', 'llamacpp'])",
            "placement.cpuOnly needs a GGUF model served by llama.cpp",
            lambda s: not s.placement.cpu_only or (s.model.format == "gguf" and s.engine.type in ("auto", "llamacpp")),
            ".placement.cpuOnly",
        ),
        Rule(
            "self.placement.maxNodesPerReplica == 1 || self.engine.type in ['auto', 'vllm']",
            "only vLLM spans nodes; set placement.maxNodesPerReplica: 1 for tgi and llamacpp",
            lambda s: s.placement.max_nodes_per_replica == 1 or s.engine.type in ("auto", "vllm"),
            ".placement.maxNodesPerReplica",
        ),
        Rule(
            "self.model.kvCacheDtype == 'auto' || "
            "(self.engine.type in ['auto', 'vllm'] && self.model.format == 'safetensors')",
            "model.kvCacheDtype: fp8 is rendered for vLLM only",
            lambda s: (
                s.model.kv_cache_dtype == "auto"
                or (s.engine.type in ("auto", "vllm") and s.model.format == "safetensors")
            ),
            ".model.kvCacheDtype",
        ),
        *adapter_source_rules(),
        Rule(
            "self.model.format != 'gguf' || !has(self.adapters) || "
            f"self.adapters.all(a, {cel_matches('a.source', NAMES_A_FILE)})",
            "with model.format: gguf every adapter is one GGUF file: name it in adapters[].source, e.g. "
            "hf://org/repo/adapter.gguf or pvc://adapters/adapter.gguf",
            lambda s: s.model.format != "gguf" or all(fully_matches(NAMES_A_FILE, a.source) for a in s.adapters),
            ".adapters",
        ),
        Rule(
            "!self.autoscaling.enabled || "
            "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
            "replicas must lie within autoscaling.minReplicas and maxReplicas while autoscaling is enabled; "
            "set replicas inside the bounds and the autoscaler moves it from there",
            lambda s: (
                not s.autoscaling.enabled or s.autoscaling.min_replicas <= s.replicas <= s.autoscaling.max_replicas
            ),
            ".replicas",
        ),
    )

    model: Model = Field(description="The model to serve.")
    engine: Engine = Field(default_factory=Engine, description="The inference engine.")
    placement: Placement = Field(default_factory=Placement, description="GPU class and count.")
    serving: Serving = Field(default_factory=Serving, description="Serving behaviour.")
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Replicas; the scale subresource and autoscaler set it."
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Queue-based autoscaling.")
    adapters: list[Adapter] = Field(
        default_factory=list, max_length=32, description="LoRA adapters served beside the base model."
    )
    adapter_rollout: AdapterRolloutPolicy = Field(
        default_factory=AdapterRolloutPolicy, description="How adapter changes roll out and roll back."
    )
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Node selection passthrough.")
    routing: Routing = Field(default_factory=Routing, description="Gateway integrations (InferencePool).")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets for pulling the engine image."
    )

    @field_validator("adapters")
    @classmethod
    def _unique_adapter_names(cls, adapters: list[Adapter]) -> list[Adapter]:
        """The CRD keys the list by name (the apiserver says "Duplicate value"); say the same here."""
        names = [a.name for a in adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Duplicate value: adapter names must be unique, repeated: {', '.join(duplicates)}")
        return adapters

    hub_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding the model hub token; mounted as an env var from the Secret, never rendered in args.",
    )
