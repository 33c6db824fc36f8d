"""Every vLLM argument list the renderer produces, parsed by the pinned vLLM's own `vllm serve` parser.

The parser is the real one, from the vLLM release the default image carries, installed in a venv of
its own by `hack/build-vllm-runtime.sh` (`make vllmruntime`). Importing vLLM takes seconds, so one
subprocess of that venv parses every list: the lists go in as JSON on stdin, the parsed namespaces
(or the parser's error) come back as JSON. A flag vLLM removed, a value it reads differently or a
repeated flag of which it keeps only the last shows up here, not in a customer's crash-looping pod.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.engines.base import VLLM_VERSION, served_model_name
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.memory import (
    VLLM_GPU_MEMORY_UTILIZATION,
    VLLM_MAX_BATCHED_TOKENS,
    vllm_lora_rank,
    vllm_lora_slots,
)
from llama_operator_dev.vllm_runtime import VLLM_RUNTIME_BUILD_SCRIPT, vllm_python
from tests.standins.vllm_serve_flags import load_flags
from tests.unit.render_cases import INVENTORY, LLAMA_8B, ROOT, example_specs, spec_from

VLLM_PYTHON = vllm_python()

pytestmark = pytest.mark.skipif(
    VLLM_PYTHON is None,
    reason=f"the vLLM {VLLM_VERSION} runtime is not built: run {VLLM_RUNTIME_BUILD_SCRIPT} (or make vllmruntime)",
)

# Runs in the vLLM venv. It builds the parser exactly as `vllm serve` does (a `serve` subcommand
# under vLLM's FlexibleArgumentParser), parses each list, runs the same checks `vllm serve` runs
# before loading a model, and answers on the original stdout: vLLM logs to stdout, so everything
# else is sent to stderr.
PARSE_SCRIPT = r"""
import contextlib, dataclasses, io, json, os, sys

answer = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import vllm
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
from vllm.tool_parsers import ToolParserManager
from vllm.utils.argparse_utils import FlexibleArgumentParser

def plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return repr(value)

def parse(argv):
    parser = FlexibleArgumentParser(prog="vllm")
    ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace = parser.parse_args(argv)
            validate_parsed_serve_args(namespace)
    except SystemExit:
        return {"error": errors.getvalue().strip().splitlines()[-1]}
    except (TypeError, ValueError) as error:
        return {"error": str(error)}
    return {"namespace": json.loads(json.dumps(vars(namespace), default=plain))}

