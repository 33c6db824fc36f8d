"""Architecture facts of the Llama family (from each model's published config.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelFamily = Literal["llama3", "llama4", "other"]


@dataclass(frozen=True)
class ModelFacts:
    """What the memory model needs to know about a transformer."""

    name: str
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context_length: int
    total_parameters: int
    active_parameters: int
    experts: int = 1
    tied_embeddings: bool = False
    family: ModelFamily = "other"

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus, when untied, the output head."""
        one = self.vocab_size * self.hidden_size
        return one if self.tied_embeddings else 2 * one

    def kv_cache_bytes_per_token(self, kv_dtype_bytes: int) -> int:
        """2 (K and V) x layers x KV heads x head dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes

    def lora_parameters_per_rank(self) -> int:
        """LoRA A and B parameters per unit of rank over q, k, v, o, gate, up, down of every layer."""
        q_out = self.attention_heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        per_layer = (
            (self.hidden_size + q_out)  # q_proj
            + 2 * (self.hidden_size + kv_out)  # k_proj, v_proj
            + (q_out + self.hidden_size)  # o_proj
            + 3 * (self.hidden_size + self.intermediate_size)  # gate_proj, up_proj, down_proj
        )
        return per_layer * self.layers


def _llama3(
    name: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    parameters: int,
    head_dim: int = 128,
    tied: bool = False,
) -> ModelFacts:
    return ModelFacts(
        name=name,
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=8,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=128256,
        max_context_length=131072,
        total_parameters=parameters,
        active_parameters=parameters,
        tied_embeddings=tied,
        family="llama3",
    )


def _llama4(name: str, *, experts: int, parameters: int, max_context: int) -> ModelFacts:
    return ModelFacts(
        name=name,
        layers=48,
        hidden_size=5120,
        attention_heads=40,
        kv_heads=8,
        head_dim=128,
        intermediate_size=8192,
        vocab_size=202048,
        max_context_length=max_context,
        total_parameters=parameters,
        active_parameters=17_170_000_000,
        experts=experts,
        family="llama4",
    )


def _llama_70b(name: str) -> ModelFacts:
    return _llama3(name, layers=80, hidden=8192, heads=64, intermediate=28672, parameters=70_553_706_496)


CATALOG: dict[str, ModelFacts] = {
    facts.name: facts
    for facts in (
        _llama3("llama-3.2-1b", layers=16, hidden=2048, heads=32, intermediate=8192, parameters=1_235_814_400,
                head_dim=64, tied=True),
        _llama3("llama-3.2-3b", layers=28, hidden=3072, heads=24, intermediate=8192, parameters=3_212_749_824,
                tied=True),
        _llama3("llama-3.1-8b", layers=32, hidden=4096, heads=32, intermediate=14336, parameters=8_030_261_248),
        _llama_70b("llama-3.1-70b"),
        _llama_70b("llama-3.3-70b"),
        _llama3("llama-3.1-405b", layers=126, hidden=16384, heads=128, intermediate=53248,
                parameters=405_853_388_800),
        # Vision models: 32 + 8 and 80 + 20 layers (self- plus cross-attention); all count for the KV bound.
        _llama3("llama-3.2-11b-vision", layers=40, hidden=4096, heads=32, intermediate=14336,
                parameters=10_670_220_835),
        _llama3("llama-3.2-90b-vision", layers=100, hidden=8192, heads=64, intermediate=28672,
                parameters=88_648_900_000),
        _llama4("llama-4-scout", experts=16, parameters=108_641_793_536, max_context=10_485_760),
        _llama4("llama-4-maverick", experts=128, parameters=401_583_781_376, max_context=1_048_576),
    )
}  # fmt: skip
