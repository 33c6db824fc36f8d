"""Weights, KV cache and overheads per GPU: the parts a user reads in status.sizing."""

from __future__ import annotations

import pytest

from llama_operator.sizing.catalog import CATALOG
from llama_operator.sizing.memory import (
    GIB,
    MIB,
    MemoryEstimate,
    ServingEngine,
    Shape,
    Workload,
    estimate,
    kv_cache_bytes_per_gpu,
    tgi_max_input_tokens,
)
from llama_operator.sizing.quantization import (
    GGUF_LADDER,
    QUANTIZATIONS,
    SAFETENSORS_LADDER,
    embedding_bytes,
    weight_bytes,
)

L4_BYTES = 23_034 * MIB
H100_BYTES = 81_559 * MIB


def _work(name: str, quantization: str = "bf16", context: int = 8192, sequences: int = 4, **extra: int) -> Workload:
    return Workload(CATALOG[name], quantization, context, sequences, **extra)


# Weights


def test_llama_31_8b_bf16_weights_are_about_15_gib() -> None:
    assert 14.9 * GIB <= weight_bytes(CATALOG["llama-3.1-8b"], "bf16") <= 15.1 * GIB


def test_llama_31_8b_q4_k_m_weights_are_about_4_6_gib() -> None:
    assert 4.4 * GIB <= weight_bytes(CATALOG["llama-3.1-8b"], "q4_k_m") <= 4.7 * GIB


def test_llama_31_70b_awq_weights_are_about_38_gib() -> None:
    assert 37 * GIB <= weight_bytes(CATALOG["llama-3.1-70b"], "awq") <= 39 * GIB


def test_llama_31_405b_fp8_keeps_bf16_embeddings() -> None:
    model = CATALOG["llama-3.1-405b"]
    body = model.total_parameters - model.embedding_parameters
    assert weight_bytes(model, "fp8") == body + 2 * model.embedding_parameters
    assert 375 * GIB <= weight_bytes(model, "fp8") <= 385 * GIB


def test_moe_weights_count_every_expert() -> None:
    scout = CATALOG["llama-4-scout"]
    assert weight_bytes(scout, "bf16") == 2 * scout.total_parameters
    assert weight_bytes(scout, "bf16") > 3 * 2 * scout.active_parameters


@pytest.mark.parametrize(("name", "bits"), [("q8_0", 8.5), ("q4_0", 4.5), ("q6_k", 6.5625), ("q5_0", 5.5)])
def test_gguf_block_sizes(name: str, bits: float) -> None:
    assert QUANTIZATIONS[name].bits_per_weight == bits
    assert not QUANTIZATIONS[name].embeddings_in_bf16


@pytest.mark.parametrize(("name", "bits"), [("bf16", 16.0), ("fp8", 8.0), ("int8", 8.0), ("awq", 4.25), ("gptq", 4.25)])
def test_checkpoint_quantizations_keep_bf16_embeddings(name: str, bits: float) -> None:
    assert QUANTIZATIONS[name].bits_per_weight == bits
    assert QUANTIZATIONS[name].embeddings_in_bf16


def test_k_quant_mixes_sit_above_their_base_block() -> None:
    table = QUANTIZATIONS
    assert table["q4_0"].bits_per_weight < table["q4_k_s"].bits_per_weight < table["q4_k_m"].bits_per_weight
    assert table["q4_k_m"].bits_per_weight < table["q5_k_s"].bits_per_weight < table["q5_k_m"].bits_per_weight
    assert table["q5_k_m"].bits_per_weight < table["q6_k"].bits_per_weight < table["q8_0"].bits_per_weight


@pytest.mark.parametrize("ladder", [SAFETENSORS_LADDER, GGUF_LADDER])
def test_suggestion_ladders_go_from_most_to_least_precise(ladder: tuple[str, ...]) -> None:
    bits = [QUANTIZATIONS[name].bits_per_weight for name in ladder]
    assert bits == sorted(bits, reverse=True)
    assert len(set(bits)) == len(bits)


