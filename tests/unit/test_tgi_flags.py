"""Every TGI launcher command line the renderer produces, checked against the pinned launcher's flags.

TGI cannot run here, so its command line is checked against facts instead of a parser:
``tgi-launcher-flags.json`` beside this file records the clap ``Args`` of ``text-generation-launcher``
for the release the default image pins (its ``source`` and ``source_notes`` say where from). Each flag
maps to ``env`` (the variable clap also reads it from, or null), ``takes_value`` (false: a switch),
``values`` (the allowed values of an enum flag, or null) and ``multiple`` (a Vec field that may repeat;
clap refuses a second occurrence of any other flag). ``env_read_directly`` lists the variables the
launcher reads outside clap.

``launcher_arg_errors`` and ``launcher_env_errors`` are small pure checkers over those facts; the tests
run them on every TGI case the renderer can produce and then check that the sizing flags say what the
sizing meant. A flag TGI dropped, a misspelt env var or a value the launcher refuses shows up here, not
in a customer's crash-looping pod.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llama_operator.api.parse import InvalidSpecError
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.engines.base import EngineImages
from llama_operator.engines.tgi import QUANTIZE_FLAGS
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import GPU_RESOURCE
from tests.unit.render_cases import INVENTORY, LLAMA_8B, example_specs, spec_from

FLAGS_FILE = Path(__file__).with_name("tgi-launcher-flags.json")
# LORA_ADAPTERS entries as the launcher and the server parse them: id[=path][@revision], comma-separated.
LORA_ENTRY = re.compile(r"^([^=@]+)(?:=([^@]+))?(?:@(.+))?$")


@dataclass(frozen=True)
class LauncherFlag:
    env: str | None
    takes_value: bool
    values: tuple[str, ...] | None
    multiple: bool


def load_launcher_facts() -> tuple[str, dict[str, LauncherFlag], frozenset[str]]:
    """(version, flags by long name, env vars read outside clap) from the recorded file."""
    data = json.loads(FLAGS_FILE.read_text())
    flags = {
        name: LauncherFlag(
            env=fact["env"],
            takes_value=fact["takes_value"],
            values=None if fact["values"] is None else tuple(fact["values"]),
            multiple=fact["multiple"],
        )
        for name, fact in data["flags"].items()
    }
    return data["version"], flags, frozenset(data["env_read_directly"])


VERSION, FLAGS, DIRECT_ENV = load_launcher_facts()


def launcher_arg_errors(argv: Sequence[str], flags: Mapping[str, LauncherFlag]) -> list[str]:
    """What the launcher's clap parser would refuse in `argv` (the arguments after the program name).

    Long flags only (`--name value` or `--name=value`); the launcher takes no positional arguments.
    """
    errors: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            kind = "a short flag (use the long form)" if token.startswith("-") else "a stray value"
            errors.append(f"{token!r}: {kind}; the launcher takes no positional arguments")
            continue
        name, has_inline, inline = token.partition("=")
        flag = flags.get(name)
        if flag is None:
            errors.append(f"{name}: not a flag of the pinned text-generation-launcher")
            if not has_inline and i < len(argv) and not argv[i].startswith("-"):
                i += 1  # its value, most likely: one error for the unknown flag, not two
            continue
        if name in seen and not flag.multiple:
            errors.append(f"{name}: given twice; clap refuses a second occurrence")
        seen.add(name)
        if not flag.takes_value:
            if has_inline:
                errors.append(f"{name}: a switch, given the value {inline!r}")
            continue
        if has_inline:
            value = inline
        elif i < len(argv) and not argv[i].startswith("-"):
            value = argv[i]
            i += 1
        else:
            errors.append(f"{name}: needs a value")
            continue
        if flag.values is not None and value not in flag.values:
            errors.append(f"{name} {value!r}: not one of {', '.join(flag.values)}")
    return errors


def launcher_env_errors(
    env: Mapping[str, str | None], flags: Mapping[str, LauncherFlag], direct_env: frozenset[str]
) -> list[str]:
    """Env vars meant for the launcher that it would not read, or would refuse (None: from a Secret)."""
    by_env = {flag.env: (name, flag) for name, flag in flags.items() if flag.env}
    errors: list[str] = []
    for var, value in env.items():
        if var in by_env:
            name, flag = by_env[var]
            if value is not None and flag.values is not None and value not in flag.values:
                errors.append(f"{var}={value!r} ({name}): not one of {', '.join(flag.values)}")
        elif var not in direct_env:
            errors.append(f"{var}: not read by the pinned text-generation-launcher")
    return errors


@dataclass(frozen=True)
class Rendered:
    """One LlamaDeployment rendered for TGI: what the renderer was asked for and the pod it wrote."""

    name: str
    spec: LlamaDeploymentSpec
    decision: SizingDecision
    pod: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        engine: dict[str, Any] = self.pod["containers"][0]
        return engine

    @property
    def argv(self) -> list[str]:
        args: list[str] = self.container["args"]
        return args

    @property
    def env(self) -> dict[str, str | None]:
        return {e["name"]: e.get("value") for e in self.container["env"]}

    def value(self, name: str) -> str:
        """The single value of a long flag (checked to be given once by the argument checker)."""
        assert self.argv.count(name) == 1, f"{name} given {self.argv.count(name)} times: {self.argv}"
        return self.argv[self.argv.index(name) + 1]


def rendered(name: str, s: LlamaDeploymentSpec) -> Rendered:
    decision = plan(s, name, INVENTORY)
    assert decision.fits, decision.reason
    assert decision.request.engine == "tgi"
    children = render(name, "ns", s, decision, options=RenderOptions(), owner=Owner(name, "uid-1"))
    deployment = children[0]
    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["text-generation-launcher"]
    return Rendered(name, s, decision, pod)


def example_cases() -> dict[str, Rendered]:
    return {key: rendered(name, s) for key, (name, s) in example_specs("tgi").items()}


def spec(**overrides: Any) -> LlamaDeploymentSpec:
    return spec_from({"model": LLAMA_8B, "engine": {"type": "tgi"}}, **overrides)


def adapter(name: str, source: str, version: str = "v1") -> dict[str, str]:
    return {"name": name, "source": source, "version": version}


VARIANTS: dict[str, LlamaDeploymentSpec] = {
    "plain": spec(),
    **{f"quantization-{q}": spec(model={"quantization": q}) for q in ("none", *QUANTIZE_FLAGS)},
    "tensor-parallel-4": spec(
        model={"catalogName": "llama-3.1-70b", "quantization": "awq", "contextLength": 16384},
        placement={"gpuClass": "gpu-48gb", "gpuCount": 4},
    ),
    "adapters-hf": spec(adapters=[adapter("support", "hf://o/support"), adapter("sql", "hf://o/sql", "v7")]),
    "adapters-mixed-sources": spec(
        adapters=[
            adapter("support", "s3://bucket/support", "v2"),
            adapter("legal", "https://example.com/legal.tar", "2024-10"),
            adapter("sql", "hf://o/sql", "1.0+build.3"),
        ],
        serving={"maxConcurrentSequences": 4},
    ),
    "tool-calling-llama4": spec(
        model={"catalogName": "llama-4-scout", "source": "hf://org/scout", "quantization": "int4"},
        serving={"toolCalling": True, "maxConcurrentSequences": 2, "servedModelName": "scout"},
    ),
    "tool-calling-off-llama4": spec(
        model={"catalogName": "llama-4-scout", "source": "hf://org/scout", "quantization": "int4"},
        serving={"maxConcurrentSequences": 2, "servedModelName": "scout"},
    ),
    "model-from-pvc": spec(model={"source": "pvc://models/llama-3.1-8b"}, hubTokenSecretRef={"name": "hf-token"}),
    "extra-args": spec(engine={"extraArgs": ["--max-concurrent-requests", "64", "--json-output"]}),
}


def all_cases() -> dict[str, Rendered]:
    return {**example_cases(), **{f"variant/{key}": rendered("demo", s) for key, s in VARIANTS.items()}}


CASES = all_cases()


def provides_path(case: Rendered, path: str) -> bool:
    """An init container writes `path`, or it lies on a PersistentVolumeClaim the engine mounts."""
    written = re.compile(re.escape(path) + r"(?![\w.+:-])")  # the path itself, not a longer sibling
    if any(written.search(" ".join(init["command"])) for init in case.pod.get("initContainers", [])):
        return True
    claims = {v["name"] for v in case.pod["volumes"] if "persistentVolumeClaim" in v}
    return any(
        m["name"] in claims and (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
        for m in case.container["volumeMounts"]
    )


def test_the_recorded_flags_are_the_pinned_release() -> None:
    """Bumping the image without recording its launcher's flags again fails here."""
    assert EngineImages().tgi.rsplit(":", 1)[1] == VERSION


