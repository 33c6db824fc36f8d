"""A tiny Hugging Face-format Llama and PEFT LoRA adapters for vLLM tests, generated, never downloaded.

The HF twin of ``tiny_models`` (which writes GGUF for llama-server). The files are written by
``tiny_hf_writer.py`` under the vLLM runtime's Python (it needs torch, transformers, tokenizers
and peft); this module, importable from the main venv, says what to write (``writer_spec``), runs
the writer and caches its output under ``cache_root()/tiny-hf/<key>/``, the key being a hash of the
writer's source, the spec and the runtime's build (its package lock). A build goes to a staging
folder that is renamed into place, so concurrent test processes never see half a set.

The model is a real ``LlamaForCausalLM`` (RMS norm, rotary attention with grouped KV heads, SwiGLU),
only small: 2 layers, hidden 128, 4 heads of 32 (vLLM's CPU attention refuses head_dim 16),
2 KV heads, 8192 positions, bfloat16 safetensors (this CPU has AVX512-BF16 and vLLM serves it as
bfloat16). Its tokenizer is a byte-level BPE of 512 tokens trained offline on a built-in text, with
Llama 3's special tokens (``<|python_tag|>`` included: vLLM's ``llama3_json`` tool parser refuses
to start without it) and a Llama-3-style chat template of our own that renders tools.

The adapters are PEFT LoRA (r 8, alpha 16, q_proj and v_proj) with seeded non-zero weights, so v1
and v2 change the answers differently. The broken "v3" is a good adapter's weights file without its
``adapter_config.json``, like a release whose upload lost a file: it looks like an adapter, and the
hub serves it, but it does not load. Real vLLM 0.32.0 (CPU, loading it by hub id through
``HF_ENDPOINT``) downloads its files, then refuses it at ``POST /v1/load_lora_adapter`` with
``404`` ``{"error": {"message": "Loading lora <name> failed: No adapter found for <lora_path>",
"type": "NotFoundError", "param": null, "code": 404}}`` and stays healthy; v1 keeps answering.
Other ways to break an adapter are refused with ``500`` ``InternalServerError`` instead (vLLM maps
only a missing file to a 4xx), e.g. rank 16 above ``--max-lora-rank 8``: "Call to add_lora method
failed: LoRA rank 16 is greater than max_lora_rank 8."; ``lora_A`` twice as wide: "... The size of
tensor a (128) must match the size of tensor b (256) at non-singleton dimension 1"; no weights
file: "... <path> doesn't contain tensors".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_operator_dev.binaries import cache_root
from llama_operator_dev.errors import BinariesMissingError, DevClusterError
from llama_operator_dev.vllm_runtime import VLLM_RUNTIME_BUILD_SCRIPT, vllm_python, vllm_runtime_dir

WRITER_PATH = Path(__file__).with_name("tiny_hf_writer.py")
WRITER_TIMEOUT_SECONDS = 600.0
CACHE_FOLDER = "tiny-hf"

TINY_HF_MODEL_NAME = "llama-operator-tiny-hf"
MODEL_FOLDER = "model"  # the writer's folder names
WRITTEN_FILE = "written.json"
LORA_V1_FOLDER = "lora-v1"
LORA_V2_FOLDER = "lora-v2"
LORA_BROKEN_FOLDER = "lora-v3-broken"

MODEL_SEED = 0
LORA_V1_SEED = 1
LORA_V2_SEED = 2
LORA_BROKEN_SEED = 3
LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("q_proj", "v_proj")

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
END_OF_MESSAGE = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
PAD = "<|finetune_right_pad_id|>"
# Trained first, so they take ids 0..7 in this order.
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN, END_OF_MESSAGE, PYTHON_TAG, PAD)

# A Llama-3-style template of our own. The system turn carries the tool list (one JSON schema per
# paragraph) and how to call one; an assistant turn with tool_calls is written as
# <|python_tag|>{"name": ..., "parameters": ...}; tool results come back in an "ipython" turn.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set head = namespace(system='') %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set head.system = (messages[0]['content'] or '') | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- endif %}"
    "{%- if tools %}"
    "{%- if head.system %}{%- set head.system = head.system + '\\n\\n' %}{%- endif %}"
    "{%- set head.system = head.system + 'You can call these functions. To call one, answer with only a JSON object"
    ' {"name": <function name>, "parameters": <arguments>}.\' %}'
    "{%- for tool in tools %}"
    "{%- set head.system = head.system + '\\n\\n' + (tool | tojson) %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{%- if head.system %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + head.system + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n<|python_tag|>' }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set function = call['function'] if call['function'] is defined else call %}"
    "{%- set arguments = function['arguments'] if function['arguments'] is string else function['arguments'] | tojson %}"
    "{{- '{\"name\": \"' + function['name'] + '\", \"parameters\": ' + arguments + '}' }}"
    "{%- if not loop.last %}{{- '; ' }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|eot_id|>' }}"
    "{%- elif message['role'] in ('tool', 'ipython') %}"
    "{%- set result = message['content'] if message['content'] is string else message['content'] | tojson %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + result + '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] or '') | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


class TinyHfWriterError(DevClusterError):
    """The writer ran under the vLLM runtime's Python and failed."""


