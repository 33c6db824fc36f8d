"""Tiny llama-architecture GGUF models and LoRA adapters for the engine tests, made on the spot.

Nothing is downloaded: the weights are seeded random numbers, and the tokenizer is copied from
one of the ``ggml-vocab-*.gguf`` vocabularies that llama.cpp ships in its sources (the build
script ``hack/build-llama-server.sh`` installs them next to ``llama-server``). The model is a
real Llama (RMS norm, rotary attention with grouped KV heads, SwiGLU feed-forward), only very
small, so llama-server loads it in well under a second and answers any prompt with tokens
(meaningless ones).

The adapters follow llama.cpp's LoRA conventions (``src/llama-adapter.cpp``): ``general.type``
``adapter``, ``adapter.type`` ``lora``, ``adapter.lora.alpha``, and a pair of tensors per adapted
weight, ``<weight>.lora_a`` with numpy shape ``(rank, n_in)`` and ``<weight>.lora_b`` with numpy
shape ``(n_out, rank)`` (ggml lists dimensions the other way round).

``write_broken_lora`` writes a "v3" that parses as GGUF but does NOT load: its ``lora_a``
tensors are twice as wide as the base weights, so llama-server refuses to start with
``tensor 'blk.0.attn_q.weight' has incorrect shape``. It stands for a bad adapter release.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from llama_operator_dev.binaries import REPOSITORY_ROOT, cache_root, parse_versions_env
from llama_operator_dev.errors import BinariesMissingError

LLAMA_SERVER_VERSION_FILE = REPOSITORY_ROOT / "hack" / "llama-server-version.env"
LLAMA_SERVER_BUILD_SCRIPT = "hack/build-llama-server.sh"

TINY_MODEL_NAME = "llama-operator-tiny"
ARCHITECTURE = "llama"
# SentencePiece Llama vocabulary, 32000 tokens with byte fallback: tokenizes any text and keeps
# the model at about 5 MB. ggml-vocab-llama-bpe.gguf (Llama 3, 128256 tokens) works too.
DEFAULT_VOCAB_FILE = "ggml-vocab-llama-spm.gguf"

BLOCK_COUNT = 2
EMBEDDING_LENGTH = 64
HEAD_COUNT = 4
HEAD_COUNT_KV = 2
FEED_FORWARD_LENGTH = 128
CONTEXT_LENGTH = 8192
ROPE_FREQ_BASE = 500000.0
RMS_NORM_EPSILON = 1e-5
EMBEDDING_STD = 0.05

LORA_V1_SEED = 1
LORA_V2_SEED = 2
LORA_BROKEN_SEED = 3
LORA_TARGETS = ("attn_q", "attn_v")

# A Llama-3-style template of our own: header tokens around each role, <|eot_id|> after each
# turn. With the SentencePiece vocabulary these markers are plain text, which is all a test needs.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

Float16Array = npt.NDArray[np.float16]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TinyModelFacts:
    """What a written tiny model is: enough to size it, serve it and build adapters for it."""

    path: Path
    name: str
    architecture: str
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    feed_forward_length: int
    context_length: int
    vocab_size: int
    tokenizer_model: str
    seed: int

    @property
    def head_dim(self) -> int:
        return self.embedding_length // self.head_count

    def projection_shape(self, projection: str) -> tuple[int, int]:
        """Numpy shape ``(n_out, n_in)`` of one block's weight, e.g. ``projection_shape("attn_q")``."""
        q_width = self.head_count * self.head_dim
        kv_width = self.head_count_kv * self.head_dim
        shapes = {
            "attn_q": (q_width, self.embedding_length),
            "attn_k": (kv_width, self.embedding_length),
            "attn_v": (kv_width, self.embedding_length),
            "attn_output": (self.embedding_length, q_width),
            "ffn_gate": (self.feed_forward_length, self.embedding_length),
            "ffn_up": (self.feed_forward_length, self.embedding_length),
            "ffn_down": (self.embedding_length, self.feed_forward_length),
        }
        if projection not in shapes:
            raise KeyError(f"unknown projection {projection!r}; known: {', '.join(shapes)}")
        return shapes[projection]


@dataclass(frozen=True)
class TinyModelSet:
    """A tiny model with the adapters the rollout tests use."""

    model: TinyModelFacts
    lora_v1: Path
    lora_v2: Path
    lora_broken: Path