def test_the_recorded_flags_are_consistent() -> None:
    """A typo in the data file would make every other check here wrong in the same way."""
    assert len(FLAGS) > 40
    assert all(name.startswith("--") for name in FLAGS)
    for name, flag in FLAGS.items():
        if name not in ("--env", "--help", "--version"):
            assert flag.env == name.removeprefix("--").upper().replace("-", "_"), name
        assert flag.values is None or (flag.takes_value and flag.values), name
    assert {"HF_TOKEN"} <= DIRECT_ENV


def test_cases_cover_every_shape_the_renderer_has() -> None:
    assert any(key.startswith("example/") for key in CASES)
    quantize = {c.value("--quantize") for c in CASES.values() if "--quantize" in c.argv}
    dtype = {c.value("--dtype") for c in CASES.values() if "--dtype" in c.argv}
    mapped = {flags[1] for flags in QUANTIZE_FLAGS.values()}
    assert mapped <= quantize | dtype, "a quantization the renderer maps for TGI is never rendered here"
    assert any(int(c.value("--num-shard")) > 1 for c in CASES.values())
    assert any("LORA_ADAPTERS" in c.env for c in CASES.values())
    assert any(c.spec.serving.tool_calling for c in CASES.values())
    assert any(c.spec.engine.extra_args for c in CASES.values())
    assert any(c.spec.hub_token_secret_ref for c in CASES.values())


