"""Whether kopf's watch streams still deliver: the half of liveness that API calls cannot see.

An operator whose calls succeed may still be deaf: a watch stream that stalls (a frozen apiserver, a
proxy that keeps the socket but forwards nothing) or a watcher stuck reconnecting. The apiserver sends a
bookmark on every watch that asks for them (kopf does) about once a minute even when nothing changes,
and kopf reconnects a stream silent for its `watching.inactivity_timeout` (70 s). So a stream that has
delivered nothing (no event, no bookmark, no listing) for WATCH_SILENT_SECONDS is dead, and the liveness
probe says so.

kopf has no public hook for its streams: `track_kopf_watches()` wraps `infinite_watch` of kopf's watching
module (kopf's reactor looks it up on the module for every watcher it starts), recording each item a
stream yields. kopf is pinned; the unit tests fail if the function moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

WATCH_SILENT_SECONDS = 150.0  # bookmarks come every ~60 s; kopf reconnects after 70 s of silence


@dataclass(frozen=True)
class StreamFacts:
    started: float
    last_delivery: float | None = None
    deliveries: int = 0


class WatchHealth:
    """When each running watch stream started and last delivered something (events, bookmarks, listings)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, StreamFacts] = {}

    def now(self) -> float:
        return self._clock()

    def started(self, stream: str) -> None:
        with self._lock:
            self._streams[stream] = StreamFacts(started=self._clock())

    def delivered(self, stream: str) -> None:
        now = self._clock()
        with self._lock:
            was = self._streams.get(stream) or StreamFacts(started=now)
            self._streams[stream] = StreamFacts(was.started, now, was.deliveries + 1)

    def stopped(self, stream: str) -> None:
        """The watcher ended (its resource is no longer served): its silence is nobody's problem."""
        with self._lock:
            self._streams.pop(stream, None)

    def silence(self) -> dict[str, float]:
        """Seconds since each stream last delivered (or started, if it never did)."""
        now = self._clock()
        with self._lock:
            return {name: round(now - (f.last_delivery or f.started), 1) for name, f in sorted(self._streams.items())}


def watch_problem(silence: dict[str, float], *, limit_seconds: float) -> str | None:
    """Why the operator is deaf, or None: the streams silent for longer than the limit."""
    dead = {name: seconds for name, seconds in silence.items() if seconds >= limit_seconds}
    if not dead:
        return None
    listed = ", ".join(f"{name} for {seconds:.0f} s" for name, seconds in sorted(dead.items()))
    return f"watch streams delivered nothing, not even a bookmark: {listed}"


WATCHES = WatchHealth()


def stream_name(resource: Any, namespace: str | None) -> str:
    """`plural.group` (`pods` for the core group), with ` in NAMESPACE` for a namespaced watch."""
    plural, group = str(getattr(resource, "plural", resource)), str(getattr(resource, "group", "") or "")
    name = f"{plural}.{group}" if group else plural
    return f"{name} in {namespace}" if namespace else name


def tracked(original: Callable[..., AsyncIterator[Any]], health: WatchHealth) -> Callable[..., AsyncIterator[Any]]:
    """`original` (kopf's infinite_watch), reporting each stream's start, deliveries and end to `health`."""

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        name = stream_name(kwargs.get("resource"), kwargs.get("namespace"))
        health.started(name)
        try:
            async for item in original(**kwargs):
                health.delivered(name)
                yield item
        finally:
            health.stopped(name)

    infinite_watch.__wrapped__ = original  # type: ignore[attr-defined]
    return infinite_watch


def track_kopf_watches(health: WatchHealth = WATCHES) -> None:
    """Wrap kopf's infinite_watch once, before the operator starts its watchers."""
    from kopf._cogs.clients import watching  # noqa: PLC0415 - kopf's private module, only here

    if not hasattr(watching.infinite_watch, "__wrapped__"):
        watching.infinite_watch = tracked(watching.infinite_watch, health)
