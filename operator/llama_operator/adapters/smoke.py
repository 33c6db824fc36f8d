"""The smoke request: one chat request per adapter against one pod, the way a client would select it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from llama_operator.api.spec import Adapter, SmokeRequest
from llama_operator.engines.registry import engine as engine_named


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    message: str
    text: str = ""  # the reply, when there was one


def _chat_body(smoke: SmokeRequest, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": smoke.prompt}],
        "max_tokens": smoke.max_tokens,
        "temperature": 0,
        "seed": 1,
    }


def _completion_tokens(response: httpx.Response) -> int:
    """Tokens the engine generated (its `usage`); 0 when it does not say. A model may well answer with
    whitespace tokens (a small or random one often does): generating is what the smoke request checks."""
    try:
        usage = response.json().get("usage") or {}
        return int(usage.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


def _reply_text(response: httpx.Response) -> str:
    try:
        choices = response.json().get("choices") or []
    except ValueError:
        return ""
    if not choices:
        return ""
    return str((choices[0].get("message") or {}).get("content") or "")


async def _ask(http: httpx.AsyncClient, url: str, body: dict[str, Any], smoke: SmokeRequest, label: str) -> SmokeResult:
    try:
        response = await http.post(f"{url}/v1/chat/completions", json=body, timeout=smoke.timeout_seconds)
    except httpx.HTTPError as error:
        return SmokeResult(False, f"{label}: request failed: {error.__class__.__name__}: {error}")
    if response.status_code != smoke.expected_status:
        return SmokeResult(
            False, f"{label}: HTTP {response.status_code} (expected {smoke.expected_status}): {response.text[:200]}"
        )
    text = _reply_text(response)
    if smoke.expected_status == httpx.codes.OK and not text.strip() and _completion_tokens(response) < 1:
        return SmokeResult(False, f"{label}: the reply has no tokens")
    if smoke.expected_substring is not None and smoke.expected_substring not in text:
        return SmokeResult(False, f"{label}: the reply {text[:120]!r} lacks {smoke.expected_substring!r}")
    return SmokeResult(True, f"{label}: {text[:80]!r}", text)


async def smoke_by_lora_ids(
    http: httpx.AsyncClient, url: str, served_name: str, adapters: Sequence[Adapter], smoke: SmokeRequest
) -> SmokeResult:
    """llama-server: adapter ids follow the sorted names; every other id runs at scale 0."""
    ordered = sorted(adapters, key=lambda a: a.name)
    try:  # --lora-init-without-apply has been seen to still apply: zero every scale explicitly
        await http.post(f"{url}/lora-adapters", json=[{"id": i, "scale": 0.0} for i in range(len(ordered))], timeout=10)
    except httpx.HTTPError as error:
        return SmokeResult(False, f"setting adapter scales failed: {error}")
    replies = []
    for index, adapter in enumerate(ordered):
        body = _chat_body(smoke, served_name)
        body["lora"] = [{"id": i, "scale": 1.0 if i == index else 0.0} for i in range(len(ordered))]
        result = await _ask(http, url, body, smoke, f"{adapter.name}@{adapter.version}")
        if not result.passed:
            return result
        replies.append(result.message)
    return SmokeResult(True, "; ".join(replies))


async def smoke_by_model_name(
    http: httpx.AsyncClient,
    url: str,
    served_name: str,
    adapters: Sequence[Adapter],
    smoke: SmokeRequest,
    *,
    verify_applied: bool,
) -> SmokeResult:
    """vLLM and TGI: the adapter is the request's `model`. `verify_applied` (TGI, which serves the base
    model for an unknown adapter id without an error): the reply must also differ from the base model's."""
    base_text = None
    if verify_applied:
        base = await _ask(http, url, _chat_body(smoke, served_name), smoke, "base model")
        if not base.passed:
            return base
        base_text = base.text
    replies = []
    for adapter in sorted(adapters, key=lambda a: a.name):
        label = f"{adapter.name}@{adapter.version}"
        result = await _ask(http, url, _chat_body(smoke, adapter.name), smoke, label)
        if not result.passed:
            return result
        if base_text is not None and result.text == base_text:
            return SmokeResult(
                False, f"{label}: the reply equals the base model's; the engine did not apply the adapter"
            )
        replies.append(result.message)
    return SmokeResult(True, "; ".join(replies))


async def smoke_test(
    http: httpx.AsyncClient,
    engine: str,
    url: str,
    *,
    served_name: str,
    adapters: Sequence[Adapter],
    smoke: SmokeRequest,
) -> SmokeResult:
    """One request per adapter, selected the way the engine's registry entry says (`smoke_style`)."""
    if not adapters:
        return SmokeResult(True, "no adapters")
    style = engine_named(engine).smoke_style
    if style == "lora-ids":
        return await smoke_by_lora_ids(http, url, served_name, adapters, smoke)
    verify = style == "model-name-verify-differs"
    return await smoke_by_model_name(http, url, served_name, adapters, smoke, verify_applied=verify)
