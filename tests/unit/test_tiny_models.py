"""The tiny test models: what llama-server will read from them, checked with gguf's own reader.

No llama-server is needed: a small SentencePiece-style vocabulary is written here with the gguf
package, standing in for llama.cpp's ggml-vocab-*.gguf files (the engine tests use the real ones).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llama_operator_dev.errors import BinariesMissingError
from llama_operator_dev.tiny_models import (
    CHAT_TEMPLATE,
    LLAMA_SERVER_BUILD_SCRIPT,
    LLAMA_SERVER_VERSION_FILE,
    LORA_TARGETS,
    TINY_MODEL_NAME,
    TinyModelSet,
    find_vocab_file,
    llama_server_install_dir,
    write_broken_lora,
    write_tiny_lora,
    write_tiny_model,
    write_tiny_model_set,
)

VOCAB_PIECES = ["▁hello", "▁world", "▁llama", "▁the", "▁a", "ing", "er"]
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
VOCAB_TOKENS = ["<unk>", "<s>", "</s>", *BYTE_TOKENS, *VOCAB_PIECES]


def write_vocab(path: Path) -> Path:
    """A vocabulary-only GGUF in the layout of llama.cpp's ggml-vocab-llama-spm.gguf."""
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("test-spm")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(VOCAB_TOKENS)
    writer.add_token_scores([0.0] * 259 + [-float(rank) for rank in range(len(VOCAB_PIECES))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(VOCAB_PIECES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def field_value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


def tensor_shapes(reader: gguf.GGUFReader) -> dict[str, tuple[int, ...]]:
    """Numpy shapes (rows, columns), i.e. ggml's dimensions reversed."""
    return {tensor.name: tuple(int(size) for size in reversed(tensor.shape.tolist())) for tensor in reader.tensors}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "ggml-vocab-test-spm.gguf")


@pytest.fixture(scope="module")
def model_set(tmp_path_factory: pytest.TempPathFactory, vocab_path: Path) -> TinyModelSet:
    return write_tiny_model_set(tmp_path_factory.mktemp("models"), vocab_path)


@pytest.fixture(scope="module")
def model_reader(model_set: TinyModelSet) -> gguf.GGUFReader:
    return gguf.GGUFReader(model_set.model.path)


class TestTinyModel:
    def test_is_a_small_llama_with_consistent_attention(self, model_set: TinyModelSet) -> None:
        facts = model_set.model
        assert facts.architecture == "llama"
        assert 2 <= facts.block_count <= 4
        assert 64 <= facts.embedding_length <= 128
        assert facts.embedding_length % facts.head_count == 0
        assert facts.head_count % facts.head_count_kv == 0
        assert facts.context_length >= 2048
        assert facts.path.stat().st_size < 1_000_000  # 266 tokens x 64 wide, f16

    def test_architecture_keys_match_the_facts(self, model_set: TinyModelSet, model_reader: gguf.GGUFReader) -> None:
        facts = model_set.model
        assert field_value(model_reader, "general.architecture") == "llama"
        assert field_value(model_reader, "general.type") == "model"
        assert field_value(model_reader, "general.name") == TINY_MODEL_NAME
        assert field_value(model_reader, "llama.block_count") == facts.block_count
        assert field_value(model_reader, "llama.embedding_length") == facts.embedding_length
        assert field_value(model_reader, "llama.feed_forward_length") == facts.feed_forward_length
        assert field_value(model_reader, "llama.attention.head_count") == facts.head_count
        assert field_value(model_reader, "llama.attention.head_count_kv") == facts.head_count_kv
        assert field_value(model_reader, "llama.context_length") == facts.context_length
        assert field_value(model_reader, "llama.rope.dimension_count") == facts.head_dim
        assert field_value(model_reader, "llama.vocab_size") == len(VOCAB_TOKENS) == facts.vocab_size
        assert field_value(model_reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)

    def test_every_llama_tensor_has_its_shape(self, model_set: TinyModelSet, model_reader: gguf.GGUFReader) -> None:
        facts = model_set.model
        expected = {
            "token_embd.weight": (facts.vocab_size, facts.embedding_length),
            "output_norm.weight": (facts.embedding_length,),
        }
        for block in range(facts.block_count):
            expected[f"blk.{block}.attn_norm.weight"] = (facts.embedding_length,)
            expected[f"blk.{block}.ffn_norm.weight"] = (facts.embedding_length,)
            for projection in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                expected[f"blk.{block}.{projection}.weight"] = facts.projection_shape(projection)
        assert tensor_shapes(model_reader) == expected
        assert facts.projection_shape("attn_k") == (facts.head_count_kv * facts.head_dim, facts.embedding_length)

    def test_norms_are_f32_and_weights_f16(self, model_reader: gguf.GGUFReader) -> None:
        for tensor in model_reader.tensors:
            wanted = (
                gguf.GGMLQuantizationType.F32 if tensor.name.endswith("norm.weight") else gguf.GGMLQuantizationType.F16
            )
            assert tensor.tensor_type == wanted, tensor.name
            assert np.isfinite(tensor.data).all(), tensor.name

    def test_tokenizer_is_copied_from_the_vocabulary(self, model_reader: gguf.GGUFReader, vocab_path: Path) -> None:
        vocab = gguf.GGUFReader(vocab_path)
        for key in (
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.add_bos_token",
        ):
            assert field_value(model_reader, key) == field_value(vocab, key), key
        assert field_value(model_reader, "tokenizer.ggml.tokens") == VOCAB_TOKENS

    def test_carries_a_llama3_style_chat_template(self, model_reader: gguf.GGUFReader) -> None:
        template = field_value(model_reader, "tokenizer.chat_template")
        assert template == CHAT_TEMPLATE
        assert "<|start_header_id|>" in template
        assert "add_generation_prompt" in template

    def test_same_seed_same_bytes_other_seed_other_weights(self, tmp_path: Path, vocab_path: Path) -> None:
        first = write_tiny_model(tmp_path / "a.gguf", vocab_path)
        again = write_tiny_model(tmp_path / "b.gguf", vocab_path)
        other = write_tiny_model(tmp_path / "c.gguf", vocab_path, seed=7)
        assert sha256(first.path) == sha256(again.path)
        assert sha256(first.path) != sha256(other.path)
        assert other.seed == 7
        assert not list(tmp_path.glob(".*partial")), "staging files are renamed into place"

    def test_a_file_without_tokens_is_refused(self, tmp_path: Path) -> None:
        writer = gguf.GGUFWriter(tmp_path / "empty.gguf", arch="llama")
        writer.add_name("no-tokenizer")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(ValueError, match=r"no tokenizer\.ggml\.tokens"):
            write_tiny_model(tmp_path / "model.gguf", tmp_path / "empty.gguf")

    def test_unknown_projection_is_named(self, model_set: TinyModelSet) -> None:
        with pytest.raises(KeyError, match="attn_qkv"):
            model_set.model.projection_shape("attn_qkv")


def lora_pairs(reader: gguf.GGUFReader) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{base weight name: {"lora_a": shape, "lora_b": shape}}``."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in tensor_shapes(reader).items():
        base, _, part = name.rpartition(".")
        pairs.setdefault(base, {})[part] = shape
    return pairs


class TestTinyLora:
    def test_adapter_metadata_is_what_llama_cpp_checks(self, model_set: TinyModelSet) -> None:
        for path in (model_set.lora_v1, model_set.lora_v2, model_set.lora_broken):
            reader = gguf.GGUFReader(path)
            assert field_value(reader, "general.type") == "adapter"
            assert field_value(reader, "general.architecture") == model_set.model.architecture
            assert field_value(reader, "adapter.type") == "lora"
            assert field_value(reader, "adapter.lora.alpha") == pytest.approx(8.0)

    @pytest.mark.parametrize("version", ["lora_v1", "lora_v2"])
    def test_pairs_fit_the_model_weights(
        self, model_set: TinyModelSet, model_reader: gguf.GGUFReader, version: str
    ) -> None:
        model_shapes = tensor_shapes(model_reader)
        pairs = lora_pairs(gguf.GGUFReader(getattr(model_set, version)))
        expected_weights = {
            f"blk.{block}.{projection}.weight"
            for block in range(model_set.model.block_count)
            for projection in LORA_TARGETS
        }
        assert set(pairs) == expected_weights
        for weight, pair in pairs.items():
            n_out, n_in = model_shapes[weight]
            assert pair == {"lora_a": (8, n_in), "lora_b": (n_out, 8)}, weight

    def test_rank_is_a_parameter(self, tmp_path: Path, model_set: TinyModelSet) -> None:
        path = write_tiny_lora(tmp_path / "rank4.gguf", model_set.model, seed=1, rank=4)
        reader = gguf.GGUFReader(path)
        assert field_value(reader, "adapter.lora.alpha") == pytest.approx(4.0)
        n_out, n_in = model_set.model.projection_shape("attn_q")
        assert lora_pairs(reader)["blk.0.attn_q.weight"] == {"lora_a": (4, n_in), "lora_b": (n_out, 4)}

    def test_same_seed_same_bytes_v1_and_v2_differ(self, tmp_path: Path, model_set: TinyModelSet) -> None:
        again = write_tiny_lora(tmp_path / "v1-again.gguf", model_set.model, seed=1)
        assert sha256(again) == sha256(model_set.lora_v1)
        v1 = {t.name: np.array(t.data) for t in gguf.GGUFReader(model_set.lora_v1).tensors}
        v2 = {t.name: np.array(t.data) for t in gguf.GGUFReader(model_set.lora_v2).tensors}
        assert v1.keys() == v2.keys()
        assert all(not np.array_equal(v1[name], v2[name]) for name in v1)

    def test_broken_adapter_does_not_fit_the_model(self, model_set: TinyModelSet) -> None:
        pairs = lora_pairs(gguf.GGUFReader(model_set.lora_broken))
        n_out, n_in = model_set.model.projection_shape("attn_q")
        assert pairs["blk.0.attn_q.weight"]["lora_a"] == (8, 2 * n_in)
        assert pairs["blk.0.attn_q.weight"]["lora_b"] == (n_out, 8)

    def test_broken_adapter_is_deterministic(self, tmp_path: Path, model_set: TinyModelSet) -> None:
        again = write_broken_lora(tmp_path / "v3.gguf", model_set.model)
        assert sha256(again) == sha256(model_set.lora_broken)


class TestVocabLookup:
    def test_install_dir_follows_the_pinned_version_and_cache(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("LLAMA_OPERATOR_CACHE", str(tmp_path))
        pinned = dict(
            line.split("=", 1)
            for line in LLAMA_SERVER_VERSION_FILE.read_text().splitlines()
            if line and not line.startswith("#")
        )
        assert llama_server_install_dir() == tmp_path / "llama-server" / pinned["LLAMA_CPP_PYTHON_VERSION"]

    def test_missing_vocab_says_how_to_build_it(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("LLAMA_OPERATOR_CACHE", str(tmp_path))
        with pytest.raises(BinariesMissingError, match=LLAMA_SERVER_BUILD_SCRIPT):
            find_vocab_file()

    def test_finds_an_installed_vocab(self, tmp_path: Path, vocab_path: Path) -> None:
        (tmp_path / "vocab").mkdir()
        installed = tmp_path / "vocab" / "ggml-vocab-llama-spm.gguf"
        installed.write_bytes(vocab_path.read_bytes())
        assert find_vocab_file(install_dir=tmp_path) == installed