@pytest.mark.parametrize("key", sorted(CASES))
def test_the_launcher_accepts_every_rendered_argument(key: str) -> None:
    case = CASES[key]
    assert launcher_arg_errors(case.argv, FLAGS) == [], case.argv


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_env_var_is_spelled_as_the_launcher_reads_it(key: str) -> None:
    case = CASES[key]
    assert launcher_env_errors(case.env, FLAGS, DIRECT_ENV) == [], case.env
    assert case.env.get("USAGE_STATS") == "off"  # no telemetry from inside a customer's cluster
    if case.spec.hub_token_secret_ref is not None:
        assert "HF_TOKEN" in case.env
    # A variable for a flag that is also on the command line is ignored by clap: one of the two is dead.
    rendered_flags = {a.partition("=")[0] for a in case.argv if a.startswith("--")}
    shadowed = {FLAGS[f].env for f in rendered_flags if f in FLAGS} & case.env.keys()
    assert not shadowed, f"set both as a flag and as an env var: {sorted(v for v in shadowed if v)}"


@pytest.mark.parametrize("key", sorted(CASES))
def test_sizing_flags_say_what_the_sizing_meant(key: str) -> None:
    case = CASES[key]
    work = case.decision.request.work
    chosen = case.decision.chosen
    assert chosen is not None
    max_input = int(case.value("--max-input-tokens"))
    max_total = int(case.value("--max-total-tokens"))
    prefill = int(case.value("--max-batch-prefill-tokens"))
    batch_total = int(case.value("--max-batch-total-tokens"))
    assert max_total == work.context_length
    assert max_input < max_total, "the launcher refuses max_input_tokens >= max_total_tokens"
    assert max_input <= prefill <= batch_total, "the router refuses a prefill budget outside these bounds"
    assert batch_total == work.context_length * work.max_sequences, "every sequence holds a full context"
    assert max_total <= batch_total, "the launcher refuses max_total_tokens > max_batch_total_tokens"
    assert "--max-input-length" not in case.argv, "legacy name; the launcher refuses it beside --max-input-tokens"


@pytest.mark.parametrize("key", sorted(CASES))
def test_shards_match_the_gpus_of_the_pod(key: str) -> None:
    case = CASES[key]
    chosen = case.decision.chosen
    assert chosen is not None
    shards = int(case.value("--num-shard"))
    assert shards == chosen.shape.gpus_per_node
    assert case.container["resources"]["limits"][GPU_RESOURCE] == str(shards)
    assert "--sharded" not in case.argv  # --num-shard alone; --sharded true with one shard is refused
    if shards > 1:
        assert any(m["mountPath"] == "/dev/shm" for m in case.container["volumeMounts"]), "NCCL needs /dev/shm"
        assert case.argv.count("--quantize") == 0 or case.value("--quantize") != "exl2", "exl2 cannot shard"


@pytest.mark.parametrize("key", sorted(CASES))
def test_ports_and_address_are_the_pods(key: str) -> None:
    case = CASES[key]
    ports = {p["name"]: p["containerPort"] for p in case.container["ports"]}
    assert int(case.value("--port")) == ports["http"]
    assert int(case.value("--prometheus-port")) == ports["prometheus"]
    assert ports["http"] != ports["prometheus"], "the launcher binds both and fails when they collide"
    # The runtime sets HOSTNAME to the pod name and clap would read it as --hostname: render the address.
    assert case.value("--hostname") == "0.0.0.0"  # noqa: S104 - the value rendered for the pod
    # Service links would add <SERVICE>_PORT=tcp://ip:port; a Service named "master" sets MASTER_PORT,
    # which the launcher reads as a number and refuses.
    assert case.pod["enableServiceLinks"] is False


