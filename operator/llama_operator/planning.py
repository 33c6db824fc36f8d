"""From a parsed spec to a sizing decision, and from the decision to `status.sizing`."""

from __future__ import annotations

from collections.abc import Collection

from llama_operator.api.parse import InvalidSpecError
from llama_operator.api.spec import Architecture, LlamaDeploymentSpec
from llama_operator.api.status import PerGpuBytes, SizingStatus
from llama_operator.engines import render_engine_container
from llama_operator.engines.base import EngineInput
from llama_operator.engines.engine import RenderedFlags
from llama_operator.engines.registry import auto_engine, engine, engine_args
from llama_operator.sizing.catalog import CATALOG, ModelFacts
from llama_operator.sizing.fit import SizingDecision, SizingRequest, decide
from llama_operator.sizing.gpu_classes import Inventory
from llama_operator.sizing.memory import DEFAULT_LORA_RANK, ServingEngine, Workload

DEFAULT_CONTEXT_LENGTH = 8192
BILLION = 1_000_000_000


def facts_from_architecture(name: str, arch: Architecture) -> ModelFacts:
    total = round(arch.parameters_billions * BILLION)
    active = round((arch.active_parameters_billions or arch.parameters_billions) * BILLION)
    return ModelFacts(
        name=name,
        layers=arch.layers,
        hidden_size=arch.hidden_size,
        attention_heads=arch.attention_heads,
        kv_heads=arch.kv_heads,
        head_dim=arch.head_dim or arch.hidden_size // arch.attention_heads,
        intermediate_size=arch.intermediate_size,
        vocab_size=arch.vocab_size,
        max_context_length=arch.max_context_length,
        total_parameters=total,
        active_parameters=active,
        experts=arch.experts,
        tied_embeddings=arch.tied_embeddings,
    )


def model_facts(spec: LlamaDeploymentSpec, name: str) -> ModelFacts:
    if spec.model.catalog_name is not None:
        return CATALOG[spec.model.catalog_name]
    if spec.model.architecture is None:  # the spec's own rule refuses this; keep the type checker honest
        raise InvalidSpecError("set model.catalogName or model.architecture")
    return facts_from_architecture(name, spec.model.architecture)


def resolve_engine(spec: LlamaDeploymentSpec) -> ServingEngine:
    """engine.type, or for auto the registry's pick (llama.cpp for GGUF or CPU-only, vLLM otherwise)."""
    if spec.engine.type != "auto":
        return spec.engine.type
    return auto_engine(model_format=spec.model.format, cpu_only=spec.placement.cpu_only)


def context_length(spec: LlamaDeploymentSpec, facts: ModelFacts) -> int:
    if spec.model.context_length is None:
        return min(DEFAULT_CONTEXT_LENGTH, facts.max_context_length)
    if spec.model.context_length > facts.max_context_length:
        raise InvalidSpecError(
            f"spec.model.contextLength {spec.model.context_length} exceeds {facts.name}'s maximum of "
            f"{facts.max_context_length} tokens; lower it"
        )
    return spec.model.context_length


def model_identities(spec: LlamaDeploymentSpec) -> set[str]:
    """Names an adapter's `baseModel` may use for this model: the catalog name and the hub repository."""
    names: set[str] = {spec.model.catalog_name} if spec.model.catalog_name else set()
    if spec.model.source.startswith("hf://"):
        parts = spec.model.source.removeprefix("hf://").split("/")
        names.add("/".join(parts[:2]))
    return {n.lower() for n in names}


def check_adapter_base_models(spec: LlamaDeploymentSpec) -> None:
    """An adapter trained on another base model is refused before any rollout."""
    known = model_identities(spec)
    for adapter in spec.adapters:
        if adapter.base_model and adapter.base_model.lower() not in known:
            raise InvalidSpecError(
                f"spec.adapters[{adapter.name}].baseModel {adapter.base_model!r} is not the served model "
                f"({', '.join(sorted(known)) or 'a model without a catalog name or hub repository'}); "
                "use an adapter trained on this model or remove baseModel"
            )


def sizing_request(spec: LlamaDeploymentSpec, name: str) -> SizingRequest:
    check_adapter_base_models(spec)
    facts = model_facts(spec, name)
    ranks = [a.rank for a in spec.adapters if a.rank is not None]
    work = Workload(
        model=facts,
        quantization=spec.model.quantization,
        context_length=context_length(spec, facts),
        max_sequences=spec.serving.max_concurrent_sequences,
        kv_dtype_bytes=1 if spec.model.kv_cache_dtype == "fp8" else 2,
        adapters=len(spec.adapters),
        max_adapter_rank=max(ranks, default=DEFAULT_LORA_RANK),
    )
    gpu_count = spec.placement.gpu_count
    return SizingRequest(
        work=work,
        engine=resolve_engine(spec),
        gpu_class=spec.placement.gpu_class,
        gpu_count=None if gpu_count == "auto" else gpu_count,
        cpu_only=spec.placement.cpu_only,
        max_nodes=spec.placement.max_nodes_per_replica,
        gguf=spec.model.format == "gguf",
    )