@dataclass(frozen=True)
class _KeyValue:
    key: str
    value: Any
    value_type: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None


def llama_server_install_dir(version_file: Path = LLAMA_SERVER_VERSION_FILE) -> Path:
    """The folder ``hack/build-llama-server.sh`` installs the pinned llama-server into."""
    values = parse_versions_env(version_file.read_text(encoding="utf-8"))
    version = values.get("LLAMA_CPP_PYTHON_VERSION")
    if not version:
        raise ValueError(f"{version_file}: missing LLAMA_CPP_PYTHON_VERSION")
    return cache_root() / "llama-server" / version


def find_vocab_file(name: str = DEFAULT_VOCAB_FILE, install_dir: Path | None = None) -> Path:
    """A vocabulary installed next to the built llama-server, or say how to build it."""
    directory = (install_dir if install_dir is not None else llama_server_install_dir()) / "vocab"
    path = directory / name
    if not path.is_file():
        raise BinariesMissingError(
            f"vocabulary {name} not found in {directory}; build llama-server with `{LLAMA_SERVER_BUILD_SCRIPT}`"
        )
    return path


def read_tokenizer_fields(vocab_path: Path) -> list[_KeyValue]:
    """Every ``tokenizer.*`` key of a vocabulary GGUF except its chat template, values as stored."""
    reader = gguf.GGUFReader(vocab_path)
    fields: list[_KeyValue] = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == gguf.Keys.Tokenizer.CHAT_TEMPLATE:
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        value: Any
        if sub_type == gguf.GGUFValueType.STRING:
            # raw bytes: a vocabulary may hold token pieces that are not valid UTF-8 on their own
            value = [bytes(field.parts[index]) for index in field.data]
        else:
            value = field.contents()
        fields.append(_KeyValue(key=key, value=value, value_type=main_type, sub_type=sub_type))
    if not any(item.key == gguf.Keys.Tokenizer.LIST for item in fields):
        raise ValueError(f"{vocab_path} has no {gguf.Keys.Tokenizer.LIST}; pick one of llama.cpp's ggml-vocab-*.gguf")
    return fields


def write_tiny_model(path: Path, vocab_path: Path, *, seed: int = 0) -> TinyModelFacts:
    """Write a tiny Llama GGUF (f16 weights drawn from ``seed``) with the tokenizer of ``vocab_path``."""
    tokenizer = read_tokenizer_fields(vocab_path)
    tokens = next(item.value for item in tokenizer if item.key == gguf.Keys.Tokenizer.LIST)
    tokenizer_model = next((str(item.value) for item in tokenizer if item.key == gguf.Keys.Tokenizer.MODEL), "unknown")
    facts = TinyModelFacts(
        path=path,
        name=TINY_MODEL_NAME,
        architecture=ARCHITECTURE,
        block_count=BLOCK_COUNT,
        embedding_length=EMBEDDING_LENGTH,
        head_count=HEAD_COUNT,
        head_count_kv=HEAD_COUNT_KV,
        feed_forward_length=FEED_FORWARD_LENGTH,
        context_length=CONTEXT_LENGTH,
        vocab_size=len(tokens),
        tokenizer_model=tokenizer_model,
        seed=seed,
    )
    writer = gguf.GGUFWriter(_staging_path(path), arch=ARCHITECTURE)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(TINY_MODEL_NAME)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(facts.context_length)
    writer.add_embedding_length(facts.embedding_length)
    writer.add_block_count(facts.block_count)
    writer.add_feed_forward_length(facts.feed_forward_length)
    writer.add_head_count(facts.head_count)
    writer.add_head_count_kv(facts.head_count_kv)
    writer.add_rope_dimension_count(facts.head_dim)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPSILON)
    writer.add_vocab_size(facts.vocab_size)
    for item in tokenizer:
        writer.add_key_value(item.key, item.value, item.value_type, item.sub_type)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in _model_tensors(facts, np.random.default_rng(seed)):
        writer.add_tensor(name, tensor)
    _finish(writer, path)
    return facts


