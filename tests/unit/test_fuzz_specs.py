"""Fuzz the operator's pure path with generated LlamaDeployment specs: near-valid ones built from the
real fields, and raw JSON-ish garbage.

`parse_spec -> plan -> render -> plan_manifest` (what `llama-operator plan` prints) may refuse a spec,
but only with the project's own refusal (InvalidSpecError, or a decision that does not fit); anything
else is a crash a user would see as a stack trace. What renders is deterministic and JSON-serialisable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import GROUP, KIND, CatalogName, EngineName, Quantization
from llama_operator.operator_config import OperatorConfig
from llama_operator.plan_output import plan_manifest
from llama_operator.planning import plan
from llama_operator.render import RenderOptions, render
from tests.reliability import Recorder

CONFIG = OperatorConfig()
INVENTORY = CONFIG.default_inventory()
OPTIONS = RenderOptions(images=CONFIG.engine_images(), hub_endpoint=CONFIG.hub_endpoint)
NAME = "fuzzed"
NAMESPACE = "fuzz"

# 12,000 cases per run (about 45 s on two cores), split over the two generators; seeded so a failure reproduces.
FUZZ = settings(
    max_examples=6_000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\x7f",
            "\n--port=1",
            "$(rm -rf /)",
            "`id`",
            "'; DROP TABLE",
            "../../etc/passwd",
            "\u202e\u0000\ufeff",
            "😀" * 8,
            "a" * 1_000_000,
        ]
    ),
)
NUMBERS_AS_STRINGS = st.sampled_from(["1", "0", "-1", "1e9", "NaN", "inf", "8192", "1_000", "0x10", ""])
SOURCES = st.one_of(
    st.builds(
        "{}://{}".format,
        st.sampled_from(["hf", "pvc", "s3", "https", "http", "file", "ftp", "HF", ""]),
        st.one_of(
            st.sampled_from(
                [
                    "org/repo",
                    "org/repo/model.gguf",
                    "claim/path/adapter.gguf",
                    "bucket/a b",
                    "org/repo\x00",
                    "org/../../x",
                    "127.0.0.1/x",
                    "",
                ]
            ),
            HOSTILE_TEXT,
        ),
    ),
    HOSTILE_TEXT,
)
SMALL_INTS = st.one_of(st.integers(-2, 70), st.sampled_from([2**31, 2**63, 10**30]), NUMBERS_AS_STRINGS)
CONTEXTS = st.one_of(
    st.none(), st.integers(-1, 2**40), st.sampled_from([256, 8192, 131072, 10_485_760, 10**18]), NUMBERS_AS_STRINGS
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Absent, or the strategy's value (the caller drops None keys)."""
    return st.one_of(st.none(), strategy)


