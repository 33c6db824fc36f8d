"""vLLM's runtime adapter API on one pod: drain it, unload what is stale, load the serving set.

POST /v1/load_lora_adapter {"lora_name", "lora_path"} answers 200, 400 when the name is already
loaded (or the adapter cannot be loaded), 404 when the path is not found; POST
/v1/unload_lora_adapter {"lora_name"}; GET /v1/models lists loaded adapters with `parent` set to
the base model. A hub adapter's `lora_path` is its repository id: vLLM downloads it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from llama_operator.api.spec import Adapter
from llama_operator.engines.registry import engine

DRAIN_TIMEOUT_SECONDS = 60.0
ENDPOINT_PROPAGATION_SECONDS = 1.0  # endpoints drop a pod that turns unready within about a second
POLL_SECONDS = 0.25
# The API above is vLLM's; a pod is drained when its running and waiting gauges are both 0.
_VLLM = engine("vllm")
_IN_FLIGHT_NAMES = "|".join(re.escape(m) for m in (_VLLM.running_metric, _VLLM.queue_metric))
IN_FLIGHT = re.compile(rf"^(?:{_IN_FLIGHT_NAMES})(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)", re.MULTILINE)


@dataclass(frozen=True)
class LoadResult:
    loaded: bool
    message: str


def lora_path(adapter: Adapter) -> str:
    """hf://org/repo[/sub] -> org/repo[/sub], the id vLLM resolves on the hub."""
    return adapter.source.removeprefix("hf://").strip("/")


async def in_flight(http: httpx.AsyncClient, url: str) -> float:
    response = await http.get(f"{url}/metrics", timeout=5)
    response.raise_for_status()  # an error page holds no counts; it must not read as an empty pod
    return sum(float(m.group(1)) for m in IN_FLIGHT.finditer(response.text))


async def drain(http: httpx.AsyncClient, url: str) -> str | None:
    """Wait until the unready pod has no request running or waiting; the reason when it does not."""
    await asyncio.sleep(ENDPOINT_PROPAGATION_SECONDS)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while True:
        try:
            busy = await in_flight(http, url)
        except httpx.HTTPError as error:
            return f"reading {url}/metrics failed: {error}"
        if busy == 0:
            return None
        if time.monotonic() > deadline:
            return f"{busy:g} requests still in flight after {DRAIN_TIMEOUT_SECONDS:g}s"
        await asyncio.sleep(POLL_SECONDS)


async def loaded_adapters(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    """name -> path of the adapters the pod has loaded."""
    response = await http.get(f"{url}/v1/models", timeout=10)
    response.raise_for_status()
    return {m["id"]: str(m.get("root", "")) for m in response.json().get("data", []) if m.get("parent")}


async def load_serving_set(http: httpx.AsyncClient, url: str, adapters: Sequence[Adapter]) -> LoadResult:
    """Make the pod's loaded adapters exactly `adapters` (unload first: a name loads once)."""
    try:
        current = await loaded_adapters(http, url)
        wanted = {a.name: lora_path(a) for a in adapters}
        for name, path in current.items():
            if wanted.get(name) != path:
                response = await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
                if response.status_code not in (httpx.codes.OK, httpx.codes.NOT_FOUND):
                    return LoadResult(False, f"unloading {name}: HTTP {response.status_code}: {response.text[:200]}")
        for name, path in wanted.items():
            if current.get(name) == path:
                continue
            response = await http.post(
                f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=300
            )
            if response.status_code != httpx.codes.OK:
                return LoadResult(
                    False, f"loading {name} from {path}: HTTP {response.status_code}: {response.text[:200]}"
                )
    except httpx.HTTPError as error:
        return LoadResult(False, f"adapter API of {url} failed: {error.__class__.__name__}: {error}")
    return LoadResult(True, "loaded " + ", ".join(f"{n}={p}" for n, p in sorted(wanted.items())))
