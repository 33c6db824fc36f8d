"""The liveness probe: kopf's liveness endpoint (`--liveness`) answers 500 once the apiserver has not
answered any of the operator's calls for API_DOWN_SECONDS, or once one of kopf's watch streams has
delivered nothing, not even a bookmark, for WATCH_SILENT_SECONDS (`watch_health`); the kubelet then
restarts the operator with fresh connections and watches. The facts are the operator's own calls
(`kube.Reachability`) and streams; an idle operator makes no calls, so the probe pings (GET /version) when
the last call is older than PING_INTERVAL_SECONDS, and waits for that ping at most PROBE_WAIT_SECONDS (the
kubelet's probe times out after 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from llama_operator.kube import ApiContact, Kube, KubeError, liveness_problem
from llama_operator.watch_health import WATCH_SILENT_SECONDS, WATCHES, track_kopf_watches, watch_problem

API_DOWN_SECONDS = 60.0  # memo "api_down_seconds" overrides it
PING_INTERVAL_SECONDS = 10.0
PROBE_WAIT_SECONDS = 2.0

track_kopf_watches()  # before kopf starts a watcher: importing this module registers the probe too


def _kube(memo: kopf.Memo) -> Kube | None:
    """The operator's client: the pass runner's, or the context's while the startup handler has not run
    (kopf serves probes from the start)."""
    runner = memo.get("runner")
    context = runner.ctx if runner is not None else memo.get("context")
    return context.kube if context is not None else None


@kopf.on.probe(id="apiserver", errors=kopf.ErrorsMode.PERMANENT)
async def apiserver_answers(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Fails (kopf answers 500) once the apiserver has not answered for the limit; otherwise says when it
    last answered and for how long calls have been failing."""
    kube = _kube(memo)
    if kube is None:
        return {"starting": True}
    contact = await _fresh_contact(memo, kube)
    now = kube.reachability.now()
    limit = float(memo.get("api_down_seconds") or API_DOWN_SECONDS)
    problem = liveness_problem(contact, now=now, limit_seconds=limit, recent_seconds=3 * PING_INTERVAL_SECONDS)
    if problem is not None:
        raise kopf.PermanentError(problem)
    silence = WATCHES.silence()
    deaf = watch_problem(silence, limit_seconds=float(memo.get("watch_silent_seconds") or WATCH_SILENT_SECONDS))
    if deaf is not None:
        raise kopf.PermanentError(deaf)
    answered = None if contact.last_answer is None else round(now - contact.last_answer, 1)
    return {"answeredSecondsAgo": answered, "failingSeconds": None if contact.failing_since is None
            else round(now - contact.failing_since, 1), "watchSilentSeconds": silence}  # fmt: skip


async def _fresh_contact(memo: kopf.Memo, kube: Kube) -> ApiContact:
    """What the operator's calls saw of the apiserver, with a ping first when the last call is stale."""
    contact = kube.reachability.contact()
    last = contact.last_attempt
    ping: asyncio.Task[None] | None = memo.get("ping")
    if (last is None or kube.reachability.now() - last >= PING_INTERVAL_SECONDS) and (ping is None or ping.done()):
        ping = asyncio.get_running_loop().create_task(_ping(kube), name="apiserver ping")
        memo["ping"] = ping
    if ping is not None and not ping.done():
        await asyncio.wait({ping}, timeout=PROBE_WAIT_SECONDS)
    return kube.reachability.contact()


async def _ping(kube: Kube) -> None:
    with contextlib.suppress(KubeError):  # kube.reachability has it; the probe reports it
        await asyncio.to_thread(kube.ping)


class ProbeFailureFilter(logging.Filter):
    """A failing probe is one line (kopf's, with the probe's reason), not also aiohttp's traceback of the
    same failure on every request of the kubelet."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "ActivityError"
