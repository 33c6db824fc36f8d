"""The fit decision and the engine flags it hands to the container: what `kubectl get` and status show."""

from __future__ import annotations

import pytest

from llama_operator.engines.registry import engine_args, engine_sizing_args
from llama_operator.sizing.catalog import CATALOG, ModelFacts
from llama_operator.sizing.fit import SizingDecision, SizingRequest, candidates, decide
from llama_operator.sizing.gpu_classes import DEFAULT_INVENTORY, GIB, GpuClass, Inventory
from llama_operator.sizing.memory import ServingEngine, Shape, Workload
from llama_operator.sizing.quantization import GGUF_LADDER, SAFETENSORS_LADDER

VLLM_LORA_RANKS = {1, 8, 16, 32, 64, 128, 256, 320, 512}


def _request(
    name: str,
    quantization: str,
    *,
    context: int = 8192,
    sequences: int = 4,
    engine: ServingEngine = "vllm",
    gpu_class: str = "auto",
    gpu_count: int | None = None,
    cpu_only: bool = False,
    max_nodes: int = 1,
    gguf: bool = False,
) -> SizingRequest:
    work = Workload(CATALOG[name], quantization, context, sequences)
    return SizingRequest(work, engine, gpu_class, gpu_count, cpu_only, max_nodes, gguf)


def _decide(request: SizingRequest) -> SizingDecision:
    return decide(request, DEFAULT_INVENTORY)


def _flags(args: tuple[str, ...]) -> dict[str, str]:
    """Engine args are `--flag value` pairs; map each flag to its value."""
    assert len(args) % 2 == 0, args
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert all(flag.startswith("--") for flag in pairs), args
    assert len(pairs) == len(args) // 2, "a flag is rendered twice"
    return pairs


# Default inventory


def test_default_inventory_is_l4_l40s_h100_with_8_gpus_per_node_and_a_16_gib_cpu_class() -> None:
    by_name = {c.name: c for c in DEFAULT_INVENTORY.gpu_classes}
    assert by_name["gpu-24gb"].memory_mib == 23034
    assert by_name["gpu-48gb"].memory_mib == 46068
    assert by_name["h100-80gb"].memory_mib == 81559
    assert {c.gpus_per_node for c in by_name.values()} == {8}
    assert by_name["gpu-24gb"].cost_per_gpu < by_name["gpu-48gb"].cost_per_gpu < by_name["h100-80gb"].cost_per_gpu
    assert DEFAULT_INVENTORY.cpu is not None
    assert DEFAULT_INVENTORY.cpu.memory_bytes == 16 * GIB


# Decisions


def test_70b_awq_does_not_fit_one_24gb_gpu_and_says_what_would() -> None:
    decision = _decide(_request("llama-3.1-70b", "awq", gpu_class="gpu-24gb", gpu_count=1))
    assert not decision.fits
    assert engine_args(decision) == ()
    assert "does not fit" in decision.reason
    assert "1 x gpu-24gb" in decision.reason
    placement = [a for a in decision.alternatives if a.startswith("placement gpuClass/gpuCount auto")]
    assert placement, decision.alternatives
    # The suggested placement really fits when asked for.
    relaxed = _decide(_request("llama-3.1-70b", "awq"))
    assert relaxed.fits
    assert relaxed.chosen is not None
    assert relaxed.chosen.label in placement[0]


def test_llama4_scout_awq_fits_one_h100_with_8k_context_and_4_sequences() -> None:
    decision = _decide(_request("llama-4-scout", "awq", context=8192, sequences=4, gpu_class="h100-80gb", gpu_count=1))
    assert decision.fits, decision.reason
    assert decision.chosen is not None
    assert decision.chosen.gpu_class is not None
    assert decision.chosen.gpu_class.name == "h100-80gb"
    assert decision.chosen.shape == Shape(gpus_per_node=1, nodes=1)
    assert decision.chosen.memory.total <= decision.chosen.memory.budget
    flags = _flags(engine_args(decision))
    assert flags["--tensor-parallel-size"] == "1"
    assert flags["--max-model-len"] == "8192"


