"""Bits per weight of every quantization we accept, and the resulting weight bytes."""

from __future__ import annotations

from dataclasses import dataclass

from llama_operator.sizing.catalog import ModelFacts

BF16_BITS = 16.0


@dataclass(frozen=True)
class QuantizationFacts:
    name: str
    bits_per_weight: float
    # Checkpoint quantizers (fp8, int8, AWQ, GPTQ) keep the embeddings and the output head in bf16;
    # GGUF files quantize every tensor with the same mixture.
    embeddings_in_bf16: bool


_TABLE = (
    QuantizationFacts("none", 16.0, True),
    QuantizationFacts("bf16", 16.0, True),
    QuantizationFacts("fp16", 16.0, True),
    QuantizationFacts("f16", 16.0, False),
    QuantizationFacts("fp8", 8.0, True),
    QuantizationFacts("int8", 8.0, True),
    # 4-bit weights plus one fp16 scale and zero point per group of 128: 4 + 32/128 = 4.25.
    QuantizationFacts("int4", 4.25, True),
    QuantizationFacts("awq", 4.25, True),
    QuantizationFacts("gptq", 4.25, True),
    # GGUF block formats: Q8_0 is 32 int8 + one fp16 scale per 32 weights (8.5 bpw); Q4_0 4.5; Q5_0 5.5;
    # K-quants per 256-weight super-block: Q6_K 6.5625, Q4_K 4.5, Q5_K 5.5. The _M/_S mixes keep some
    # tensors (attn_v, ffn_down, output) at higher precision; their averages are those of published files.
    QuantizationFacts("q8_0", 8.5, False),
    QuantizationFacts("q6_k", 6.5625, False),
    QuantizationFacts("q5_k_m", 5.69, False),
    QuantizationFacts("q5_k_s", 5.54, False),
    QuantizationFacts("q5_0", 5.5, False),
    QuantizationFacts("q4_k_m", 4.89, False),
    QuantizationFacts("q4_k_s", 4.58, False),
    QuantizationFacts("q4_0", 4.5, False),
    QuantizationFacts("q3_k_m", 3.91, False),
    QuantizationFacts("q2_k", 3.35, False),
)
QUANTIZATIONS: dict[str, QuantizationFacts] = {q.name: q for q in _TABLE}

# Cheaper choices to suggest when a model does not fit, from most to least precise.
SAFETENSORS_LADDER = ("fp8", "awq")
GGUF_LADDER = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")


def weight_bytes(model: ModelFacts, quantization: str) -> int:
    """Bytes of all weights (every expert of an MoE model is resident)."""
    quant = QUANTIZATIONS[quantization]
    if quant.embeddings_in_bf16:
        body = model.total_parameters - model.embedding_parameters
        return round(body * quant.bits_per_weight / 8 + model.embedding_parameters * BF16_BITS / 8)
    return round(model.total_parameters * quant.bits_per_weight / 8)


def embedding_bytes(model: ModelFacts, quantization: str) -> int:
    """Bytes of the input embedding alone (what llama.cpp keeps on the host)."""
    quant = QUANTIZATIONS[quantization]
    bits = BF16_BITS if quant.embeddings_in_bf16 else quant.bits_per_weight
    return round(model.vocab_size * model.hidden_size * bits / 8)
