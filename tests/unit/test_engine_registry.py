"""The engine registry: one entry per engine, and every place that used to branch on an engine's name
now reads the entry (sizing flags, metrics, smoke requests, runtime adapters, engine.type auto)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, get_args

import httpx
import pytest
from pydantic import ValidationError

from llama_operator.adapters import rollout, runtime_load, smoke
from llama_operator.api.spec import Adapter, Autoscaling, EngineName, LlamaDeploymentSpec, SmokeRequest
from llama_operator.autoscale.queries import default_target, engine_queries
from llama_operator.engines import llamacpp, registry, tgi, vllm
from llama_operator.engines.base import EngineContainer, EngineImages, EngineInput
from llama_operator.engines.engine import Engine
from llama_operator.engines.registry import ENGINES, auto_engine, engine, engine_args
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan, resolve_engine, sizing_status
from llama_operator.render import Owner, RenderOptions, render
from llama_operator.sizing.catalog import CATALOG
from llama_operator.sizing.fit import SizingRequest, candidates
from llama_operator.sizing.gpu_classes import DEFAULT_INVENTORY
from llama_operator.sizing.memory import ServingEngine, Workload

INVENTORY = OperatorConfig().default_inventory()
SAFETENSORS = {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"}
GGUF = {"catalogName": "llama-3.2-3b", "source": "hf://o/r/m-Q4_K_M.gguf", "format": "gguf", "quantization": "q4_k_m"}
MODEL_OF_FORMAT = {"safetensors": SAFETENSORS, "gguf": GGUF}

# What each engine exports on /metrics for requests waiting and running, as the engines document them.
DOCUMENTED_METRICS = {
    "vllm": ("vllm:num_requests_waiting", "vllm:num_requests_running"),
    "tgi": ("tgi_queue_size", "tgi_batch_current_size"),
    "llamacpp": ("llamacpp:requests_deferred", "llamacpp:requests_processing"),
}
MODULES = {"vllm": vllm, "tgi": tgi, "llamacpp": llamacpp}


def spec_for(name: str, **overrides: Any) -> LlamaDeploymentSpec:
    entry = engine(name)
    body: dict[str, Any] = {"model": MODEL_OF_FORMAT[entry.model_format], "engine": {"type": name}, **overrides}
    return LlamaDeploymentSpec.model_validate(body)


def admitted(body: dict[str, Any]) -> bool:
    try:
        LlamaDeploymentSpec.model_validate(body)
    except ValidationError:
        return False
    return True


# The registry and the names elsewhere


def test_registry_keys_are_the_crd_enum_and_the_sizing_engines() -> None:
    """api/ and sizing/ may not import the engines: their literals must list exactly the registry's keys."""
    assert set(ENGINES) == set(get_args(EngineName)) - {"auto"}
    assert set(ENGINES) == set(get_args(ServingEngine))
    assert all(entry.name == key for key, entry in ENGINES.items())


def test_an_unknown_engine_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown engine 'sglang'; known: vllm, tgi, llamacpp"):
        engine("sglang")


def test_runtime_lora_support_and_its_sources_come_together() -> None:
    with pytest.raises(ValueError, match="runtime LoRA"):
        dataclasses.replace(ENGINES["tgi"], supports_runtime_lora=True)


# Metric names: the registry's, the autoscaler's and the engine's own agree


@pytest.mark.parametrize("name", sorted(DOCUMENTED_METRICS))
def test_metric_names_are_the_documented_ones_and_the_autoscaler_queries_them(name: str) -> None:
    queue, running = DOCUMENTED_METRICS[name]
    entry = engine(name)
    assert (entry.queue_metric, entry.running_metric) == (queue, running)
    module = MODULES[name]  # the constants the chart dashboard test reads
    assert (entry.queue_metric, entry.running_metric) == (module.QUEUE_METRIC, module.RUNNING_METRIC)
    selector = '{namespace="ns",llamaops_io_deployment="chat"}'
    assert engine_queries(name, "queue", "ns", "chat").values == f"sum by (pod) ({queue}{selector})"
    assert engine_queries(name, "inFlight", "ns", "chat").values == f"sum by (pod) ({running}{selector})"
    assert engine_queries(name, "queue", "ns", "chat").timestamps == f"max by (pod) (timestamp({queue}{selector}))"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_crd_documents_the_metrics_the_autoscaler_reads(name: str) -> None:
    description = Autoscaling.model_fields["metric"].description or ""
    queue, in_flight = description.split("inFlight:")
    assert engine(name).queue_metric in queue
    assert engine(name).running_metric in in_flight