def dropping_none(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


architectures = dropping_none(
    layers=SMALL_INTS | st.integers(1, 512),
    hiddenSize=st.sampled_from([64, 4096, 8192, 65536, 65537, 0]),
    attentionHeads=st.sampled_from([1, 8, 32, 64, 1024, 3]),
    kvHeads=st.sampled_from([1, 8, 32, 5]),
    headDim=st.sampled_from([64, 128, 0, 100_000]),
    intermediateSize=st.sampled_from([64, 14336, 262144]),
    vocabSize=st.sampled_from([256, 128256, 1048576]),
    maxContextLength=st.sampled_from([256, 131072, 10_485_760, 10**12]),
    parametersBillions=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.1, 8, 405, 2000])),
    activeParametersBillions=st.floats(0.01, 3000),
    experts=st.sampled_from([1, 8, 128, 1024]),
    tiedEmbeddings=st.booleans(),
)
models = st.fixed_dictionaries(
    {},
    optional={
        "catalogName": st.one_of(st.sampled_from(get_args(CatalogName)), HOSTILE_TEXT),
        "architecture": architectures,
        "source": SOURCES,
        "format": st.sampled_from(["safetensors", "gguf", "onnx"]),
        "quantization": st.one_of(st.sampled_from(get_args(Quantization)), HOSTILE_TEXT),
        "contextLength": CONTEXTS,
        "kvCacheDtype": st.sampled_from(["auto", "fp8", "int4"]),
    },
)
env_vars = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["HF_TOKEN", "A", "-x", "PATH", "a b"]), HOSTILE_TEXT)},
    optional={"value": HOSTILE_TEXT},
)
EXTRA_ARGS = st.one_of(
    st.sampled_from(
        [
            "--max-model-len=4096",
            "--max_model_len",
            "--tensor-parallel-size",
            "--port",
            "--ctx-size",
            "-c",
            "--max-total-tokens=1",
            "--enable-prefix-caching",
            "--",
            "-",
            "-1",
            "--lora",
        ]
    ),
    HOSTILE_TEXT,
)
engines = dropping_none(
    type=st.one_of(st.sampled_from(get_args(EngineName)), st.just("sglang")),
    image=HOSTILE_TEXT,
    extraArgs=st.lists(EXTRA_ARGS, max_size=4),
    env=st.lists(env_vars, max_size=3),
)
placements = dropping_none(
    gpuClass=st.sampled_from(["auto", "gpu-24gb", "gpu-48gb", "h100-80gb", "tpu", ""]),
    gpuCount=st.one_of(st.just("auto"), SMALL_INTS),
    cpuOnly=st.booleans(),
    maxNodesPerReplica=SMALL_INTS,
)
secret_refs = st.fixed_dictionaries(
    {"name": st.sampled_from(["hub-token", "prom", "Bad_Name", ""])}, optional={"key": st.sampled_from(["token", "k"])}
)
autoscalings = dropping_none(
    enabled=st.booleans(),
    minReplicas=SMALL_INTS,
    maxReplicas=SMALL_INTS,
    metric=st.sampled_from(["queue", "inFlight", "gpu"]),
    targetPerReplica=st.one_of(st.floats(allow_nan=True), NUMBERS_AS_STRINGS),
    query=HOSTILE_TEXT,
    prometheusUrl=st.sampled_from(["http://prometheus:9090", "http://127.0.0.1:9090", "ftp://x", "\x00"]),
    prometheusAuthSecretRef=secret_refs,
    evaluationIntervalSeconds=SMALL_INTS,
    scaleUp=dropping_none(stabilizationWindowSeconds=SMALL_INTS, maxStep=SMALL_INTS, cooldownSeconds=SMALL_INTS),
)
adapters = dropping_none(
    name=st.one_of(st.sampled_from(["a", "sql", "chat-v2", "A", "-x"]), HOSTILE_TEXT),
    source=SOURCES,
    version=st.one_of(st.sampled_from(["1", "v2", "sha256:ab", "a b"]), HOSTILE_TEXT),
    rank=SMALL_INTS,
    baseModel=st.one_of(st.sampled_from(["llama-3.1-8b", "org/repo", "other"]), HOSTILE_TEXT),
)
schedulings = dropping_none(
    nodeSelector=st.dictionaries(st.text(max_size=8), HOSTILE_TEXT, max_size=2),
    tolerations=st.lists(st.dictionaries(st.sampled_from(["key", "operator", "effect"]), HOSTILE_TEXT), max_size=2),
    affinity=st.sampled_from(
        [{}, {"nodeAffinity": {}}, {"podAntiAffinity": {"x": 1}}, {"nodeAffinity": "garbage"}, {"x": None}]
    ),
)
specs = st.fixed_dictionaries(
    {"model": models},
    optional={
        "engine": engines,
        "placement": placements,
        "serving": dropping_none(
            maxConcurrentSequences=SMALL_INTS, toolCalling=st.booleans(), servedModelName=HOSTILE_TEXT
        ),
        "replicas": SMALL_INTS,
        "autoscaling": autoscalings,
        "adapters": st.lists(adapters, max_size=3),
        "scheduling": schedulings,
        "hubTokenSecretRef": secret_refs,
        "imagePullSecrets": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["regcred", "", "X"])}), max_size=2
        ),
        "unknownField": st.integers(),
    },
)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec the apiserver admits, most of which fit the default inventory: catalog or architecture
    models, every engine with its format, adapters of every scheme, autoscaling, hostile env values."""
    gguf = draw(st.booleans())
    engine = draw(st.sampled_from(["auto", "llamacpp"] if gguf else ["auto", "vllm", "tgi"]))
    suffix = "/model.gguf" if gguf else ""
    model: dict[str, Any] = {
        "source": draw(st.sampled_from(["hf://org/repo", "pvc://claim/path", "s3://bucket/p", "https://h.example/m"]))
        + suffix,
        "format": "gguf" if gguf else "safetensors",
        "quantization": draw(
            st.sampled_from(["q4_k_m", "q8_0", "f16", "bf16"] if gguf else ["none", "bf16", "fp8", "int4", "awq"])
        ),
        "contextLength": draw(st.one_of(st.none(), st.integers(256, 131072), st.sampled_from([10**6, 10**9]))),
    }
    if draw(st.booleans()):
        model["catalogName"] = draw(st.sampled_from(get_args(CatalogName)))
    else:
        kv_heads = draw(st.sampled_from([1, 2, 8]))
        heads = kv_heads * draw(st.sampled_from([1, 4]))
        model["architecture"] = {
            "layers": draw(st.integers(1, 128)),
            "hiddenSize": heads * 128,
            "attentionHeads": heads,
            "kvHeads": kv_heads,
            "intermediateSize": draw(st.sampled_from([1024, 14336])),
            "vocabSize": draw(st.sampled_from([32000, 128256])),
            "maxContextLength": draw(st.sampled_from([4096, 131072, 10_485_760])),
            "parametersBillions": draw(st.sampled_from([0.5, 1, 8, 70, 2000])),
            "experts": draw(st.sampled_from([1, 8])),
        }
    model = {k: v for k, v in model.items() if v is not None}
    replicas = draw(st.integers(0, 4))
    spec: dict[str, Any] = {
        "model": model,
        "engine": {
            "type": engine,
            "extraArgs": draw(st.lists(st.sampled_from(["--enable-prefix-caching", "--seed=1", "x y"]), max_size=2)),
            "env": draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.sampled_from(["A", "B_1", "x.y"]), "value": st.text(max_size=64)}
                    ),
                    max_size=3,
                    unique_by=lambda e: e["name"],
                )
            ),
        },
        "replicas": replicas,
        "adapters": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["a", "sql", "chat-v2"]),
                        "source": st.sampled_from(
                            ["hf://org/ad", "pvc://c/ad", "s3://b/ad", "https://h.example/ad"]
                        ).map(lambda src: src + ("/adapter.gguf" if gguf else "")),
                        "version": st.sampled_from(["1", "v2", "sha256:ab"]),
                    },
                    optional={"rank": st.sampled_from([8, 64, 512])},
                ),
                max_size=3,
                unique_by=lambda a: a["name"],
            )
        ),
        "hubTokenSecretRef": {"name": "hub-token"},
    }
    if draw(st.booleans()):
        spec["autoscaling"] = {
            "enabled": True,
            "minReplicas": min(replicas, 1),
            "maxReplicas": max(replicas, 1) + draw(st.integers(0, 4)),
            "prometheusUrl": "http://prometheus.monitoring:9090",
            "prometheusAuthSecretRef": {"name": "prom-token", "key": "token"},
        }
    if draw(st.booleans()):
        spec["placement"] = {"gpuClass": draw(st.sampled_from(["auto", "gpu-24gb", "h100-80gb"]))}
    if draw(st.booleans()):
        spec["scheduling"] = {"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "k", "operator": "Exists"}]}
    return spec


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with one section, or one field of a section, replaced by a hostile draw."""
    spec = draw(valid_specs())
    hostile = draw(specs)
    section = draw(st.sampled_from(sorted(hostile)))
    if isinstance(hostile[section], dict) and isinstance(spec.get(section), dict) and hostile[section]:
        field = draw(st.sampled_from(sorted(hostile[section])))
        spec[section] = {**spec[section], field: hostile[section][field]}
    else:
        spec[section] = hostile[section]
    return spec