arg_lists = json.load(sys.stdin)
json.dump(
    {
        "version": vllm.__version__,
        "toolParsers": sorted(ToolParserManager.list_registered()),
        "parsed": {key: parse(argv) for key, argv in arg_lists.items()},
    },
    answer,
)
answer.close()
"""

# Keep vLLM from phoning home, reaching the hub or pinning cores while it is imported.
VLLM_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


@dataclass(frozen=True)
class Rendered:
    """One LlamaDeployment rendered for vLLM: what the renderer was asked for and the argv it wrote."""

    name: str
    spec: LlamaDeploymentSpec
    decision: SizingDecision
    argv: list[str]  # after `vllm`: ["serve", MODEL, ...]


def vllm_argv(workload: dict[str, Any]) -> list[str]:
    """The `vllm serve` argv of the engine container (the Ray leader's shell line for a LeaderWorkerSet)."""
    if workload["kind"] == "LeaderWorkerSet":
        container = workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
        shell, flag, line = container["command"]
        assert (shell, flag) == ("/bin/sh", "-c")
        _, _, serve = line.partition("&& exec ")
        command = shlex.split(serve)
    else:
        container = workload["spec"]["template"]["spec"]["containers"][0]
        command = [*container["command"], *container.get("args", [])]
    assert command[:2] == ["vllm", "serve"], command
    return command[1:]


def rendered(name: str, s: LlamaDeploymentSpec) -> Rendered:
    decision = plan(s, name, INVENTORY)
    assert decision.fits, decision.reason
    assert decision.request.engine == "vllm"
    children = render(name, "ns", s, decision, options=RenderOptions(), owner=Owner(name, "uid-1"))
    return Rendered(name, s, decision, vllm_argv(children[0]))


def example_cases() -> dict[str, Rendered]:
    return {key: rendered(name, s) for key, (name, s) in example_specs("vllm").items()}


def spec(**overrides: Any) -> LlamaDeploymentSpec:
    return spec_from({"model": LLAMA_8B}, **overrides)


def adapter(name: str, source: str, version: str = "v1", rank: int | None = None) -> dict[str, Any]:
    return {"name": name, "source": source, "version": version, **({"rank": rank} if rank else {})}


SCOUT = {"catalogName": "llama-4-scout", "source": "hf://org/scout", "quantization": "int4"}

VARIANTS: dict[str, LlamaDeploymentSpec] = {
    "plain": spec(engine={"type": "vllm"}),
    "tool-calling-llama3": spec(serving={"toolCalling": True, "servedModelName": "chat"}),
    "tool-calling-llama4": spec(model=SCOUT, serving={"toolCalling": True, "maxConcurrentSequences": 2}),
    "tool-calling-off-llama4": spec(model=SCOUT, serving={"maxConcurrentSequences": 2}),
    "adapters-hf": spec(adapters=[adapter("support", "hf://o/support"), adapter("sql", "hf://o/sql", rank=64)]),
    "adapters-s3": spec(
        adapters=[
            adapter("support", "s3://bucket/support", "v2"),
            adapter("sql", "s3://bucket/sql", "v7", rank=24),
            adapter("legal", "s3://bucket/legal", "2024-10"),
        ]
    ),
    "adapters-mixed-sources": spec(
        adapters=[
            adapter("support", "hf://o/support"),
            adapter("sql", "pvc://adapters/sql", rank=8),
            adapter("legal", "https://example.com/legal.tar", "v3"),
            adapter("summarize", "s3://bucket/summarize"),
        ],
        serving={"toolCalling": True},
    ),
    "tensor-parallel-4": spec(
        model={"catalogName": "llama-3.1-70b", "quantization": "awq", "contextLength": 16384},
        placement={"gpuClass": "gpu-48gb", "gpuCount": 4},
    ),
    "fp8-weights": spec(model={"quantization": "fp8"}),
    "fp8-kv-cache": spec(
        model={"catalogName": "llama-3.1-70b", "kvCacheDtype": "fp8"}, placement={"gpuClass": "h100-80gb"}
    ),
    "multi-node-405b-bf16": spec(
        model={"catalogName": "llama-3.1-405b", "contextLength": 8192},
        placement={"maxNodesPerReplica": 2},
        serving={"toolCalling": True},
    ),
}


def all_cases() -> dict[str, Rendered]:
    return {**example_cases(), **{f"variant/{key}": rendered("demo", s) for key, s in VARIANTS.items()}}


CASES = all_cases()
REMOVED_FLAG = "--disable-log-requests"  # removed from vLLM; --enable-log-requests is off by default


def parse_with_vllm(arg_lists: dict[str, list[str]]) -> dict[str, Any]:
    assert VLLM_PYTHON is not None
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSE_SCRIPT],
        input=json.dumps(arg_lists),
        capture_output=True,
        text=True,
        env={**os.environ, **VLLM_ENV},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"the vLLM parser process failed:\n{result.stderr[-4000:]}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@pytest.fixture(scope="module")
def vllm() -> dict[str, Any]:
    """vLLM's answers for every case, plus the cases with a removed flag appended."""
    arg_lists = {key: case.argv for key, case in CASES.items()}
    arg_lists |= {f"{key}+removed": [*case.argv, REMOVED_FLAG] for key, case in CASES.items()}
    return parse_with_vllm(arg_lists)


def parsed(vllm: dict[str, Any], key: str) -> dict[str, Any]:
    answer: dict[str, Any] = vllm["parsed"][key]
    assert "error" not in answer, f"vLLM {VLLM_VERSION} refuses the rendered args of {key}: {answer['error']}"
    namespace: dict[str, Any] = answer["namespace"]
    return namespace


def test_the_runtime_is_the_pinned_release(vllm: dict[str, Any]) -> None:
    assert vllm["version"].split("+")[0] == VLLM_VERSION


def test_cases_cover_every_shape_the_renderer_has() -> None:
    argvs = [case.argv for case in CASES.values()]
    assert sum(1 for key in CASES if key.startswith("example/")) >= 3
    assert any(argv.count("--lora-modules") and "--tool-call-parser" in argv for argv in argvs)
    assert any(case.decision.chosen and case.decision.chosen.shape.nodes > 1 for case in CASES.values())
    assert any(case.decision.chosen and case.decision.chosen.shape.gpus_per_node > 1 for case in CASES.values())
    assert any(case.decision.request.work.kv_dtype_bytes == 1 for case in CASES.values())