@dataclass(frozen=True)
class TinyHfArchitecture:
    """The model's shape: what ``config.json`` says and what sizing and flags are computed from."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    dtype: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_cache_bytes_per_token(self) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x bytes per value of the model's dtype."""
        bytes_per_value = {"bfloat16": 2, "float16": 2, "float32": 4}[self.dtype]
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


TINY_HF_ARCHITECTURE = TinyHfArchitecture(
    layers=2,
    hidden=128,
    heads=4,
    kv_heads=2,
    intermediate=256,
    vocab_size=512,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    dtype="bfloat16",
)


@dataclass(frozen=True)
class TinyHfModelSet:
    """A written tiny HF model and its adapters (v1 and v2 load; the broken one does not)."""

    model_dir: Path
    lora_v1: Path
    lora_v2: Path
    lora_broken: Path
    architecture: TinyHfArchitecture
    lora_rank: int = LORA_RANK
    lora_alpha: int = LORA_ALPHA
    lora_targets: tuple[str, ...] = LORA_TARGETS

    @property
    def root(self) -> Path:
        return self.model_dir.parent


def llama_config(architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE) -> dict[str, Any]:
    """The ``LlamaConfig`` arguments for the architecture (token ids are added by the writer)."""
    return {
        "vocab_size": architecture.vocab_size,
        "hidden_size": architecture.hidden,
        "intermediate_size": architecture.intermediate,
        "num_hidden_layers": architecture.layers,
        "num_attention_heads": architecture.heads,
        "num_key_value_heads": architecture.kv_heads,
        "head_dim": architecture.head_dim,
        "max_position_embeddings": architecture.max_position_embeddings,
        "rms_norm_eps": architecture.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": architecture.rope_theta},
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }


def writer_spec(architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE) -> dict[str, Any]:
    """Everything the writer needs, as JSON-ready data."""

    def adapter(folder: str, seed: int, *, drop_config: bool = False) -> dict[str, Any]:
        return {
            "folder": folder,
            "seed": seed,
            "rank": LORA_RANK,
            "alpha": LORA_ALPHA,
            "targets": list(LORA_TARGETS),
            "drop_config": drop_config,
        }

    return {
        "name": TINY_HF_MODEL_NAME,
        "seed": MODEL_SEED,
        "dtype": architecture.dtype,
        "config": llama_config(architecture),
        "tokenizer": {
            "vocab_size": architecture.vocab_size,
            "special_tokens": list(SPECIAL_TOKENS),
            "bos_token": BEGIN_OF_TEXT,
            "eos_token": END_OF_TURN,
            "pad_token": PAD,
            "model_max_length": architecture.max_position_embeddings,
            "chat_template": CHAT_TEMPLATE,
        },
        "generation_eos_tokens": [END_OF_TEXT, END_OF_TURN, END_OF_MESSAGE],
        "adapters": [
            adapter(LORA_V1_FOLDER, LORA_V1_SEED),
            adapter(LORA_V2_FOLDER, LORA_V2_SEED),
            adapter(LORA_BROKEN_FOLDER, LORA_BROKEN_SEED, drop_config=True),
        ],
    }


