"""Checks that talk to engines (smoke requests, adapter loads) run as background tasks, never inside a pass.

A pass holds its object's lock for milliseconds: it starts a check, records "smoke request on pod X since T"
in `status.adapterRollout.checks`, and returns. The check ends by writing the pod's readiness gate, and that
pod event brings the next pass; the check leaves the register just before that write (`release`), so the
pass it brings already sees the pod as free. One check per pod runs at a time; an operator restart simply starts the
check again, since the gate it would have written is still unset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningCheck:
    pod: str
    what: str  # SmokeRequest | LoadAdapters
    started: float  # epoch seconds


@dataclass
class CheckRunner:
    """The engine checks in flight, one per (namespace, pod)."""

    _tasks: dict[tuple[str, str], tuple[RunningCheck, asyncio.Task[None]]] = field(default_factory=dict)

    def running(self, namespace: str, pod: str) -> RunningCheck | None:
        entry = self._tasks.get((namespace, pod))
        return entry[0] if entry is not None else None

    def in_namespace_for(self, namespace: str, pods: set[str]) -> list[RunningCheck]:
        return sorted(
            (check for (ns, pod), (check, _) in self._tasks.items() if ns == namespace and pod in pods),
            key=lambda c: c.pod,
        )

    def start(
        self, namespace: str, pod: str, what: str, work: Callable[..., Coroutine[Any, Any, None]]
    ) -> RunningCheck:
        """Start `work(release=...)` for this pod unless a check already runs there; return the one that runs.
        `work` calls `release()` right before its final write."""
        current = self.running(namespace, pod)
        if current is not None:
            return current
        check = RunningCheck(pod, what, time.time())
        holder: list[asyncio.Task[None]] = []
        task = asyncio.get_running_loop().create_task(
            work(release=lambda: self._release(namespace, pod, holder[0])), name=f"{what} {namespace}/{pod}"
        )
        holder.append(task)
        self._tasks[(namespace, pod)] = (check, task)
        task.add_done_callback(lambda done: self._finished(namespace, pod, done))
        return check

    def _release(self, namespace: str, pod: str, task: asyncio.Task[None]) -> None:
        entry = self._tasks.get((namespace, pod))
        if entry is not None and entry[1] is task:
            del self._tasks[(namespace, pod)]

    def _finished(self, namespace: str, pod: str, task: asyncio.Task[None]) -> None:
        self._release(namespace, pod, task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("check on pod %s/%s failed: %s", namespace, pod, task.exception())

    async def stop(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