json_garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
garbage_specs = st.one_of(
    st.dictionaries(
        st.sampled_from(["model", "engine", "placement", "adapters", "autoscaling", "replicas"]), json_garbage
    ),
    st.fixed_dictionaries(
        {"model": st.dictionaries(st.sampled_from(["catalogName", "source", "format"]), json_garbage)}
    ),
)


def run_pure_path(spec: dict[str, Any]) -> str:
    """The operator's pure path over one spec; returns which way it went (refused, unfit, rendered)."""
    manifest = {"apiVersion": f"{GROUP}/v1alpha1", "kind": KIND, "metadata": {"name": NAME}, "spec": spec}
    try:
        parsed = parse_spec(spec)
        decision = plan(parsed, NAME, INVENTORY)
    except InvalidSpecError:
        with pytest.raises(InvalidSpecError):
            plan_manifest(manifest, INVENTORY, CONFIG)
        return "refused"
    if decision.fits:
        first = render(NAME, NAMESPACE, parsed, decision, options=OPTIONS)
        again = render(NAME, NAMESPACE, parsed, decision, options=OPTIONS)
        assert first == again
        json.dumps(first)
    printed = plan_manifest(manifest, INVENTORY, CONFIG)
    json.dumps(printed.output)
    assert bool(printed.output["children"]) == decision.fits
    return "rendered" if decision.fits else "unfit"