def test_405b_bf16_does_not_fit_one_h100_node_and_suggests_more_nodes_or_fp8() -> None:
    decision = _decide(_request("llama-3.1-405b", "bf16", max_nodes=1))
    assert not decision.fits
    assert "8 x h100-80gb" in decision.reason  # the largest placement that was tried
    assert any(a.startswith("placement.maxNodesPerReplica: 2") for a in decision.alternatives), decision.alternatives
    assert any(a.startswith("model.quantization: fp8") for a in decision.alternatives), decision.alternatives


def test_405b_bf16_fits_two_nodes_of_8_h100() -> None:
    decision = _decide(_request("llama-3.1-405b", "bf16", max_nodes=2))
    assert decision.fits, decision.reason
    assert decision.chosen is not None
    assert decision.chosen.gpu_class is not None
    assert decision.chosen.gpu_class.name == "h100-80gb"
    assert decision.chosen.shape == Shape(gpus_per_node=8, nodes=2)
    flags = _flags(engine_args(decision))
    assert flags["--tensor-parallel-size"] == "8"
    assert flags["--pipeline-parallel-size"] == "2"


def test_8b_bf16_with_8k_times_2_is_placed_on_one_24gb_gpu() -> None:
    decision = _decide(_request("llama-3.1-8b", "bf16", context=8192, sequences=2))
    assert decision.fits
    assert decision.chosen is not None
    assert decision.chosen.label == "1 x gpu-24gb"
    assert "cheapest fitting plan: 1 x gpu-24gb" in decision.reason


def test_3b_q4_k_m_on_cpu_only_fits_the_cpu_class() -> None:
    decision = _decide(_request("llama-3.2-3b", "q4_k_m", engine="llamacpp", cpu_only=True, gguf=True))
    assert decision.fits, decision.reason
    assert decision.chosen is not None
    assert decision.chosen.gpu_class is None
    assert decision.chosen.label == "cpu"
    assert DEFAULT_INVENTORY.cpu is not None
    assert decision.chosen.memory.budget == int(DEFAULT_INVENTORY.cpu.memory_bytes * 0.85)
    assert decision.chosen.memory.host_bytes <= DEFAULT_INVENTORY.cpu.memory_bytes


def test_cpu_only_is_refused_for_gpu_engines() -> None:
    decision = _decide(_request("llama-3.2-1b", "bf16", engine="vllm", cpu_only=True))
    assert not decision.fits
    assert "no CPU nodes" in decision.reason


def test_cpu_only_without_cpu_nodes_is_refused() -> None:
    gpu_only = Inventory(DEFAULT_INVENTORY.gpu_classes, cpu=None)
    decision = decide(_request("llama-3.2-1b", "q4_k_m", engine="llamacpp", cpu_only=True), gpu_only)
    assert not decision.fits
    assert "no CPU nodes" in decision.reason


@pytest.mark.parametrize(
    ("name", "quantization", "engine"),
    [
        ("llama-3.1-8b", "bf16", "vllm"),
        ("llama-3.1-70b", "fp8", "vllm"),
        ("llama-3.1-70b", "awq", "tgi"),
        ("llama-4-scout", "awq", "vllm"),
        ("llama-3.1-8b", "q4_k_m", "llamacpp"),
    ],
)
def test_the_chosen_plan_is_the_cheapest_that_fits(name: str, quantization: str, engine: ServingEngine) -> None:
    request = _request(name, quantization, engine=engine)
    decision = decide(request, DEFAULT_INVENTORY)
    assert decision.chosen is not None
    fitting = [c for c in candidates(request, DEFAULT_INVENTORY) if c.memory.fits]
    assert decision.chosen in fitting
    assert all(decision.chosen.cost <= other.cost for other in fitting)
    # A plan that does not fit is never chosen, however cheap.
    assert decision.chosen.memory.fits


def test_pinned_gpu_class_that_does_not_exist_lists_the_known_classes() -> None:
    decision = _decide(_request("llama-3.1-8b", "bf16", gpu_class="a100-40gb"))
    assert not decision.fits
    assert "gpuClass=a100-40gb" in decision.reason
    for known in ("gpu-24gb", "gpu-48gb", "h100-80gb"):
        assert known in decision.reason


