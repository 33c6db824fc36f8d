"""Architecture facts of the Llama catalog: the numbers every sizing decision starts from."""

from __future__ import annotations

import pytest

from llama_operator.sizing.catalog import CATALOG, ModelFacts

KIB = 1024

LLAMA3_TEXT_MODELS = (
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.3-70b",
    "llama-3.1-405b",
)


@pytest.mark.parametrize(
    ("name", "kib_per_token"),
    [
        ("llama-3.2-1b", 32),
        ("llama-3.2-3b", 112),
        ("llama-3.1-8b", 128),
        ("llama-3.1-70b", 320),
        ("llama-3.3-70b", 320),
        ("llama-3.1-405b", 504),
    ],
)
def test_bf16_kv_cache_bytes_per_token(name: str, kib_per_token: int) -> None:
    assert CATALOG[name].kv_cache_bytes_per_token(2) == kib_per_token * KIB


def test_fp8_kv_cache_is_half_of_bf16() -> None:
    model = CATALOG["llama-3.1-70b"]
    assert model.kv_cache_bytes_per_token(1) * 2 == model.kv_cache_bytes_per_token(2)


def test_llama4_scout_is_16_experts_109b_total_17b_active() -> None:
    scout = CATALOG["llama-4-scout"]
    assert scout.experts == 16
    assert round(scout.total_parameters / 1e9) == 109
    assert round(scout.active_parameters / 1e9) == 17
    assert scout.family == "llama4"


def test_llama4_maverick_is_128_experts_about_400b_total_17b_active() -> None:
    maverick = CATALOG["llama-4-maverick"]
    assert maverick.experts == 128
    assert 395e9 <= maverick.total_parameters <= 405e9
    assert round(maverick.active_parameters / 1e9) == 17


def test_catalog_holds_the_llama_family() -> None:
    expected = {
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
    }
    assert expected <= set(CATALOG)


@pytest.mark.parametrize("model", list(CATALOG.values()), ids=list(CATALOG))
def test_every_entry_is_a_consistent_architecture(model: ModelFacts) -> None:
    assert model.attention_heads % model.kv_heads == 0, "query heads must group evenly over KV heads"
    assert model.active_parameters <= model.total_parameters
    assert model.hidden_size == model.attention_heads * model.head_dim
    assert 0 < model.embedding_parameters < model.total_parameters
    assert model.max_context_length >= 131072
    assert (model.experts > 1) == (model.active_parameters < model.total_parameters)


@pytest.mark.parametrize("name", LLAMA3_TEXT_MODELS)
def test_dense_parameter_count_matches_the_architecture(name: str) -> None:
    """Embeddings + per layer (q, k, v, o, gate, up, down, two norms) + final norm = the published count."""
    model = CATALOG[name]
    q_out = model.attention_heads * model.head_dim
    kv_out = model.kv_heads * model.head_dim
    per_layer = (
        model.hidden_size * (q_out + 2 * kv_out)
        + q_out * model.hidden_size
        + 3 * model.hidden_size * model.intermediate_size
        + 2 * model.hidden_size
    )
    counted = model.embedding_parameters + model.layers * per_layer + model.hidden_size
    assert counted == model.total_parameters


def test_small_llama_32_models_tie_embeddings_and_large_ones_do_not() -> None:
    assert CATALOG["llama-3.2-1b"].tied_embeddings
    assert CATALOG["llama-3.2-3b"].tied_embeddings
    assert not CATALOG["llama-3.1-8b"].tied_embeddings
    one_table = CATALOG["llama-3.1-8b"].vocab_size * CATALOG["llama-3.1-8b"].hidden_size
    assert CATALOG["llama-3.1-8b"].embedding_parameters == 2 * one_table
    assert CATALOG["llama-3.2-1b"].embedding_parameters == CATALOG["llama-3.2-1b"].vocab_size * 2048


def test_lora_parameters_per_rank_of_8b() -> None:
    """Rank 16 over all seven projections of Llama 3.1 8B is about 42M parameters (published adapters)."""
    model = CATALOG["llama-3.1-8b"]
    assert model.lora_parameters_per_rank() * 16 == 41_943_040
