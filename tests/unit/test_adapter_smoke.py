"""The smoke request per engine, against transports that answer as each engine documents it."""

from __future__ import annotations

import asyncio
import json

import httpx

from llama_operator.adapters.smoke import smoke_test
from llama_operator.api.spec import Adapter, SmokeRequest

ADAPTER = Adapter(name="support", source="hf://org/support", version="v2")


def chat_server(replies: dict[str, str], status: int = 200, completion_tokens: int | None = None) -> httpx.AsyncClient:
    """Chat completions whose content depends on the requested model (TGI/vLLM select adapters by it);
    with ``completion_tokens``, a `usage` block as the engines send it."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text = replies.get(body["model"], "")
        answer: dict[str, object] = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        if completion_tokens is not None:
            answer["usage"] = {"completion_tokens": completion_tokens}
        return httpx.Response(status, json=answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def run(engine: str, http: httpx.AsyncClient, smoke: SmokeRequest | None = None) -> tuple[bool, str]:
    result = asyncio.run(
        smoke_test(
            http, engine, "http://pod:8080", served_name="base", adapters=[ADAPTER], smoke=smoke or SmokeRequest()
        )
    )
    return result.passed, result.message


def test_tgi_serving_the_base_model_for_the_adapter_fails() -> None:
    """TGI answers an unknown adapter id with the base model and no error: the reply must differ."""
    passed, message = run("tgi", chat_server({"base": "hello", "support": "hello"}))
    assert not passed
    assert "did not apply the adapter" in message


def test_tgi_adapter_that_changes_the_reply_passes() -> None:
    assert run("tgi", chat_server({"base": "hello", "support": "hi, support here"}))[0]


def test_vllm_unknown_adapter_is_a_404_and_fails() -> None:
    passed, message = run("vllm", chat_server({}, status=404))
    assert not passed
    assert "HTTP 404" in message


def test_expected_substring_is_checked() -> None:
    smoke = SmokeRequest(expected_substring="support")
    assert not run("vllm", chat_server({"support": "hello"}), smoke)[0]
    assert run("vllm", chat_server({"support": "support desk"}), smoke)[0]


def test_empty_reply_fails() -> None:
    passed, message = run("vllm", chat_server({"support": "   "}))
    assert not passed
    assert "no tokens" in message
    passed, message = run("vllm", chat_server({"support": ""}, completion_tokens=0))
    assert not passed
    assert "no tokens" in message


def test_a_reply_of_generated_whitespace_passes() -> None:
    """A small or random model may generate whitespace only; the engine's usage says it generated."""
    assert run("vllm", chat_server({"support": " \n "}, completion_tokens=4))[0]
