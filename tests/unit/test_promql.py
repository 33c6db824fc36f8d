"""What a Prometheus (or whatever answers at its URL) says never reaches a message, and so never a status.

The error names the URL (without a password), the HTTP status and a fixed description; the body, even
one that looks like Prometheus's own error, is dropped.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import httpx
import pytest

from llama_operator.promql import PrometheusError, Series, instant_query

URL = "http://prometheus.monitoring:9090"
SECRET = "daemon:x:1:1 ami-id=i-0123 AWS_SECRET_ACCESS_KEY=abc"  # what a body must not leak


def query(handler: Callable[[httpx.Request], httpx.Response], url: str = URL) -> list[Series]:
    async def run() -> list[Series]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await instant_query(http, url, "up")

    return asyncio.run(run())


def refused(handler: Callable[[httpx.Request], httpx.Response], url: str = URL) -> str:
    with pytest.raises(PrometheusError) as error:
        query(handler, url)
    return str(error.value)


@pytest.mark.parametrize(
    ("response", "said"),
    [
        (httpx.Response(500, text=SECRET), f"{URL} answered HTTP 500 (Internal Server Error)"),
        (httpx.Response(302, text=SECRET, headers={"location": "http://169.254.169.254/"}), "answered HTTP 302"),
        (
            httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": SECRET}),
            f"{URL} answered HTTP 400 (Bad Request): the query was refused; check its PromQL",
        ),
        (httpx.Response(403, text=SECRET), "answered HTTP 403 (Forbidden): check prometheusAuthSecretRef"),
        (httpx.Response(200, text=SECRET), f"{URL} answered HTTP 200 with something that is not a query result"),
        (httpx.Response(200, json=[SECRET]), "not a query result"),
        (
            httpx.Response(200, json={"status": "success", "data": {"result": [{"value": {"x": SECRET}}]}}),
            "not a query",
        ),
        (
            httpx.Response(200, json={"status": "error", "errorType": "execution", "error": SECRET}),
            "query failed: execution; check its PromQL",
        ),
        (httpx.Response(200, json={"status": "error", "errorType": SECRET, "error": SECRET}), "query failed: unknown"),
    ],
    ids=["500", "redirect", "400-bad-data", "403", "not-json", "json-list", "bad-value", "error-200", "odd-type"],
)
def test_an_answer_that_is_not_a_result_is_described_without_its_body(response: httpx.Response, said: str) -> None:
    message = refused(lambda _: response)
    assert said in message
    for leaked in ("daemon", "ami-id", "AWS_SECRET"):
        assert leaked not in message, message


def test_a_password_in_the_url_is_not_shown() -> None:
    message = refused(lambda _: httpx.Response(500), url="http://reader:hunter2@prometheus.monitoring:9090")
    assert message == f"{URL} answered HTTP 500 (Internal Server Error)"


def test_a_vector_and_a_scalar_are_read() -> None:
    vector = {"resultType": "vector", "result": [{"metric": {"pod": "a"}, "value": [1, "3"]}, {"value": [1, "NaN"]}]}
    series = query(lambda _: httpx.Response(200, json={"status": "success", "data": vector}))
    assert series[0] == Series({"pod": "a"}, 3.0)
    assert series[1].labels == {}
    assert math.isnan(series[1].value)
    scalar = {"resultType": "scalar", "result": [1, "0.5"]}
    assert query(lambda _: httpx.Response(200, json={"status": "success", "data": scalar})) == [Series({}, 0.5)]
