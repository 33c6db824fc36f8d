"""vLLM's runtime adapter API on one pod, against a MockTransport that plays the engine: which requests
reach the pod, in what order, and what the operator makes of vLLM's answers (the pod's readiness gate
message is built from these results)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llama_operator.adapters import runtime_load
from llama_operator.adapters.runtime_load import LoadResult, drain, load_serving_set
from llama_operator.api.spec import Adapter

Manifest = dict[str, Any]
POD = "http://10.0.0.7:8000"
BASE_MODEL = {"id": "chat", "root": "meta-llama/Llama-3.1-8B-Instruct", "parent": None}


def adapter(name: str, repo: str) -> Adapter:
    return Adapter.model_validate({"name": name, "source": f"hf://{repo}", "version": "v1"})


SERVING = (adapter("support", "acme/support-v2"), adapter("faq", "acme/faq"))


class Engine:
    """vLLM's adapter endpoints: /v1/models lists `loaded`; load and unload answer what `answers` says."""

    def __init__(self, loaded: dict[str, str], answers: dict[str, httpx.Response] | None = None) -> None:
        self.loaded = dict(loaded)
        self.answers = answers or {}
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body: dict[str, str] = json.loads(request.content) if request.content else {}
        self.calls.append(f"{request.method} {path}" + (f" {json.dumps(body, sort_keys=True)}" if body else ""))
        if path in self.answers:
            return self.answers[path]
        if path == "/v1/models":
            adapters = [{"id": n, "root": p, "parent": BASE_MODEL["id"]} for n, p in self.loaded.items()]
            return httpx.Response(200, json={"object": "list", "data": [BASE_MODEL, *adapters]})
        if path == "/v1/unload_lora_adapter":
            self.loaded.pop(body["lora_name"])
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")
        if path == "/v1/load_lora_adapter":
            self.loaded[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        return httpx.Response(404)


def load(handler: Callable[[httpx.Request], httpx.Response], adapters: tuple[Adapter, ...] = SERVING) -> LoadResult:
    async def run() -> LoadResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await load_serving_set(http, POD, adapters)

    return asyncio.run(run())


def test_stale_adapters_are_unloaded_before_the_serving_set_loads() -> None:
    engine = Engine({"support": "acme/support-v1", "legal": "acme/legal"})
    result = load(engine)
    assert engine.calls == [
        "GET /v1/models",
        'POST /v1/unload_lora_adapter {"lora_name": "support"}',  # loaded from another path: a name loads once
        'POST /v1/unload_lora_adapter {"lora_name": "legal"}',  # not in the serving set
        'POST /v1/load_lora_adapter {"lora_name": "support", "lora_path": "acme/support-v2"}',
        'POST /v1/load_lora_adapter {"lora_name": "faq", "lora_path": "acme/faq"}',
    ]
    assert engine.loaded == {"support": "acme/support-v2", "faq": "acme/faq"}  # the base model stays
    assert result == LoadResult(True, "loaded faq=acme/faq, support=acme/support-v2")


def test_an_adapter_already_loaded_from_its_path_is_left_alone() -> None:
    engine = Engine({"support": "acme/support-v2", "faq": "acme/faq"})
    result = load(engine)
    assert engine.calls == ["GET /v1/models"]
    assert result.loaded


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, "The lora adapter 'support' has already been loaded."),
        (404, "No adapter found for acme/support-v2"),
    ],
)
def test_a_load_that_vllm_refuses_is_reported_with_its_status_and_body(status: int, body: str) -> None:
    engine = Engine({}, answers={"/v1/load_lora_adapter": httpx.Response(status, text=body)})
    result = load(engine)
    assert result == LoadResult(False, f"loading support from acme/support-v2: HTTP {status}: {body}")
    assert engine.calls[-1].startswith("POST /v1/load_lora_adapter"), "loading went on after a refusal"
    assert sum(c.startswith("POST /v1/load_lora_adapter") for c in engine.calls) == 1


def test_unloading_an_adapter_vllm_no_longer_has_is_not_a_failure() -> None:
    engine = Engine({"legal": "acme/legal"}, answers={"/v1/unload_lora_adapter": httpx.Response(404, text="gone")})
    result = load(engine, (adapter("faq", "acme/faq"),))
    assert engine.calls[-1] == 'POST /v1/load_lora_adapter {"lora_name": "faq", "lora_path": "acme/faq"}'
    assert result == LoadResult(True, "loaded faq=acme/faq")


def test_an_unload_that_fails_stops_before_loading() -> None:
    engine = Engine({"legal": "acme/legal"}, answers={"/v1/unload_lora_adapter": httpx.Response(500, text="boom")})
    result = load(engine)
    assert result == LoadResult(False, "unloading legal: HTTP 500: boom")
    assert not any("load_lora_adapter" in c and "unload" not in c for c in engine.calls)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def timed_out_loading(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={"data": [BASE_MODEL]})
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (refused, "ConnectError: connection refused"),
        (timed_out_loading, "ReadTimeout: timed out"),
        (lambda _: httpx.Response(503, text="starting"), "HTTPStatusError: Server error '503 Service Unavailable'"),
    ],
)
def test_a_pod_whose_adapter_api_fails_gets_a_message_not_an_exception(
    handler: Callable[[httpx.Request], httpx.Response], said: str
) -> None:
    result = load(handler)
    assert not result.loaded
    assert result.message.startswith(f"adapter API of {POD} failed: {said}")


def metrics_text(running: float, waiting: float) -> str:
    labels = '{engine="0",model_name="chat"}'
    return "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{labels} {running}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{labels} {waiting}",
        f"vllm:gpu_cache_usage_perc{labels} 0.5",  # not a request count
        "",
    ])  # fmt: skip


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_load, "ENDPOINT_PROPAGATION_SECONDS", 0.0)
    monkeypatch.setattr(runtime_load, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(runtime_load, "DRAIN_TIMEOUT_SECONDS", 5.0)


def drained(handler: Callable[[httpx.Request], httpx.Response]) -> str | None:
    async def run() -> str | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await drain(http, POD)

    return asyncio.run(run())


@pytest.mark.usefixtures("no_waits")
def test_drain_waits_until_nothing_runs_or_waits() -> None:
    gauges = iter([(2, 1), (1, 0), (0, 1), (0, 0), (5, 5)])
    reads: list[str] = []

    def engine(request: httpx.Request) -> httpx.Response:
        reads.append(str(request.url))
        return httpx.Response(200, text=metrics_text(*next(gauges)))

    assert drained(engine) is None
    assert reads == [f"{POD}/metrics"] * 4  # stopped at the first read with both gauges at 0


@pytest.mark.usefixtures("no_waits")
def test_drain_gives_up_with_the_requests_still_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_load, "DRAIN_TIMEOUT_SECONDS", 0.0)
    assert drained(lambda _: httpx.Response(200, text=metrics_text(2, 1))) == "3 requests still in flight after 0s"


@pytest.mark.usefixtures("no_waits")
def test_drain_says_why_when_metrics_cannot_be_read() -> None:
    message = drained(refused)
    assert message == f"reading {POD}/metrics failed: connection refused"


@pytest.mark.usefixtures("no_waits")
def test_a_metrics_endpoint_that_fails_is_not_read_as_an_empty_pod() -> None:
    """An HTTP 500 from /metrics holds no counts: it must not pass for 'nothing in flight'."""
    message = drained(lambda _: httpx.Response(500, text="internal error"))
    assert message is not None
    assert message.startswith(f"reading {POD}/metrics failed:")
    assert "500" in message
