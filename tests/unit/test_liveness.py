"""Liveness tells the truth: it fails once the apiserver has not answered for the limit, and only then."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import kopf
import pytest

from llama_operator.kube import ApiContact, Reachability, UnreachableError, liveness_problem
from llama_operator.liveness import ProbeFailureFilter, apiserver_answers
from llama_operator.operator_config import OperatorConfig
from llama_operator.passes import PassRunner
from llama_operator.reconcile import OperatorContext
from tests.unit.fake_api import FakeApi, owner_manifest

LIMIT, RECENT = 60.0, 30.0


@pytest.mark.parametrize(
    ("contact", "now", "live"),
    [
        (ApiContact(), 500.0, True),  # nothing called yet
        (ApiContact(last_answer=100.0), 500.0, True),  # idle since an answer: not evidence of anything
        (ApiContact(100.0, 110.0, 165.0, "refused"), 165.0, True),  # 55 s without an answer: not yet
        (ApiContact(100.0, 110.0, 170.0, "refused"), 170.0, False),  # 60 s: restart me
        (ApiContact(None, 0.0, 400.0, "timed out"), 410.0, False),  # never answered since start
        (ApiContact(100.0, 110.0, 115.0, "refused"), 500.0, True),  # failed once, long ago: the ping decides
    ],
)
def test_liveness_is_a_function_of_when_the_apiserver_last_answered(
    contact: ApiContact, now: float, live: bool
) -> None:
    problem = liveness_problem(contact, now=now, limit_seconds=LIMIT, recent_seconds=RECENT)
    assert (problem is None) == live, problem
    if problem is not None:
        assert "no answer from the Kubernetes API for" in problem
        assert contact.last_error in problem


def test_reachability_counts_from_the_first_failure_and_an_answer_ends_it() -> None:
    now = [0.0]
    reach = Reachability(clock=lambda: now[0])
    reach.failed("refused")
    now[0] = 30.0
    reach.failed("refused again")
    contact = reach.contact()
    assert (contact.failing_since, contact.last_failure, contact.last_error) == (0.0, 30.0, "refused again")
    now[0] = 31.0
    reach.answered()
    assert reach.contact() == ApiContact(last_answer=31.0)


def test_a_call_that_hangs_counts_as_unanswered_while_it_waits() -> None:
    """A frozen apiserver (SIGSTOP) accepts connections and never answers: the calls it holds are the
    evidence, from when they were sent, before any timeout ends them."""
    now = [100.0]
    reach = Reachability(clock=lambda: now[0])
    reach.answered()
    now[0] = 110.0
    hanging = reach.sent()
    now[0] = 165.0
    assert liveness_problem(reach.contact(), now=now[0], limit_seconds=LIMIT, recent_seconds=RECENT) is None
    now[0] = 170.0
    problem = liveness_problem(reach.contact(), now=now[0], limit_seconds=LIMIT, recent_seconds=RECENT)
    assert problem == "no answer from the Kubernetes API for 60 s; a call sent 60 s ago waits"
    reach.failed("ReadTimeoutError: read timed out", hanging)  # its timeout ends it: still down since it was sent
    contact = reach.contact()
    assert (contact.failing_since, contact.waiting_since) == (110.0, None)
    assert liveness_problem(contact, now=now[0], limit_seconds=LIMIT, recent_seconds=RECENT) is not None


def test_a_slow_call_is_not_an_outage_when_others_are_answered() -> None:
    now = [0.0]
    reach = Reachability(clock=lambda: now[0])
    slow = reach.sent()
    now[0] = 50.0
    reach.answered(reach.sent())  # the apiserver answers another call meanwhile
    now[0] = 100.0
    assert liveness_problem(reach.contact(), now=now[0], limit_seconds=LIMIT, recent_seconds=RECENT) is None
    reach.answered(slow)
    assert reach.contact().waiting_since is None


class PingedApi(FakeApi):
    """An apiserver that answers the probe's ping or does not, on a clock the test moves."""

    def __init__(self) -> None:
        super().__init__(owner_manifest())
        self.clock = 1000.0
        self.reachability = Reachability(clock=lambda: self.clock)
        self.up = True
        self.pings = 0

    def ping(self) -> str:
        self.pings += 1
        if not self.up:
            self.reachability.failed("ConnectionRefusedError: [Errno 111] Connection refused")
            raise UnreachableError("ConnectionRefusedError: [Errno 111] Connection refused")
        self.reachability.answered()
        return "v1.36.3"


def test_the_probe_fails_after_a_minute_without_an_answer_and_recovers_with_the_apiserver() -> None:
    api = PingedApi()
    memo = kopf.Memo(runner=PassRunner(OperatorContext(kube=api, config=OperatorConfig())))

    async def probe_at(seconds: float) -> dict[str, Any]:
        api.clock = 1000.0 + seconds
        result: dict[str, Any] = await apiserver_answers(memo=memo)
        return result

    async def scenario() -> None:
        assert (await probe_at(0))["answeredSecondsAgo"] == 0  # an idle operator pings: it answers
        api.up = False
        for seconds in (15, 30, 45, 60, 74):  # the kubelet's probes while the apiserver is gone
            result = await probe_at(seconds)
            assert result["failingSeconds"] == seconds - 15
        with pytest.raises(kopf.PermanentError, match="no answer from the Kubernetes API for 60 s"):
            await probe_at(75)
        api.up = True
        assert (await probe_at(90))["failingSeconds"] is None

    asyncio.run(scenario())
    assert api.pings == 7  # not at 75 s: the ping of 74 s is fresh enough


def test_probe_pings_only_when_no_call_answered_recently() -> None:
    api = PingedApi()
    memo = kopf.Memo(runner=PassRunner(OperatorContext(kube=api, config=OperatorConfig())))
    api.reachability.answered()  # a pass just called the API

    async def scenario() -> None:
        api.clock += 5
        await apiserver_answers(memo=memo)

    asyncio.run(scenario())
    assert api.pings == 0


def test_a_failing_probe_logs_no_traceback_of_its_own_failure() -> None:
    class ActivityError(Exception):  # kopf's, raised through aiohttp's request handler
        pass

    try:
        raise ActivityError("One or more handlers failed.")
    except ActivityError:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (),
                                   sys.exc_info())  # fmt: skip
    assert not ProbeFailureFilter().filter(record)
    other = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), None)
    assert ProbeFailureFilter().filter(other)


def test_the_probe_answers_while_the_operator_starts() -> None:
    """kopf serves probes before the startup handler has made the pass runner."""
    assert asyncio.run(apiserver_answers(memo=kopf.Memo())) == {"starting": True}