def write_tiny_lora(path: Path, model_facts: TinyModelFacts, seed: int, rank: int = 8) -> Path:
    """Write a LoRA adapter for ``attn_q`` and ``attn_v`` of every block, weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    tensors: list[tuple[str, Float32Array]] = []
    for block in range(model_facts.block_count):
        for projection in LORA_TARGETS:
            n_out, n_in = model_facts.projection_shape(projection)
            weight = f"blk.{block}.{projection}.weight"
            tensors.append((f"{weight}.lora_a", _normal(rng, (rank, n_in), n_in**-0.5)))
            tensors.append((f"{weight}.lora_b", _normal(rng, (n_out, rank), rank**-0.5)))
    # alpha = rank: llama.cpp scales the product by alpha / rank, so the delta is as large as
    # the base weights and an adapted reply differs visibly from the base model's.
    return _write_lora(path, model_facts, f"{TINY_MODEL_NAME}-lora-s{seed}", float(rank), tensors)


def write_broken_lora(path: Path, model_facts: TinyModelFacts, seed: int = LORA_BROKEN_SEED, rank: int = 8) -> Path:
    """Write a well-formed GGUF adapter whose shapes do not fit the model: llama-server refuses it."""
    rng = np.random.default_rng(seed)
    tensors: list[tuple[str, Float32Array]] = []
    for block in range(model_facts.block_count):
        n_out, n_in = model_facts.projection_shape("attn_q")
        weight = f"blk.{block}.attn_q.weight"
        tensors.append((f"{weight}.lora_a", _normal(rng, (rank, 2 * n_in), n_in**-0.5)))
        tensors.append((f"{weight}.lora_b", _normal(rng, (n_out, rank), rank**-0.5)))
    return _write_lora(path, model_facts, f"{TINY_MODEL_NAME}-lora-broken-s{seed}", float(rank), tensors)


def write_tiny_model_set(directory: Path, vocab_path: Path) -> TinyModelSet:
    """The model and its v1, v2 and broken adapters, as the engine tests use them."""
    directory.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(directory / f"{TINY_MODEL_NAME}.gguf", vocab_path)
    return TinyModelSet(
        model=model,
        lora_v1=write_tiny_lora(directory / f"{TINY_MODEL_NAME}-lora-v1.gguf", model, LORA_V1_SEED),
        lora_v2=write_tiny_lora(directory / f"{TINY_MODEL_NAME}-lora-v2.gguf", model, LORA_V2_SEED),
        lora_broken=write_broken_lora(directory / f"{TINY_MODEL_NAME}-lora-v3-broken.gguf", model),
    )


def _model_tensors(facts: TinyModelFacts, rng: np.random.Generator) -> list[tuple[str, Float16Array | Float32Array]]:
    """Every tensor of a Llama block stack; norms stay f32 (ggml wants them so), the rest is f16."""
    d_model = facts.embedding_length
    tensors: list[tuple[str, Float16Array | Float32Array]] = [
        # No output.weight: llama.cpp ties the output projection to token_embd when it is absent.
        # Small embeddings let the blocks, not the input token, decide the next token; with
        # unit-size ones a tied model just repeats its last input token.
        ("token_embd.weight", _normal(rng, (facts.vocab_size, d_model), EMBEDDING_STD).astype(np.float16)),
        ("output_norm.weight", np.ones(d_model, dtype=np.float32)),
    ]
    for block in range(facts.block_count):
        prefix = f"blk.{block}"
        tensors.append((f"{prefix}.attn_norm.weight", np.ones(d_model, dtype=np.float32)))
        for projection in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors.append((f"{prefix}.{projection}.weight", _projection(rng, facts.projection_shape(projection))))
        tensors.append((f"{prefix}.ffn_norm.weight", np.ones(d_model, dtype=np.float32)))
        for projection in ("ffn_gate", "ffn_up", "ffn_down"):
            tensors.append((f"{prefix}.{projection}.weight", _projection(rng, facts.projection_shape(projection))))
    return tensors


def _projection(rng: np.random.Generator, shape: tuple[int, int]) -> Float16Array:
    return _normal(rng, shape, shape[1] ** -0.5).astype(np.float16)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> Float32Array:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _write_lora(
    path: Path, model_facts: TinyModelFacts, name: str, alpha: float, tensors: list[tuple[str, Float32Array]]
) -> Path:
    writer = gguf.GGUFWriter(_staging_path(path), arch=model_facts.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tensor_name, tensor in tensors:
        writer.add_tensor(tensor_name, tensor)
    _finish(writer, path)
    return path


def _staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _finish(writer: gguf.GGUFWriter, path: Path) -> None:
    """Write everything to the staging file, then rename it: readers never see half a model."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _staging_path(path).replace(path)