def test_safetensors_ladder_is_checkpoint_formats_and_gguf_ladder_is_gguf() -> None:
    assert all(QUANTIZATIONS[name].embeddings_in_bf16 for name in SAFETENSORS_LADDER)
    assert not any(QUANTIZATIONS[name].embeddings_in_bf16 for name in GGUF_LADDER)


def test_embedding_bytes_follow_the_file_format() -> None:
    model = CATALOG["llama-3.1-8b"]
    table = model.vocab_size * model.hidden_size
    assert embedding_bytes(model, "awq") == 2 * table
    assert embedding_bytes(model, "q8_0") == round(table * 8.5 / 8)


# KV cache


def test_kv_cache_of_8b_at_8k_times_4_is_4_gib_on_one_gpu() -> None:
    assert kv_cache_bytes_per_gpu(_work("llama-3.1-8b"), Shape(1)) == 4 * GIB


def test_kv_cache_splits_kv_heads_over_tensor_parallel_ranks() -> None:
    work = _work("llama-3.1-70b")
    one = kv_cache_bytes_per_gpu(work, Shape(1))
    assert one == 320 * 1024 * 8192 * 4
    assert kv_cache_bytes_per_gpu(work, Shape(2)) == one // 2
    assert kv_cache_bytes_per_gpu(work, Shape(8)) == one // 8


def test_kv_cache_is_replicated_when_tensor_parallel_exceeds_kv_heads() -> None:
    work = _work("llama-3.1-70b")  # 8 KV heads
    assert kv_cache_bytes_per_gpu(work, Shape(16)) == kv_cache_bytes_per_gpu(work, Shape(8))


def test_kv_cache_splits_layers_over_pipeline_stages() -> None:
    work = _work("llama-3.1-405b")  # 126 layers
    assert kv_cache_bytes_per_gpu(work, Shape(8, nodes=2)) * 2 == kv_cache_bytes_per_gpu(work, Shape(8))
    per_layer_per_gpu = kv_cache_bytes_per_gpu(work, Shape(8)) // 126
    assert kv_cache_bytes_per_gpu(work, Shape(8, nodes=4)) == 32 * per_layer_per_gpu  # ceil(126 / 4)


def test_fp8_kv_cache_halves_the_cache() -> None:
    bf16 = estimate(_work("llama-3.1-8b"), "vllm", Shape(1), L4_BYTES)
    fp8 = estimate(_work("llama-3.1-8b", kv_dtype_bytes=1), "vllm", Shape(1), L4_BYTES)
    assert fp8.kv_cache * 2 == bf16.kv_cache
    assert fp8.weights == bf16.weights


# Engine estimates


def _parts_add_up(memory: MemoryEstimate) -> None:
    assert memory.overhead == sum(memory.overhead_parts.values())
    assert memory.total == memory.weights + memory.kv_cache + memory.overhead
    assert memory.fits == (memory.total <= memory.budget)


def test_vllm_budget_is_90_percent_of_the_card() -> None:
    memory = estimate(_work("llama-3.1-8b"), "vllm", Shape(1), L4_BYTES)
    _parts_add_up(memory)
    assert memory.budget == int(L4_BYTES * 0.90)
    assert memory.weights == weight_bytes(CATALOG["llama-3.1-8b"], "bf16")


def test_tgi_budget_is_90_percent_of_the_card() -> None:
    memory = estimate(_work("llama-3.1-8b"), "tgi", Shape(1), L4_BYTES)
    _parts_add_up(memory)
    assert memory.budget == int(L4_BYTES * 0.90)


def test_tensor_parallel_divides_weights_and_adds_nccl_buffers() -> None:
    work = _work("llama-3.1-70b", "fp8")
    one = estimate(work, "vllm", Shape(1), H100_BYTES)
    four = estimate(work, "vllm", Shape(4), H100_BYTES)
    _parts_add_up(four)
    assert four.weights == one.weights // 4
    assert one.overhead_parts["nccl"] == 0
    assert 512 * MIB <= four.overhead_parts["nccl"] <= GIB