@pytest.mark.parametrize("key", sorted(CASES))
def test_vllm_parses_what_the_renderer_meant(vllm: dict[str, Any], key: str) -> None:
    case = CASES[key]
    ns = parsed(vllm, key)
    work = case.decision.request.work
    chosen = case.decision.chosen
    assert chosen is not None
    assert ns["subparser"] == "serve"
    assert ns["model_tag"] == "/models/model"
    assert ns["served_model_name"] == [served_model_name(case.spec, case.name)]
    assert (ns["host"], ns["port"]) == ("0.0.0.0", 8000)  # noqa: S104 - the value rendered for the pod
    assert ns["max_model_len"] == work.context_length
    assert ns["max_num_seqs"] == work.max_sequences
    assert ns["max_num_batched_tokens"] == max(VLLM_MAX_BATCHED_TOKENS, work.max_sequences)
    assert ns["tensor_parallel_size"] == chosen.shape.gpus_per_node
    assert ns["pipeline_parallel_size"] == chosen.shape.nodes
    assert ns["gpu_memory_utilization"] == pytest.approx(VLLM_GPU_MEMORY_UTILIZATION)
    assert ns["kv_cache_dtype"] == ("fp8" if case.spec.model.kv_cache_dtype == "fp8" else "auto")
    assert ns["distributed_executor_backend"] == ("ray" if chosen.shape.nodes > 1 else None)
    assert ns["quantization"] == ("fp8" if case.spec.model.quantization == "fp8" else None)


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_adapter_survives_parsing(vllm: dict[str, Any], key: str) -> None:
    case = CASES[key]
    ns = parsed(vllm, key)
    adapters = case.spec.adapters
    assert bool(ns["enable_lora"]) is bool(adapters)  # off: absent (None) in 0.32
    if not adapters:
        assert not ns["lora_modules"]
        return
    assert ns["max_loras"] == vllm_lora_slots(len(adapters))
    assert ns["max_lora_rank"] == vllm_lora_rank(case.decision.request.work.max_adapter_rank)
    assert all(ns["max_lora_rank"] >= a.rank for a in adapters if a.rank)
    if all(a.source.startswith("hf://") for a in adapters):
        assert not ns["lora_modules"]  # loaded into the running pods through the adapter API
        return
    modules = {m["name"]: m["path"] for m in ns["lora_modules"] or []}
    expected = {a.name: f"/adapters/{a.name}/{a.version}" for a in adapters}
    assert modules == expected, f"lost by vLLM's parser: {sorted(expected.keys() - modules.keys())}"


@pytest.mark.parametrize("key", sorted(CASES))
def test_tool_calling_uses_a_parser_vllm_registers(vllm: dict[str, Any], key: str) -> None:
    case = CASES[key]
    ns = parsed(vllm, key)
    if not case.spec.serving.tool_calling:
        assert ns["enable_auto_tool_choice"] is False
        assert ns["tool_call_parser"] is None
        return
    assert ns["enable_auto_tool_choice"] is True
    assert ns["tool_call_parser"] in vllm["toolParsers"], f"registered: {vllm['toolParsers']}"
    family = case.decision.request.work.model.family
    assert ns["tool_call_parser"] == {"llama3": "llama3_json", "llama4": "llama4_pythonic"}[family]


def test_a_removed_flag_is_refused(vllm: dict[str, Any]) -> None:
    """The check can fail: the same lists with a flag vLLM removed are refused by name."""
    for key, case in CASES.items():
        assert REMOVED_FLAG not in case.argv
        answer = vllm["parsed"][f"{key}+removed"]
        assert "namespace" not in answer, f"vLLM {VLLM_VERSION} accepted {REMOVED_FLAG} after {key}'s args"
        assert REMOVED_FLAG in answer["error"], answer["error"]


def test_the_stand_ins_recorded_flags_are_the_pinned_parsers() -> None:
    """tests/standins/vllm-serve-flags.json (what the stand-in accepts) is what `vllm serve` accepts today."""
    assert VLLM_PYTHON is not None
    result = subprocess.run(
        [str(VLLM_PYTHON), "-m", "tests.standins.vllm_serve_flags"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={**os.environ, **VLLM_ENV, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    recorded_version, recorded = load_flags()
    current = json.loads(result.stdout)
    assert recorded_version == current["version"] == VLLM_VERSION
    assert recorded == current["flags"], (
        "the vLLM stand-in's flags drifted from the pinned parser: regenerate tests/standins/vllm-serve-flags.json "
        "as its module docstring says"
    )
