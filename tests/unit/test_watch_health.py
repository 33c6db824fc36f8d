"""Liveness hears kopf's watch streams: a stream silent past the limit (no event, no bookmark, no listing)
fails the probe; one that delivers, or has ended, does not."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from llama_operator.liveness import apiserver_answers
from llama_operator.operator_config import OperatorConfig
from llama_operator.passes import PassRunner
from llama_operator.reconcile import OperatorContext
from llama_operator.watch_health import WATCHES, WatchHealth, stream_name, tracked, watch_problem
from tests.unit.test_liveness import PingedApi


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stream_is_silent_from_its_start_until_it_delivers() -> None:
    clock = Clock()
    health = WatchHealth(clock)
    health.started("pods")
    clock.now = 160.0
    assert health.silence() == {"pods": 60.0}
    health.delivered("pods")
    clock.now = 170.0
    assert health.silence() == {"pods": 10.0}
    health.stopped("pods")
    assert health.silence() == {}


@pytest.mark.parametrize(
    ("silence", "dead"),
    [
        ({}, None),
        ({"pods": 149.0, "deployments.apps": 3.0}, None),
        ({"pods": 151.0, "deployments.apps": 3.0}, "pods for 151 s"),
        ({"pods": 200.0, "llamadeployments.llamaops.io": 150.0}, "llamadeployments.llamaops.io for 150 s, pods"),
    ],
)
def test_only_streams_past_the_limit_are_dead(silence: dict[str, float], dead: str | None) -> None:
    problem = watch_problem(silence, limit_seconds=150.0)
    if dead is None:
        assert problem is None
    else:
        assert problem is not None
        assert dead in problem
        assert "not even a bookmark" in problem


def test_the_wrapper_reports_every_item_and_the_end_of_a_stream() -> None:
    clock = Clock()
    health = WatchHealth(clock)
    seen: list[dict[str, Any]] = []

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[str]:
        seen.append(kwargs)
        for item in ("listed", "bookmark", "event"):
            clock.now += 10
            yield item

    class Resource:
        group, plural = "apps", "deployments"

    async def consume() -> list[str]:
        stream = tracked(infinite_watch, health)(resource=Resource(), namespace="team-a", settings=None)
        items = []
        async for item in stream:
            items.append(item)
            assert health.silence() == {"deployments.apps in team-a": 0.0}
        return items

    assert asyncio.run(consume()) == ["listed", "bookmark", "event"]
    assert seen[0]["namespace"] == "team-a"  # the keywords reach kopf's function unchanged
    assert health.silence() == {}  # the stream ended: not a dead one


def test_kopfs_reactor_calls_the_wrapped_watch() -> None:
    """The operator's import wrapped kopf's function, and kopf's reactor looks it up on the module for every
    watcher (not a reference bound at import): a kopf upgrade that changes either fails here."""
    assert hasattr(watching.infinite_watch, "__wrapped__")
    assert "watching.infinite_watch(" in inspect.getsource(queueing.watcher)
    assert stream_name(type("R", (), {"group": "", "plural": "pods"})(), None) == "pods"


def test_the_probe_fails_while_a_stream_is_silent_past_the_limit() -> None:
    api = PingedApi()
    memo = kopf.Memo(runner=PassRunner(OperatorContext(kube=api, config=OperatorConfig())), watch_silent_seconds=0.05)

    async def scenario() -> None:
        WATCHES.started("silent-test-stream")
        try:
            await asyncio.sleep(0.1)
            with pytest.raises(kopf.PermanentError, match="silent-test-stream for 0 s"):
                await apiserver_answers(memo=memo)
            WATCHES.delivered("silent-test-stream")
            result = await apiserver_answers(memo=memo)
            assert result["watchSilentSeconds"]["silent-test-stream"] < 0.05
        finally:
            WATCHES.stopped("silent-test-stream")

    asyncio.run(scenario())