def test_8b_bf16_at_full_131k_context_does_not_fit_one_l4_on_vllm() -> None:
    """vLLM's default max-model-len for Llama 3.x: the documented start-up failure on a 24 GB card."""
    memory = estimate(_work("llama-3.1-8b", context=131072, sequences=1), "vllm", Shape(1), L4_BYTES)
    assert not memory.fits
    assert memory.kv_cache == 16 * GIB


def test_tgi_prefill_warmup_grows_with_the_input_window() -> None:
    short = estimate(_work("llama-3.1-8b", context=4096), "tgi", Shape(1), H100_BYTES)
    long = estimate(_work("llama-3.1-8b", context=32768), "tgi", Shape(1), H100_BYTES)
    assert long.overhead_parts["prefillWarmup"] > short.overhead_parts["prefillWarmup"]


@pytest.mark.parametrize("context", [256, 2048, 4096, 4097, 8192, 131072])
def test_tgi_max_input_leaves_room_for_an_answer(context: int) -> None:
    max_input = tgi_max_input_tokens(context)
    assert 0 < max_input < context
    assert context - max_input <= 2048


def test_vllm_lora_slots_cost_memory() -> None:
    plain = estimate(_work("llama-3.1-8b"), "vllm", Shape(1), H100_BYTES)
    with_lora = estimate(_work("llama-3.1-8b", adapters=2, max_adapter_rank=16), "vllm", Shape(1), H100_BYTES)
    assert plain.overhead_parts["lora"] == 0
    # two slots x rank 16 x ~2.6M parameters per rank x bf16
    assert with_lora.overhead_parts["lora"] == 2 * 16 * CATALOG["llama-3.1-8b"].lora_parameters_per_rank() * 2


def test_llamacpp_keeps_an_untied_token_embedding_on_the_host() -> None:
    work = _work("llama-3.1-8b", "q8_0")
    memory = estimate(work, "llamacpp", Shape(1), L4_BYTES)
    _parts_add_up(memory)
    embedding = embedding_bytes(CATALOG["llama-3.1-8b"], "q8_0")
    assert memory.weights == weight_bytes(CATALOG["llama-3.1-8b"], "q8_0") - embedding
    assert memory.host_bytes >= embedding
    assert memory.budget == int(L4_BYTES * 0.95)


def test_llamacpp_tied_model_has_all_weights_on_the_gpu() -> None:
    memory = estimate(_work("llama-3.2-1b", "q8_0"), "llamacpp", Shape(1), L4_BYTES)
    assert memory.weights == weight_bytes(CATALOG["llama-3.2-1b"], "q8_0")


def test_llamacpp_on_two_gpus_splits_whole_layers() -> None:
    work = _work("llama-3.1-8b", "q4_k_m")
    one = estimate(work, "llamacpp", Shape(1), L4_BYTES)
    two = estimate(work, "llamacpp", Shape(2), L4_BYTES)
    assert two.kv_cache * 2 == one.kv_cache  # 32 layers, all 8 KV heads each
    assert two.weights == one.weights // 2


def test_llamacpp_on_cpu_requests_everything_as_pod_memory() -> None:
    memory = estimate(_work("llama-3.2-3b", "q4_k_m"), "llamacpp", Shape(0), None)
    assert memory.host_bytes == memory.total
    assert memory.weights == weight_bytes(CATALOG["llama-3.2-3b"], "q4_k_m")
    assert memory.kv_cache == 112 * 1024 * 8192 * 4


@pytest.mark.parametrize("engine", ["vllm", "tgi"])
def test_gpu_engines_refuse_cpu(engine: ServingEngine) -> None:
    with pytest.raises(ValueError, match=r"only llama\.cpp runs on CPU"):
        estimate(_work("llama-3.2-1b"), engine, Shape(0), None)


def test_gpu_pod_memory_request_covers_streaming_the_node_weights() -> None:
    memory = estimate(_work("llama-3.1-70b"), "vllm", Shape(8), H100_BYTES)
    assert memory.host_bytes >= 8 * GIB + memory.weights * 8 // 2
