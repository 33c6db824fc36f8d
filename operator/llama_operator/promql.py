"""A small Prometheus HTTP API client (instant queries), with errors of our own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

QUERY_TIMEOUT_SECONDS = 5.0


class PrometheusError(Exception):
    """Prometheus could not answer; the message says why (unreachable, HTTP status, query error)."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    value: float


async def instant_query(
    client: httpx.AsyncClient, base_url: str, promql: str, token: str | None = None
) -> list[Series]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = await client.get(
            f"{base_url.rstrip('/')}/api/v1/query",
            params={"query": promql},
            headers=headers,
            timeout=QUERY_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        raise PrometheusError(f"{base_url} unreachable: {error.__class__.__name__}: {error}") from error
    if response.status_code != httpx.codes.OK:
        raise PrometheusError(f"{base_url} answered HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    if body.get("status") != "success":
        raise PrometheusError(f"query failed: {body.get('errorType')}: {body.get('error')}")
    data = body.get("data") or {}
    if data.get("resultType") == "scalar":
        return [Series({}, _number(data["result"][1]))]
    return [Series(dict(item.get("metric") or {}), _number(item["value"][1])) for item in data.get("result") or []]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