MODULE_CASES: list[int] = [0]  # cases run by every fuzz test of this module, for the log


def fuzz(
    strategy: st.SearchStrategy[dict[str, Any]], evidence: Callable[[str], None], ledger: Recorder
) -> dict[str, int]:
    """Run the pure path over FUZZ's cases of `strategy`; log, record and return the outcome counts."""
    counts: dict[str, int] = {}
    started = time.monotonic()

    @FUZZ
    @given(strategy)
    def case(spec: dict[str, Any]) -> None:
        outcome = run_pure_path(spec)
        counts[outcome] = counts.get(outcome, 0) + 1

    case()
    MODULE_CASES[0] += sum(counts.values())
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    evidence(
        f"fuzz cases run: {sum(counts.values())} ({outcomes}) in {time.monotonic() - started:.1f} s; "
        f"{MODULE_CASES[0]} in this module so far"
    )
    ledger.fuzz(sum(counts.values()), f"seeded hypothesis specs through parse, plan, render, plan output: {outcomes}")
    return counts


def test_near_valid_specs_are_served_or_refused_never_crash(evidence: Callable[[str], None], ledger: Recorder) -> None:
    counts = fuzz(st.one_of(valid_specs(), mutated_specs(), specs), evidence, ledger)
    assert counts.get("rendered", 0) > 0, "the generator never produced a spec that renders: it tests only refusals"


def test_json_garbage_is_refused_never_crashes(evidence: Callable[[str], None], ledger: Recorder) -> None:
    counts = fuzz(garbage_specs, evidence, ledger)
    assert counts.get("refused", 0) > 0


NODE_AFFINITY_GARBAGE = [
    {"nodeAffinity": "garbage"},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": {"a": 1}}}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": ["x"]}}},
]


@pytest.mark.parametrize("affinity", NODE_AFFINITY_GARBAGE)
def test_misshapen_node_affinity_is_refused_not_a_render_crash(affinity: dict[str, Any]) -> None:
    """Found by the fuzz: `scheduling.affinity.nodeAffinity: garbage` passed the spec and crashed rendering
    (AttributeError while merging the GPU-class terms); it is now refused with the field named."""
    spec = {"model": {"catalogName": "llama-3.1-8b", "source": "hf://org/repo"}, "scheduling": {"affinity": affinity}}
    with pytest.raises(InvalidSpecError, match=r"spec\.scheduling\.affinity: .*nodeSelectorTerms"):
        parse_spec(spec)


PLANTED_HUB_TOKEN = "hf_plantedHubToken0123456789"
PLANTED_PROMETHEUS_TOKEN = "prom-planted-bearer-9876543210"


@pytest.mark.parametrize("engine", ["vllm", "tgi", "llamacpp"])
def test_rendered_children_name_the_secrets_never_their_values(engine: str) -> None:
    """Only the Secret's name reaches a manifest; the token itself is read by the kubelet (env valueFrom)."""
    gguf = engine == "llamacpp"
    spec = {
        "model": {
            "catalogName": "llama-3.1-8b",
            "source": "hf://org/repo/model.gguf" if gguf else "hf://org/repo",
            "format": "gguf" if gguf else "safetensors",
            "quantization": "q4_k_m" if gguf else "none",
        },
        "engine": {"type": engine},
        "replicas": 1,
        "hubTokenSecretRef": {"name": "hub-token", "key": "token"},
        "autoscaling": {
            "enabled": True,
            "prometheusUrl": "http://prometheus.monitoring:9090",
            "prometheusAuthSecretRef": {"name": "prom-token", "key": "token"},
        },
    }
    parsed = parse_spec(spec)
    decision = plan(parsed, NAME, INVENTORY)
    assert decision.fits
    children = render(NAME, NAMESPACE, parsed, decision, options=OPTIONS)
    printed = plan_manifest(
        {"apiVersion": f"{GROUP}/v1alpha1", "kind": KIND, "metadata": {"name": NAME}, "spec": spec}, INVENTORY, CONFIG
    )
    text = json.dumps([children, printed.output])
    assert PLANTED_HUB_TOKEN not in text
    assert PLANTED_PROMETHEUS_TOKEN not in text
    container = children[0]["spec"]["template"]["spec"]["containers"][0]
    hub_env = [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    assert [e["valueFrom"]["secretKeyRef"] for e in hub_env] == [{"name": "hub-token", "key": "token"}]
    assert all("value" not in e for e in hub_env)
