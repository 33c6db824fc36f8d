"""engine.extraArgs that repeat a flag the operator renders are refused when the spec is planned.

A repeated flag either crash-loops the pod (TGI's launcher refuses a second occurrence) or silently undoes
the sizing (vLLM's argparse keeps the last: `--gpu-memory-utilization 0.99`, `--max-model-len 1000000`).
The refusal names the flag and the field that sets it, in every spelling the engine's parser reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.engines import llamacpp, tgi, vllm
from llama_operator.engines.registry import ENGINES
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan, repeated_flag
from llama_operator.render import RenderOptions, render
from tests.standins.vllm_serve_flags import load_flags

INVENTORY = OperatorConfig().default_inventory()
SAFETENSORS = {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"}
GGUF = {"catalogName": "llama-3.2-3b", "source": "hf://o/r/m-Q4_K_M.gguf", "format": "gguf", "quantization": "q4_k_m"}


def spec_body(engine: str, extra_args: list[str], **more: Any) -> dict[str, Any]:
    model = GGUF if engine == "llamacpp" else SAFETENSORS
    return {"model": model, "engine": {"type": engine, "extraArgs": extra_args}, **more}


def refusal(body: dict[str, Any]) -> str:
    spec = parse_spec(body)
    with pytest.raises(InvalidSpecError) as refused:
        plan(spec, "demo", INVENTORY)
    return str(refused.value)


@pytest.mark.parametrize(
    ("engine", "extra_args", "said"),
    [
        ("vllm", ["--max-model-len", "1000000"],
         "spec.engine.extraArgs: --max-model-len is rendered from spec.model.contextLength; set that instead"),
        ("vllm", ["--gpu-memory-utilization", "0.99"],
         "spec.engine.extraArgs: --gpu-memory-utilization is rendered by the operator (the share of each GPU"),
        ("vllm", ["--port", "9000"], "--port is rendered by the operator (the port the probes"),
        ("vllm", ["--max-model-len=1000000"], "--max-model-len is rendered from spec.model.contextLength"),
        ("vllm", ["--max_model_len", "1000000"], "--max_model_len (--max-model-len) is rendered from spec.model"),
        ("vllm", ["--max_num_seqs=512"], "(--max-num-seqs) is rendered from spec.serving.maxConcurrentSequences"),
        ("vllm", ["-tp", "8"], "-tp (--tensor-parallel-size) is rendered from spec.placement.gpuCount"),
        ("vllm", ["-tp=8"], "-tp (--tensor-parallel-size) is rendered from spec.placement.gpuCount"),
        ("vllm", ["--device-memory-utilization", "0.99"], "(--gpu-memory-utilization) is rendered by the operator"),
        ("vllm", ["--gpu-memory", "0.99"], "--gpu-memory (--gpu-memory-utilization) is rendered by the operator"),
        ("vllm", ["--served-model-name", "other"], "is rendered from spec.serving.servedModelName"),
        ("vllm", ["--kv-cache-dtype", "fp8"], "--kv-cache-dtype is rendered from spec.model.kvCacheDtype"),
        ("tgi", ["--max-batch-prefill-tokens", "4096"],
         "--max-batch-prefill-tokens is rendered from spec.model.contextLength; set that instead"),
        ("tgi", ["--num-shard=4"], "--num-shard is rendered from spec.placement.gpuCount"),
        ("tgi", ["--max_total_tokens", "1000000"], "(--max-total-tokens) is rendered from spec.model.contextLength"),
        ("tgi", ["--hostname", "127.0.0.1"], "--hostname is rendered by the operator (the pod listens"),
        ("llamacpp", ["-c", "1000000"], "-c (--ctx-size) is rendered from spec.model.contextLength"),
        ("llamacpp", ["--ctx-size=1000000"], "--ctx-size is rendered from spec.model.contextLength"),
        ("llamacpp", ["-ngl", "0"], "-ngl (--n-gpu-layers) is rendered from spec.placement"),
        ("llamacpp", ["--gpu-layers", "0"], "--gpu-layers (--n-gpu-layers) is rendered from spec.placement"),
        ("llamacpp", ["-hf", "org/other-GGUF"], "-hf (--model) is rendered from spec.model.source"),
        ("llamacpp", ["-np", "64"], "-np (--parallel) is rendered from spec.serving.maxConcurrentSequences"),
    ],
)  # fmt: skip
def test_an_extra_arg_that_repeats_a_rendered_flag_is_refused_naming_its_field(
    engine: str, extra_args: list[str], said: str
) -> None:
    assert said in refusal(spec_body(engine, extra_args))


def test_every_repeated_flag_is_named_at_once() -> None:
    message = refusal(spec_body("vllm", ["--enforce-eager", "--max-model-len", "9", "--port=1", "--max-num-seqs", "2"]))
    assert message.count("spec.engine.extraArgs:") == 3
    assert "--enforce-eager" not in message


@pytest.mark.parametrize(
    ("engine", "extra_args", "more"),
    [
        ("vllm", ["--enforce-eager", "--disable-log-requests"], {}),
        ("vllm", ["--max-cpu-loras", "4", "--model-impl", "transformers"], {}),
        # Flags the operator renders only for some specs are free in the others.
        ("vllm", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"], {}),
        ("vllm", ["--enable-lora"], {}),
        ("tgi", ["--max-concurrent-requests", "64", "--json-output"], {}),
        ("tgi", ["--dtype", "float16"], {}),  # no quantization: the operator renders neither --dtype nor --quantize
        ("llamacpp", ["--no-warmup", "-fa", "on", "--jinja"], {}),
    ],
)
def test_an_extra_arg_the_operator_does_not_render_is_passed_after_its_own(
    engine: str, extra_args: list[str], more: dict[str, Any]
) -> None:
    spec = parse_spec(spec_body(engine, extra_args, **more))
    decision = plan(spec, "demo", INVENTORY)
    args = render("demo", "ns", spec, decision, options=RenderOptions())[0]["spec"]["template"]["spec"]["containers"]
    assert args[0]["args"][-len(extra_args) :] == extra_args


def test_the_flags_of_a_spec_are_refused_only_where_rendered() -> None:
    """--tool-call-parser is the operator's only with serving.toolCalling on."""
    body = spec_body("vllm", ["--tool-call-parser", "hermes"], serving={"toolCalling": True})
    assert "--tool-call-parser is rendered from spec.serving.toolCalling" in refusal(body)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_flag_an_engine_renders_says_what_sets_it(name: str) -> None:
    """A rendered flag missing from the engine's table would be refused with a vague message."""
    entry = ENGINES[name]
    model = GGUF if entry.model_format == "gguf" else SAFETENSORS
    variants: list[dict[str, Any]] = [
        {"model": model, "engine": {"type": name}},
        {"model": model, "engine": {"type": name}, "serving": {"toolCalling": True}},
        {
            "model": model,
            "engine": {"type": name},
            "adapters": [{"name": "a", "source": "s3://b/a.gguf", "version": "1"}],
        },
    ]
    if name == "vllm":
        variants.append({
            "model": {**model, "catalogName": "llama-3.1-405b", "kvCacheDtype": "fp8", "quantization": "fp8"},
            "engine": {"type": name},
            "placement": {"gpuClass": "h100-80gb", "gpuCount": 16, "maxNodesPerReplica": 2},
        })  # fmt: skip
    if name == "tgi":
        variants.append({"model": {**model, "quantization": "awq"}, "engine": {"type": name}})
    if name == "llamacpp":
        variants.append(
            {"model": model, "engine": {"type": name}, "placement": {"gpuClass": "gpu-24gb", "gpuCount": 2}}
        )
    for body in variants:
        spec = parse_spec(body)
        decision = plan(spec, "demo", INVENTORY)
        workload = render("demo", "ns", spec, decision, options=RenderOptions())[0]
        container = workload["spec"].get(
            "template", workload["spec"].get("leaderWorkerTemplate", {}).get("leaderTemplate")
        )
        args = container["spec"]["containers"][0].get("args") or container["spec"]["containers"][0]["command"]
        flags = {a.partition("=")[0] for a in args if a.startswith("--")}
        missing = sorted(flags - set(entry.rendered_flags.sources))
        assert missing == [], f"{body}: {missing}"


def test_aliases_name_flags_of_the_table() -> None:
    for module in (vllm, tgi, llamacpp):
        flags = module.RENDERED_FLAGS
        assert set(flags.aliases.values()) <= set(flags.sources), module.__name__


def test_no_other_vllm_flag_is_read_as_a_rendered_one() -> None:
    """vLLM takes abbreviations; none of its own flags may be mistaken for a rendered one."""
    _, known = load_flags()
    assert set(vllm.RENDERED_FLAGS.sources) <= set(known)
    others = sorted(set(known) - set(vllm.RENDERED_FLAGS.sources) - set(vllm.RENDERED_FLAGS.aliases))
    wrongly = [flag for flag in others if repeated_flag(flag, set(vllm.RENDERED_FLAGS.sources), vllm.RENDERED_FLAGS)]
    assert wrongly == []
