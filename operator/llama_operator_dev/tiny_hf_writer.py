"""Writes a tiny Hugging Face-format Llama and PEFT LoRA adapters for it; runs in the vLLM runtime.

It needs torch, transformers, tokenizers and peft, which only the vLLM runtime venv has, so
``llama_operator_dev.tiny_hf_models`` runs it there as a script, by file path (the package's
``__init__`` imports the Kubernetes client, which that venv lacks)::

    <vllm venv>/bin/python -P tiny_hf_writer.py OUT SPEC_JSON

``SPEC_JSON`` (built by ``tiny_hf_models.writer_spec``) says what to write: the model config, the
dtype, the tokenizer's special tokens and chat template, and the adapters. This file imports
nothing of ours: everything it needs comes in the spec. It writes::

    OUT/model/            config.json, generation_config.json, model.safetensors,
                          tokenizer.json, tokenizer_config.json (with the chat template)
    OUT/<adapter folder>/ adapter_config.json, adapter_model.safetensors
    OUT/written.json      what was written, as read back (the vocabulary size, the token ids)

Everything is seeded: the same spec and package versions give the same weights.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# The byte-level BPE is trained on this text (our own words): enough distinct pairs for a few
# hundred merges, so a prompt becomes fewer tokens than bytes, and every byte still encodes.
TRAINING_TEXT = """\
The llama operator sizes a model, picks an engine and keeps the replicas busy but not crowded.
A deployment names a model, a context length and a number of concurrent requests; the operator
works out the memory the weights and the key-value cache take, and chooses a GPU class that fits.
When a queue grows, more replicas start; when it drains, they stop, one step at a time.
Adapters ride on top of the base model: a new release is loaded on one replica first, checked with
a real request, and rolled out to the others only when that request succeeds.
The assistant answers questions about the weather, the time, the news and the road ahead.
What is the weather like in Paris today? It is sunny, with a light wind from the west.
Please call the function get_weather with the city name and the unit, celsius or fahrenheit.
{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}
{"name": "get_time", "parameters": {"timezone": "Europe/Paris"}}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096 8192.
Support tickets: my order has not arrived; the invoice is wrong; I want to change my address.
Thank you for your message. We are sorry for the trouble and will look into it right away.
Models answer in tokens; tokens become text; text becomes an answer that a person reads.
Small models load in a moment and answer fast, which is all a test needs from them.
Llamas live in the mountains of South America, where they carry loads and keep the herds safe.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
"""

MODEL_FOLDER = "model"
WRITTEN_FILE = "written.json"
# Standard deviation of the LoRA A and B matrices: alpha/r * B @ A then moves the attention
# projections about as much as their own weights, so an adapted answer differs from the base one.
LORA_STD = 0.05


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} OUT SPEC_JSON", file=sys.stderr)
        return 2
    out = Path(argv[1])
    spec: dict[str, Any] = json.loads(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    written = write_all(out, spec)
    (out / WRITTEN_FILE).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


def write_all(out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    model_dir = out / MODEL_FOLDER
    token_ids = write_tokenizer(model_dir, spec["tokenizer"])
    write_model(model_dir, spec, token_ids)
    adapters = {}
    for adapter in spec["adapters"]:
        # A fresh base for each adapter: get_peft_model rewrites the modules of the model it wraps.
        base = LlamaForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, spec["dtype"]))
        adapters[adapter["folder"]] = write_adapter(out / adapter["folder"], base, spec["name"], adapter)
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    return {
        "vocab_size": len(reloaded),
        "token_ids": token_ids,
        "adapters": adapters,
        "versions": {
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "tokenizers": version("tokenizers"),
            "peft": version("peft"),
        },
    }


def write_tokenizer(model_dir: Path, spec: dict[str, Any]) -> dict[str, int]:
    """Train a byte-level BPE on TRAINING_TEXT and save it so AutoTokenizer loads it."""
    special_tokens: list[str] = spec["special_tokens"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab_size"],
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(), trainer=trainer)
    if tokenizer.get_vocab_size() != spec["vocab_size"]:
        raise SystemExit(
            f"the training text gave {tokenizer.get_vocab_size()} tokens, the spec wants {spec['vocab_size']}: "
            "lengthen TRAINING_TEXT or lower the vocabulary size"
        )
    bos = spec["bos_token"]
    bos_id = tokenizer.token_to_id(bos)
    # Llama 3 adds <|begin_of_text|> when a plain prompt is encoded; chat templates write it themselves.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        model_max_length=spec["model_max_length"],
    )
    fast.chat_template = spec["chat_template"]
    # The template inside tokenizer_config.json, where Llama 3 checkpoints keep it (transformers 5
    # would otherwise write chat_template.jinja beside it).
    fast.save_pretrained(model_dir, save_jinja_files=False)
    token_ids = {token: tokenizer.token_to_id(token) for token in special_tokens}
    missing = [token for token, token_id in token_ids.items() if token_id is None]
    if missing:
        raise SystemExit(f"special tokens missing from the trained vocabulary: {missing}")
    return token_ids


def write_model(model_dir: Path, spec: dict[str, Any], token_ids: dict[str, int]) -> None:
    """A LlamaForCausalLM with seeded random weights, saved as safetensors in the spec's dtype."""
    tokenizer_spec = spec["tokenizer"]
    config = LlamaConfig(
        **spec["config"],
        bos_token_id=token_ids[tokenizer_spec["bos_token"]],
        eos_token_id=token_ids[tokenizer_spec["eos_token"]],
        pad_token_id=token_ids[tokenizer_spec["pad_token"]],
    )
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).to(getattr(torch, spec["dtype"]))
    model.config.dtype = spec["dtype"]
    model.eval()
    model.save_pretrained(model_dir)
    generation = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[token_ids[token] for token in spec["generation_eos_tokens"]],
        pad_token_id=config.pad_token_id,
    )
    generation.save_pretrained(model_dir)


def write_adapter(folder: Path, model: LlamaForCausalLM, base_name: str, adapter: dict[str, Any]) -> dict[str, Any]:
    """A PEFT LoRA adapter with seeded weights (both A and B non-zero, so it changes answers)."""
    config = LoraConfig(
        r=adapter["rank"],
        lora_alpha=adapter["alpha"],
        target_modules=adapter["targets"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(adapter["seed"])
    shapes: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * LORA_STD
                parameter.copy_(values.to(parameter.dtype))
                shapes[name] = list(parameter.shape)
    # The adapter names its base model; a neutral name, not the path it was written from.
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(folder)
    # peft's model card template names the base model by the path it was loaded from; not needed.
    (folder / "README.md").unlink(missing_ok=True)
    if adapter.get("drop_config"):
        (folder / "adapter_config.json").unlink()
    return {"tensors": len(shapes), "files": sorted(path.name for path in folder.iterdir())}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