def test_default_queue_targets_are_the_engines() -> None:
    assert {name: default_target(name, "queue", 8) for name in ENGINES} == {"vllm": 2.0, "tgi": 2.0, "llamacpp": 1.0}
    assert {default_target(name, "inFlight", 8) for name in ENGINES} == {0.8 * 8}


def test_the_runtime_load_drain_counts_vllms_running_and_waiting_gauges() -> None:
    exposition = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            'vllm:num_requests_running{engine="0",model_name="chat"} 2.0',
            'vllm:num_requests_waiting{engine="0",model_name="chat"} 3.0',
            'vllm:num_requests_waiting_by_reason{engine="0",model_name="chat",reason="capacity"} 7.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="chat"} 0.5',
            "tgi_queue_size 11",
        ]
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, text=exposition)))
    assert asyncio.run(runtime_load.in_flight(http, "http://pod:8000")) == 5.0
    names = {m.group(0).split("{")[0] for m in runtime_load.IN_FLIGHT.finditer(exposition)}
    assert names == {engine("vllm").queue_metric, engine("vllm").running_metric}


# Rendering: the dead metric fields are gone, the flags the sizing planned are rendered


def test_engine_container_no_longer_carries_metric_names() -> None:
    fields = {f.name for f in dataclasses.fields(EngineContainer)}
    assert not fields & {"queue_metric", "running_metric"}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_container_renders_the_engines_sizing_flags_and_image(name: str) -> None:
    s = spec_for(name)
    decision = plan(s, "demo", INVENTORY)
    assert decision.fits, decision.reason
    inp = EngineInput(name="demo", spec=s, decision=decision)
    rendered = engine(name).container(inp)
    args = rendered.container["args"]
    flags = engine_args(decision)
    assert flags == engine(name).sizing_args(decision.request.work, inp.shape)
    assert any(args[i : i + len(flags)] == list(flags) for i in range(len(args))), (flags, args)
    assert sizing_status(decision).engine_args == list(flags)
    assert rendered.container["image"] == engine(name).image(inp)
    workload = render("demo", "ns", s, decision, options=RenderOptions(), owner=Owner("demo", "uid-1"))[0]
    assert workload["spec"]["template"]["spec"]["containers"][0] == rendered.container


def test_default_images_come_from_the_pinned_images_unless_the_spec_overrides() -> None:
    images = EngineImages()
    expected = {"vllm": images.vllm, "tgi": images.tgi, "llamacpp": images.llamacpp_cuda}
    for name, image in expected.items():
        s = spec_for(name)
        inp = EngineInput(name="demo", spec=s, decision=plan(s, "demo", INVENTORY))
        assert engine(name).image(inp) == image
        custom = spec_for(name, engine={"type": name, "image": "registry.example/custom:1"})
        custom_inp = EngineInput(name="demo", spec=custom, decision=plan(custom, "demo", INVENTORY))
        assert engine(name).image(custom_inp) == "registry.example/custom:1"
    cpu = spec_for("llamacpp", placement={"cpuOnly": True})
    assert engine("llamacpp").image(EngineInput("demo", cpu, plan(cpu, "demo", INVENTORY))) == images.llamacpp_cpu


# engine.type auto and the serving facts the spec's rules enforce


@pytest.mark.parametrize(
    ("model", "cpu_only", "expected"),
    [(SAFETENSORS, False, "vllm"), (GGUF, False, "llamacpp"), (GGUF, True, "llamacpp")],
)
def test_auto_picks_llamacpp_for_gguf_or_cpu_and_vllm_otherwise(
    model: dict[str, Any], cpu_only: bool, expected: str
) -> None:
    s = LlamaDeploymentSpec.model_validate({"model": model, "placement": {"cpuOnly": cpu_only}})
    assert resolve_engine(s) == expected


