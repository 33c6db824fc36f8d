"""A small Prometheus HTTP API client (instant queries), with errors of our own.

What a Prometheus answers never reaches a message: an error says which URL, the HTTP status and a fixed
description, so a URL that points somewhere else cannot copy that place's answer into a status.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

QUERY_TIMEOUT_SECONDS = 5.0
# Prometheus's own errorType values: a fixed set, safe to repeat; anything else is shown as "unknown".
ERROR_TYPES = frozenset(
    {"timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found", "not_acceptable"}
)
# What to do about an HTTP status, by status; others get the reason phrase alone.
STATUS_ADVICE = {
    400: "the query was refused; check its PromQL",
    401: "check prometheusAuthSecretRef",
    403: "check prometheusAuthSecretRef",
    404: "no Prometheus query API at this URL; check the URL",
    422: "the query could not be executed; check its PromQL",
    503: "Prometheus is unavailable or overloaded",
}
ALLOWED_URLS_SETTING = "prometheusAllowedUrls"


class PrometheusError(Exception):
    """Prometheus could not answer; the message says why (unreachable, HTTP status, query error)."""


class PrometheusUrlRefusedError(PrometheusError):
    """The object's Prometheus URL is not one the operator may query."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    value: float


def shown_url(url: str) -> str:
    """`url` without user info (a password in it is never shown)."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except httpx.InvalidURL:
        return "<an invalid URL>"


def _parsed(url: str) -> tuple[tuple[str, str, int | None], str] | None:
    """((scheme, host, port), path) as httpx, which sends the request, reads `url`; None when it cannot."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return (parsed.scheme, parsed.host.lower(), port), parsed.path or "/"


def url_is_allowed(url: str, allowed: Sequence[str]) -> bool:
    """`url` is under one of the `allowed` prefixes: same scheme, host and port, and a path at or below the
    prefix's path by whole segments. A path with a `.` or `..` segment (even percent-encoded) is never under
    anything."""
    parsed = _parsed(url)
    if parsed is None:
        return False
    origin, path = parsed
    segments = path.split("/")
    if "." in segments or ".." in segments:
        return False
    for prefix in allowed:
        base = _parsed(prefix)
        if base is not None and base[0] == origin and posixpath.join(path, "").startswith(posixpath.join(base[1], "")):
            return True
    return False


def choose_prometheus_url(spec_url: str | None, operator_url: str | None, allowed: Sequence[str]) -> str | None:
    """The Prometheus to query: the object's URL when the operator allows it, else the operator's own.

    The operator's own URL is always allowed; `allowed` adds the operator's prometheusAllowedUrls. Raises
    PrometheusUrlRefusedError (before any request) for an object URL outside them.
    """
    if spec_url is None:
        return operator_url
    if url_is_allowed(spec_url, [*allowed, *([operator_url] if operator_url else [])]):
        return spec_url
    raise PrometheusUrlRefusedError(
        f"spec.autoscaling.prometheusUrl is not under any of the operator's {ALLOWED_URLS_SETTING}; "
        f"leave it out to use the operator's Prometheus, or ask the operator's administrator to add it to "
        f"{ALLOWED_URLS_SETTING}"
    )


async def instant_query(
    client: httpx.AsyncClient, base_url: str, promql: str, token: str | None = None
) -> list[Series]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    shown = shown_url(base_url)
    try:
        response = await client.get(
            f"{base_url.rstrip('/')}/api/v1/query",
            params={"query": promql},
            headers=headers,
            timeout=QUERY_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        raise PrometheusError(f"{shown} unreachable: {error.__class__.__name__}: {error}") from error
    code = response.status_code
    if code != httpx.codes.OK:
        advice = STATUS_ADVICE.get(code)
        reason = httpx.codes.get_reason_phrase(code) or "unexpected status"
        raise PrometheusError(f"{shown} answered HTTP {code} ({reason}){f': {advice}' if advice else ''}")
    try:
        return _series(response.json())
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise PrometheusError(f"{shown} answered HTTP 200 with something that is not a query result") from error


def _series(body: Any) -> list[Series]:
    """The series of a query result; raises for anything else (the caller says so without the body)."""
    if body.get("status") != "success":
        error_type = body.get("errorType")
        raise PrometheusError(
            f"query failed: {error_type if error_type in ERROR_TYPES else 'unknown'}; check its PromQL"
        )
    data = body.get("data") or {}
    if data.get("resultType") == "scalar":
        return [Series({}, _number(data["result"][1]))]
    return [
        Series({str(k): str(v) for k, v in (item.get("metric") or {}).items()}, _number(item["value"][1]))
        for item in data.get("result") or []
    ]


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
