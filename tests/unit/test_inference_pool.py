"""routing.inferencePool rendered: an InferencePool v1 over the pods the Service selects, on the engine's port."""

from __future__ import annotations

from typing import Any

import pytest

from llama_operator.api.parse import parse_spec
from llama_operator.planning import plan
from llama_operator.render import INFERENCE_POOL_API, LWS_WORKER_INDEX, Owner, RenderOptions, render
from llama_operator.status_report import PoolReading, _pool_condition
from tests.unit.render_cases import INVENTORY

Manifest = dict[str, Any]
BASES: dict[str, dict[str, Any]] = {
    "vllm": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}, "engine": {"type": "vllm"}},
    "tgi": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}, "engine": {"type": "tgi"}},
    "llamacpp": {
        "model": {
            "catalogName": "llama-3.2-3b",
            "source": "hf://o/r/m.gguf",
            "format": "gguf",
            "quantization": "q4_k_m",
        },
        "engine": {"type": "llamacpp"},
        "placement": {"cpuOnly": True},
    },
}
PORTS = {"vllm": 8000, "tgi": 8080, "llamacpp": 8080}


def children(body: dict[str, Any], **options: Any) -> list[Manifest]:
    spec = parse_spec(body)
    decision = plan(spec, "chat", INVENTORY)
    return render("chat", "team-a", spec, decision, options=RenderOptions(**options), owner=Owner("chat", "uid-1"))


def pool_of(found: list[Manifest]) -> Manifest | None:
    pools = [c for c in found if c["kind"] == "InferencePool"]
    return pools[0] if pools else None


def with_pool(body: dict[str, Any], **pool: Any) -> dict[str, Any]:
    return {**body, "routing": {"inferencePool": {"enabled": True, **pool}}}


@pytest.mark.parametrize("engine", sorted(BASES))
def test_the_pool_selects_what_the_service_selects_on_the_engines_api_port(engine: str) -> None:
    found = children(with_pool(BASES[engine]))
    pool = pool_of(found)
    assert pool is not None
    (service,) = [c for c in found if c["kind"] == "Service"]
    assert pool["apiVersion"] == INFERENCE_POOL_API
    assert pool["metadata"]["name"] == "chat"
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pool["spec"] == {"selector": {"matchLabels": service["spec"]["selector"]},
                            "targetPorts": [{"number": PORTS[engine]}]}  # fmt: skip


def test_off_by_default_and_not_rendered_where_the_cluster_lacks_the_api() -> None:
    assert pool_of(children(BASES["vllm"])) is None
    assert pool_of(children(with_pool(BASES["vllm"]), inference_pool_api=False)) is None


def test_the_endpoint_picker_is_rendered_as_the_extension_spells_it() -> None:
    pool = pool_of(children(with_pool(BASES["vllm"], endpointPickerRef={"name": "epp", "port": 9002})))
    assert pool is not None
    assert pool["spec"]["endpointPickerRef"] == {"name": "epp", "kind": "Service", "group": "", "port": {"number": 9002},
                                                 "failureMode": "FailClose"}  # fmt: skip
    other = pool_of(children(with_pool(BASES["vllm"], endpointPickerRef={"name": "p", "kind": "Picker",
                                                                         "group": "x.example.com"})))  # fmt: skip
    assert other is not None
    assert other["spec"]["endpointPickerRef"] == {"name": "p", "kind": "Picker", "group": "x.example.com",
                                                  "failureMode": "FailClose"}  # fmt: skip


def test_a_multi_node_replica_is_reached_through_its_leader_only() -> None:
    body = {"model": {"catalogName": "llama-3.1-405b", "source": "pvc://models/llama-3.1-405b"},
            "engine": {"type": "vllm"}, "placement": {"maxNodesPerReplica": 2}}  # fmt: skip
    pool = pool_of(children(with_pool(body)))
    assert pool is not None
    assert pool["spec"]["selector"]["matchLabels"] == {"llamaops.io/deployment": "chat", LWS_WORKER_INDEX: "0"}


def test_the_condition_says_which_crd_to_install_or_what_the_pool_selects() -> None:
    missing = _pool_condition("chat", PoolReading(api_installed=False), 3, "2026-12-07T00:00:00Z")
    assert (missing.type, missing.status, missing.reason) == ("InferencePool", "False", "CRDNotInstalled")
    assert "inferencepools.inference.networking.k8s.io" in missing.message
    assert "routing.inferencePool.enabled: false" in missing.message
    rendered = _pool_condition("chat", PoolReading(True, 8000, "llamaops.io/deployment=chat"), 3, "now")
    assert (rendered.status, rendered.reason, rendered.observed_generation) == ("True", "Rendered", 3)
    assert rendered.message == "InferencePool/chat selects the serving pods (llamaops.io/deployment=chat) on port 8000"