def test_auto_keeps_its_rule_where_the_spec_rules_would_refuse() -> None:
    assert auto_engine(model_format="safetensors", cpu_only=True) == "llamacpp"
    assert auto_engine(model_format="safetensors", cpu_only=False) == "vllm"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_specs_rules_agree_with_the_registry(name: str) -> None:
    entry = engine(name)
    for model_format, model in MODEL_OF_FORMAT.items():
        assert admitted({"model": model, "engine": {"type": name}}) == (model_format == entry.model_format)
    own_model = MODEL_OF_FORMAT[entry.model_format]
    cpu = {"model": own_model, "engine": {"type": name}, "placement": {"cpuOnly": True}}
    assert admitted(cpu) == entry.runs_on_cpu
    nodes = {"model": own_model, "engine": {"type": name}, "placement": {"maxNodesPerReplica": 2}}
    assert admitted(nodes) == entry.spans_nodes


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_sizing_plans_replicas_over_nodes_only_for_engines_that_span_them(name: str) -> None:
    request = SizingRequest(Workload(CATALOG["llama-3.1-405b"], "bf16", 8192, 1), engine(name).name, max_nodes=2)
    multi_node = any(c.shape.nodes > 1 for c in candidates(request, DEFAULT_INVENTORY))
    assert multi_node == engine(name).spans_nodes


# Adapters: runtime loading and the smoke request follow the entry


HUB = Adapter(name="support", source="hf://org/support", version="v2")
S3 = Adapter(name="sql", source="s3://bucket/sql", version="v1")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_runtime_loading_follows_the_registry(name: str) -> None:
    entry = engine(name)
    assert entry.loads_at_runtime([HUB]) == (name == "vllm")
    assert not entry.loads_at_runtime([HUB, S3])  # s3: the pod must fetch it at start
    assert not entry.loads_at_runtime([])
    for adapters in ([HUB], [S3], [HUB, S3], []):
        assert rollout.loads_at_runtime(name, adapters) == entry.loads_at_runtime(adapters)


def recording_engine(requests: list[tuple[str, Any]]) -> httpx.AsyncClient:
    """Answers every chat with a reply naming what selected it, so base and adapter replies differ."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append((request.url.path, body))
        if request.url.path != "/v1/chat/completions":
            return httpx.Response(200, json=body)
        text = f"{body['model']} {body.get('lora', '')}"
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": text}}]})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def smoke_requests(name: str) -> list[tuple[str, Any]]:
    requests: list[tuple[str, Any]] = []
    result = asyncio.run(
        smoke.smoke_test(
            recording_engine(requests), name, "http://pod", served_name="base", adapters=[HUB], smoke=SmokeRequest()
        )
    )
    assert result.passed, result.message
    return requests


def chat_selectors(requests: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(body["model"], body.get("lora")) for path, body in requests if path == "/v1/chat/completions"]


def test_smoke_styles_select_adapters_as_each_engine_expects() -> None:
    assert {name: entry.smoke_style for name, entry in ENGINES.items()} == {
        "vllm": "model-name",
        "tgi": "model-name-verify-differs",
        "llamacpp": "lora-ids",
    }
    assert chat_selectors(smoke_requests("vllm")) == [("support", None)]
    assert chat_selectors(smoke_requests("tgi")) == [("base", None), ("support", None)]
    llamacpp_requests = smoke_requests("llamacpp")
    assert llamacpp_requests[0] == ("/lora-adapters", [{"id": 0, "scale": 0.0}])
    assert chat_selectors(llamacpp_requests) == [("base", [{"id": 0, "scale": 1.0}])]


def test_smoke_test_dispatches_on_the_registry_not_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    as_lora_ids: Engine = dataclasses.replace(ENGINES["vllm"], smoke_style="lora-ids")
    monkeypatch.setitem(registry.ENGINES, "vllm", as_lora_ids)
    assert chat_selectors(smoke_requests("vllm")) == [("base", [{"id": 0, "scale": 1.0}])]