@pytest.mark.parametrize("key", sorted(CASES))
def test_model_and_precision_are_what_the_spec_asked(key: str) -> None:
    case = CASES[key]
    assert provides_path(case, case.value("--model-id")), "--model-id points at nothing in the pod"
    expected = QUANTIZE_FLAGS.get(case.spec.model.quantization, [])
    precision = [a for flag in ("--quantize", "--dtype") if flag in case.argv for a in (flag, case.value(flag))]
    assert precision == expected
    assert len(precision) <= 2, "--dtype cannot be used with --quantize"


@pytest.mark.parametrize("key", sorted(CASES))
def test_adapters_are_loaded_at_start_up_from_the_pod(key: str) -> None:
    case = CASES[key]
    adapters = case.spec.adapters
    assert "--lora-adapters" not in case.argv  # one place only: LORA_ADAPTERS
    if not adapters:
        assert "LORA_ADAPTERS" not in case.env
        return
    value = case.env["LORA_ADAPTERS"]
    assert value is not None
    entries: dict[str, str] = {}
    for entry in value.split(","):
        match = LORA_ENTRY.match(entry)
        assert match, f"the launcher refuses the LORA_ADAPTERS entry {entry!r}"
        adapter_id, path, revision = match.groups()
        assert path is not None, f"{entry!r}: without =path TGI downloads {adapter_id!r} from the hub"
        assert revision is None
        entries[adapter_id] = path
    assert entries == {a.name: f"/adapters/{a.name}/{a.version}" for a in adapters}
    assert all(provides_path(case, path) for path in entries.values()), entries


def test_tool_calling_needs_no_launcher_flag() -> None:
    """TGI serves tools on its chat API as it is: switching tool calling on changes nothing here."""
    on, off = CASES["variant/tool-calling-llama4"], CASES["variant/tool-calling-off-llama4"]
    assert on.argv == off.argv
    assert on.env == off.env


def test_extra_args_come_after_the_operators_own() -> None:
    case = CASES["variant/extra-args"]
    assert case.argv[-3:] == ["--max-concurrent-requests", "64", "--json-output"]


@pytest.mark.parametrize(
    ("bad", "refused"),
    [
        (["--disable-custom-kernels-typo"], "not a flag"),
        (["--max-prefill-tokens", "4096"], "not a flag"),  # made up: TGI's is --max-batch-prefill-tokens
        (["--kv-cache-dtype", "fp8"], "not one of fp8_e4m3fn, fp8_e5m2"),  # vLLM's spelling, not TGI's
        (["--rope-scaling=yarn"], "not one of linear, dynamic"),
        (["--disable-grammar-support", "true"], "a stray value"),
        (["--disable-grammar-support=true"], "a switch"),
        (["--port", "8081"], "given twice"),
        (["-e"], "a short flag"),
        (["--max-best-of"], "needs a value"),
    ],
)
def test_the_checker_refuses_what_the_launcher_refuses(bad: list[str], refused: str) -> None:
    """The check can fail: each rendered list with one bad addition is refused, by name."""
    for key, case in CASES.items():
        errors = launcher_arg_errors([*case.argv, *bad], FLAGS)
        assert len(errors) == 1, f"{key}: {errors}"
        assert refused in errors[0], errors[0]


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"LORA_ADAPTER": "a=/adapters/a/v1"}, "not read by"),
        ({"HUGGINGFACE_TOKEN": None}, "not read by"),
        ({"USAGE_STATS": "false"}, "not one of on, off, no-stack"),
    ],
)
def test_the_env_checker_refuses_what_the_launcher_ignores(env: dict[str, str | None], refused: str) -> None:
    for key, case in CASES.items():
        errors = launcher_env_errors({**case.env, **env}, FLAGS, DIRECT_ENV)
        assert len(errors) == 1, f"{key}: {errors}"
        assert refused in errors[0], errors[0]


def test_an_extra_arg_that_repeats_a_rendered_flag_is_not_passed_twice() -> None:
    """clap refuses a second occurrence ('cannot be used multiple times'): planning refuses the spec instead."""
    try:
        s = spec(engine={"extraArgs": ["--max-batch-prefill-tokens", "4096"]})
        case = rendered("demo", s)
    except InvalidSpecError:
        return  # refusing such a spec up front is a fix too
    assert launcher_arg_errors(case.argv, FLAGS) == []


def test_a_pvc_adapter_is_in_the_pod() -> None:
    case = rendered("demo", spec(adapters=[adapter("legal", "pvc://adapters/legal", "v2")]))
    assert case.env["LORA_ADAPTERS"] == "legal=/adapters/legal/v2"
    assert provides_path(case, "/adapters/legal/v2")