def model_set_in(directory: Path, architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE) -> TinyHfModelSet:
    """The set as the writer lays it out in ``directory`` (written or not)."""
    return TinyHfModelSet(
        model_dir=directory / MODEL_FOLDER,
        lora_v1=directory / LORA_V1_FOLDER,
        lora_v2=directory / LORA_V2_FOLDER,
        lora_broken=directory / LORA_BROKEN_FOLDER,
        architecture=architecture,
    )


def require_vllm_python() -> Path:
    """The vLLM runtime's interpreter, or say how to build it."""
    python = vllm_python()
    if python is None:
        raise BinariesMissingError(
            f"the vLLM runtime is not built in {vllm_runtime_dir()} (it writes the tiny HF models); "
            f"build it with `{VLLM_RUNTIME_BUILD_SCRIPT}` or `make vllmruntime`"
        )
    return python


def cache_key(architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE, python: Path | None = None) -> str:
    """Hash of the writer's source, the spec and the runtime's build (its lock and versions)."""
    python = python if python is not None else require_vllm_python()
    build_info = python.parent.parent / "BUILD-INFO"
    build_lines = [
        line for line in build_info.read_text(encoding="utf-8").splitlines() if not line.startswith("built_at=")
    ]
    digest = hashlib.sha256()
    digest.update(WRITER_PATH.read_bytes())
    digest.update(json.dumps(writer_spec(architecture), sort_keys=True).encode())
    digest.update("\n".join(build_lines).encode())
    return digest.hexdigest()[:16]


def run_writer(directory: Path, architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE) -> TinyHfModelSet:
    """Run the writer into ``directory`` (created; it should be new or empty). Takes 5-10 s on 2 cores."""
    python = require_vllm_python()
    directory.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # nothing is downloaded
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    command = [str(python), "-P", str(WRITER_PATH), str(directory), json.dumps(writer_spec(architecture))]
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=WRITER_TIMEOUT_SECONDS, check=False
    )
    if result.returncode != 0 or not (directory / WRITTEN_FILE).is_file():
        raise TinyHfWriterError(
            f"{WRITER_PATH.name} exited with {result.returncode} under {python}:\n{result.stderr[-4000:]}"
        )
    return model_set_in(directory, architecture)


def tiny_hf_model_set(
    architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE, cache_dir: Path | None = None
) -> TinyHfModelSet:
    """The cached set for this writer, spec and runtime, written first when missing. Treat it as read-only.

    ``cache_dir`` stands in for ``cache_root()/tiny-hf``; the set lands in ``<cache_dir>/<cache_key>``.
    """
    base = cache_dir if cache_dir is not None else cache_root() / CACHE_FOLDER
    final = base / cache_key(architecture)
    if (final / WRITTEN_FILE).is_file():
        return model_set_in(final, architecture)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{final.name}-", dir=base))
    try:
        run_writer(staging, architecture)
        try:
            staging.rename(final)
        except OSError:
            if not (final / WRITTEN_FILE).is_file():
                raise
            # Another process finished the same key first: its set is identical.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_set_in(final, architecture)


def write_tiny_hf_model_set(directory: Path, architecture: TinyHfArchitecture = TINY_HF_ARCHITECTURE) -> TinyHfModelSet:
    """A private copy of the cached set in ``directory``, free to change or break in a test."""
    cached = tiny_hf_model_set(architecture)
    shutil.copytree(cached.root, directory, dirs_exist_ok=True)
    return model_set_in(directory, architecture)


def written_facts(model_set: TinyHfModelSet) -> dict[str, Any]:
    """What the writer reports it wrote (vocabulary size, special token ids, versions)."""
    facts: dict[str, Any] = json.loads((model_set.root / WRITTEN_FILE).read_text(encoding="utf-8"))
    return facts