def test_pinned_gpu_count_is_respected() -> None:
    decision = _decide(_request("llama-3.1-8b", "bf16", gpu_count=2))
    assert decision.chosen is not None
    assert decision.chosen.shape.gpus == 2


def test_context_suggestion_names_a_context_that_fits() -> None:
    decision = _decide(_request("llama-3.1-8b", "bf16", context=131072, sequences=1, gpu_class="gpu-24gb", gpu_count=1))
    assert not decision.fits
    context_hints = [a for a in decision.alternatives if a.startswith("model.contextLength: ")]
    assert context_hints, decision.alternatives
    suggested = int(context_hints[0].split(":")[1])
    assert suggested < 131072
    assert _decide(
        _request("llama-3.1-8b", "bf16", context=suggested, sequences=1, gpu_class="gpu-24gb", gpu_count=1)
    ).fits


def test_gguf_refusal_suggests_a_gguf_quantization() -> None:
    request = _request(
        "llama-3.1-8b",
        "q8_0",
        engine="llamacpp",
        gguf=True,
        context=131072,
        sequences=1,
        gpu_class="gpu-24gb",
        gpu_count=1,
    )
    decision = _decide(request)
    assert not decision.fits
    quantization_hints = [a.split(":")[1].strip() for a in decision.alternatives if a.startswith("model.quantization")]
    assert quantization_hints, decision.alternatives
    assert quantization_hints[0] in GGUF_LADDER
    assert not set(quantization_hints) & set(SAFETENSORS_LADDER)


def test_multi_node_is_never_planned_beyond_the_nodes_that_exist() -> None:
    one_h100_node = Inventory((GpuClass("h100-80gb", 78_000, 100_000, 81_559, 6.0, nodes=1),), cpu=None)
    decision = decide(_request("llama-3.1-405b", "bf16", max_nodes=4), one_h100_node)
    assert not decision.fits
    assert not any("maxNodesPerReplica" in a for a in decision.alternatives)


def test_class_costs_are_configurable() -> None:
    """With 48 GB cards cheaper per GPU than 24 GB ones, the 8B goes to a 48 GB card."""
    classes = tuple(
        GpuClass(c.name, c.min_memory_mib, c.max_memory_mib, c.memory_mib, 0.5 if c.name == "gpu-48gb" else 1.0)
        for c in DEFAULT_INVENTORY.gpu_classes
    )
    decision = decide(_request("llama-3.1-8b", "bf16", sequences=2), Inventory(classes, cpu=None))
    assert decision.chosen is not None
    assert decision.chosen.label == "1 x gpu-48gb"


# Engine flags


def test_vllm_flags_pin_context_parallelism_memory_and_sequences() -> None:
    decision = _decide(_request("llama-3.1-70b", "fp8", context=16384, sequences=8))
    assert decision.chosen is not None
    flags = _flags(engine_args(decision))
    assert flags["--max-model-len"] == "16384"
    assert flags["--tensor-parallel-size"] == str(decision.chosen.shape.gpus_per_node)
    assert decision.chosen.shape.gpus_per_node > 1
    assert flags["--gpu-memory-utilization"] == "0.90"
    assert flags["--max-num-seqs"] == "8"
    assert flags["--kv-cache-dtype"] == "auto"
    assert "--max-lora-rank" not in flags


def test_vllm_fp8_kv_cache_flag() -> None:
    work = Workload(CATALOG["llama-3.1-8b"], "bf16", 8192, 4, kv_dtype_bytes=1)
    assert _flags(engine_sizing_args("vllm", work, Shape(1)))["--kv-cache-dtype"] == "fp8"