def plan(spec: LlamaDeploymentSpec, name: str, inventory: Inventory) -> SizingDecision:
    """The sizing decision for one LlamaDeployment; raises InvalidSpecError for specs no cluster can fix."""
    decision = decide(sizing_request(spec, name), inventory)
    check_extra_args(spec, name, decision)
    return decision


def flag_name(token: str) -> str | None:
    """The flag an argument names (`--max_model_len=8192` -> `--max-model-len`), or None for a value."""
    if not token.startswith("-") or token in ("-", "--") or token[1:2].isdigit() or token[1:2] == ".":
        return None
    name = token.partition("=")[0]
    return name.replace("_", "-")


def repeated_flag(token: str, rendered: Collection[str], flags: RenderedFlags) -> str | None:
    """The rendered flag `token` would set again, in any spelling the engine's parser reads, or None."""
    name = flag_name(token)
    if name is None:
        return None
    meant = flags.aliases.get(name, name)
    if meant in rendered:
        return meant
    if flags.abbreviations and name.startswith("--") and len(name) > 2:
        return next((flag for flag in sorted(rendered) if flag.startswith(name)), None)
    return None


def repeated_flag_problem(token: str, flag: str, flags: RenderedFlags) -> str:
    spelled = token.partition("=")[0]
    named = flag if spelled == flag else f"{spelled} ({flag})"
    source = flags.sources.get(flag)
    if source is None:
        return f"spec.engine.extraArgs: {named} is rendered by the operator; remove it"
    if source.startswith("spec."):
        return f"spec.engine.extraArgs: {named} is rendered from {source}; set that instead"
    return f"spec.engine.extraArgs: {named} is rendered by the operator ({source}); remove it"


def check_extra_args(spec: LlamaDeploymentSpec, name: str, decision: SizingDecision) -> None:
    """engine.extraArgs may not repeat a flag the operator renders for this plan: TGI's launcher refuses a
    repeated flag and vLLM keeps the last, undoing what the sizing planned. Refused, naming what sets it."""
    if not spec.engine.extra_args or decision.chosen is None:
        return  # nothing is rendered for a plan that does not fit
    without_extras = spec.model_copy(update={"engine": spec.engine.model_copy(update={"extra_args": []})})
    inp = EngineInput(name=name, spec=without_extras, decision=decision, adapters=tuple(spec.adapters))
    args = render_engine_container(inp).container["args"]
    rendered = {flag for flag in map(flag_name, args) if flag is not None}
    flags = engine(decision.request.engine).rendered_flags
    problems = [
        repeated_flag_problem(token, flag, flags)
        for token in spec.engine.extra_args
        if (flag := repeated_flag(token, rendered, flags)) is not None
    ]
    if problems:
        raise InvalidSpecError("; ".join(problems))


def sizing_status(decision: SizingDecision) -> SizingStatus:
    chosen = decision.chosen
    work = decision.request.work
    shown = chosen or decision.closest  # a refusal shows the arithmetic of the largest placement tried
    per_gpu = (
        PerGpuBytes(
            weights=shown.memory.weights,
            kv_cache=shown.memory.kv_cache,
            overhead=shown.memory.overhead,
            total=shown.memory.total,
        )
        if shown is not None
        else None
    )
    return SizingStatus(
        fits=chosen is not None,
        engine=decision.request.engine,
        gpu_class=chosen.gpu_class.name if chosen and chosen.gpu_class else None,
        gpu_memory_bytes=chosen.gpu_class.memory_bytes if chosen and chosen.gpu_class else None,
        gpus_per_replica=chosen.shape.gpus if chosen else 0,
        tensor_parallel=chosen.shape.gpus_per_node if chosen and chosen.shape.gpus else 1,
        nodes_per_replica=chosen.shape.nodes if chosen else 1,
        per_gpu_bytes=per_gpu,
        context_length=work.context_length,
        max_concurrent_sequences=work.max_sequences,
        engine_args=list(engine_args(decision)),
        reason=decision.reason,
        alternatives=list(decision.alternatives),
        cost_per_replica=chosen.cost if chosen else None,
    )


def placement_summary(decision: SizingDecision) -> str:
    """`gpu-24gb x1`, `h100-80gb x16 (2 nodes)` or `cpu`: the printer column."""
    chosen = decision.chosen
    if chosen is None:
        return "none"
    if chosen.gpu_class is None:
        return "cpu"
    nodes = f" ({chosen.shape.nodes} nodes)" if chosen.shape.nodes > 1 else ""
    return f"{chosen.gpu_class.name} x{chosen.shape.gpus}{nodes}"