def test_tgi_flags_shard_and_bound_tokens() -> None:
    decision = _decide(_request("llama-3.1-70b", "awq", engine="tgi", context=8192, sequences=4))
    assert decision.chosen is not None
    flags = _flags(engine_args(decision))
    assert flags["--num-shard"] == str(decision.chosen.shape.gpus_per_node)
    assert flags["--max-total-tokens"] == "8192"
    assert int(flags["--max-input-tokens"]) < int(flags["--max-total-tokens"])
    assert int(flags["--max-batch-prefill-tokens"]) >= int(flags["--max-input-tokens"])
    assert flags["--max-batch-total-tokens"] == str(8192 * 4)


def test_llamacpp_cpu_flags() -> None:
    decision = _decide(_request("llama-3.2-3b", "q4_k_m", engine="llamacpp", cpu_only=True, context=4096, sequences=3))
    assert decision.fits
    flags = _flags(engine_args(decision))
    assert flags["--n-gpu-layers"] == "0"
    assert flags["--ctx-size"] == str(4096 * 3)
    assert flags["--parallel"] == "3"


def test_llamacpp_gpu_flags_offload_every_layer_and_the_output() -> None:
    decision = _decide(_request("llama-3.1-8b", "q4_k_m", engine="llamacpp", context=8192, sequences=4))
    assert decision.chosen is not None
    assert decision.chosen.gpu_class is not None
    flags = _flags(engine_args(decision))
    assert flags["--n-gpu-layers"] == str(32 + 1)
    assert flags["--ctx-size"] == str(8192 * 4)
    assert flags["--parallel"] == "4"


def test_llamacpp_on_several_gpus_splits_by_layer() -> None:
    work = Workload(CATALOG["llama-3.1-70b"], "q4_k_m", 8192, 1)
    assert _flags(engine_sizing_args("llamacpp", work, Shape(2)))["--split-mode"] == "layer"
    assert "--split-mode" not in _flags(engine_sizing_args("llamacpp", work, Shape(1)))


def test_vllm_max_lora_rank_is_an_allowed_value_that_holds_the_adapter() -> None:
    for rank in range(1, 513):
        work = Workload(CATALOG["llama-3.1-8b"], "bf16", 8192, 4, adapters=3, max_adapter_rank=rank)
        flags = _flags(engine_sizing_args("vllm", work, Shape(1)))
        assert int(flags["--max-lora-rank"]) in VLLM_LORA_RANKS, rank
        assert int(flags["--max-lora-rank"]) >= rank
        assert flags["--max-loras"] == "3"


def _custom_model(heads: int, kv_heads: int) -> ModelFacts:
    hidden = heads * 128
    return ModelFacts(
        name="custom",
        layers=40,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=128,
        intermediate_size=4 * hidden,
        vocab_size=32000,
        max_context_length=32768,
        total_parameters=14_000_000_000,
        active_parameters=14_000_000_000,
    )


def _tensor_parallel_offered(model: ModelFacts, engine: ServingEngine, inventory: Inventory) -> set[int]:
    request = SizingRequest(Workload(model, "bf16", 4096, 1), engine)
    return {c.shape.gpus_per_node for c in candidates(request, inventory) if c.shape.nodes == 1}


def test_only_tensor_parallel_sizes_the_engine_can_load_are_planned() -> None:
    """40 query heads over 10 KV heads: vLLM and TGI split both evenly, so TP 4 and 8 would not start."""
    model = _custom_model(heads=40, kv_heads=10)
    assert _tensor_parallel_offered(model, "vllm", DEFAULT_INVENTORY) == {1, 2}
    assert _tensor_parallel_offered(model, "tgi", DEFAULT_INVENTORY) == {1, 2}
    assert _tensor_parallel_offered(model, "llamacpp", DEFAULT_INVENTORY) == {1, 2, 4, 8}


def test_vllm_replicates_kv_heads_beyond_their_count_but_tgi_does_not() -> None:
    sixteen_gpu_nodes = Inventory((GpuClass("h100-80gb", 78_000, 100_000, 81_559, 6.0, gpus_per_node=16),), cpu=None)
    model = _custom_model(heads=64, kv_heads=8)
    assert 16 in _tensor_parallel_offered(model, "vllm", sixteen_gpu_nodes)
    assert _tensor_parallel_offered(model, "tgi", sixteen_gpu_nodes) == {1, 2, 4, 8}
