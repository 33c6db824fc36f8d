"""Running passes: one at a time per LlamaDeployment, bursts of events folded into one pass, status written
once and only when it changed, by the one writer of each field.

The reconcile pass writes everything in status except `status.autoscaling`; the autoscaler writes only
`status.autoscaling` and then runs a pass, which derives `ScalingActive` from it. Both take the object's
lock, and neither holds it while waiting on an engine or Prometheus.

A child that was not applied is tried again by a recheck when its back-off is over (`Outcome.retry_in`),
not every few seconds: a spec the apiserver refuses costs one refused PATCH per back-off step.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_operator.api.parse import parse_status
from llama_operator.api.status import LlamaDeploymentStatus
from llama_operator.kill_points import kill_point
from llama_operator.kube import KubeError
from llama_operator.metrics import PASSES, RECONCILE_SECONDS, STATUS_WRITES
from llama_operator.observed import ObjectView, OwnerKey, resource_version
from llama_operator.reconcile import ObjectRef, OperatorContext, Outcome, changed, reconcile, status_patch
from llama_operator.sizing.gpu_classes import Inventory, NodeFacts, inventory_from_nodes

Manifest = dict[str, Any]
logger = logging.getLogger(__name__)
PASSES_IN_FLIGHT = 16
ROLLOUT_RECHECK_SECONDS = 5.0
CACHE_PROGRESS_SECONDS = 5.0  # how often a download's progress is read from its Job's log
MIN_RETRY_SECONDS = 1.0


def slim_owner(body: Mapping[str, Any]) -> Manifest:
    """What passes read of a LlamaDeployment, and what an Event needs to name it (apiVersion, kind, uid)."""
    meta = body.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
            if k in meta}  # fmt: skip
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept,
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}  # fmt: skip


@dataclass
class InventoryCache:
    """The GPU inventory from the cached nodes, recomputed only when a fact sizing reads changed."""

    _key: tuple[Any, ...] | None = None
    _inventory: Inventory | None = None

    @property
    def current(self) -> Inventory | None:
        return self._inventory

    def get(self, ctx: OperatorContext, nodes: Iterable[NodeFacts]) -> Inventory:
        facts = sorted(nodes, key=lambda n: n.name)
        key = tuple((n.name, tuple(sorted(n.labels.items())), n.allocatable_gpus, n.allocatable_memory_bytes,
                     n.unreadable) for n in facts)  # fmt: skip
        if key != self._key or self._inventory is None:
            self._inventory = inventory_from_nodes(facts, ctx.config.class_list(), ctx.config.cpu_cost_per_replica)
            self._key = key
        return self._inventory


@dataclass(frozen=True)
class PassInput:
    """What one pass reads, all from caches."""

    owner: Mapping[str, Any]  # slim LlamaDeployment (metadata, spec, status)
    view: ObjectView
    inventory: Inventory


@dataclass
class PassRunner:
    """Per-object serialisation, event folding and write-through of our own status writes."""

    ctx: OperatorContext
    on_outcome: Callable[[Mapping[str, Any], Outcome, Manifest], None] | None = None  # events, log lines
    _locks: weakref.WeakValueDictionary[OwnerKey, asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)
    _queued: set[OwnerKey] = field(default_factory=set)
    _written: dict[OwnerKey, tuple[int, Manifest]] = field(default_factory=dict)  # our last status write
    # Passes in flight at once, over all objects: a thousand new objects finish a few at a time (their
    # status turns Ready early) instead of all advancing together, and their renders do not all sit in memory.
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PASSES_IN_FLIGHT))
    # What the last pass of an object saw, when it found nothing to do: the same again needs no pass.
    _steady: dict[OwnerKey, tuple[Any, ...]] = field(default_factory=dict)
    _rechecks: dict[OwnerKey, asyncio.TimerHandle] = field(default_factory=dict)  # at most one per object
    # Passes asked for by events of other objects: one entry per object (the latest job), a few workers.
    _jobs: dict[OwnerKey, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    _job_keys: asyncio.Queue[OwnerKey] = field(default_factory=asyncio.Queue)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    inventory: InventoryCache = field(default_factory=InventoryCache)

    def lock(self, key: OwnerKey) -> asyncio.Lock:
        """One pass at a time per LlamaDeployment; the entry goes when nobody holds or awaits it."""
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def forget(self, key: OwnerKey) -> None:
        self._written.pop(key, None)
        self._queued.discard(key)
        self._steady.pop(key, None)
        recheck = self._rechecks.pop(key, None)
        if recheck is not None:
            recheck.cancel()
        self.ctx.applied.forget(*key)
        self.ctx.failures.forget(*key)

    def enqueue(self, key: OwnerKey, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` (a pass for `key`) soon, on one of PASSES_IN_FLIGHT workers; while it waits, a newer job
        for the same object replaces it."""
        if key not in self._jobs:
            self._job_keys.put_nowait(key)
        self._jobs[key] = job
        self._workers = [w for w in self._workers if not w.done()]  # a worker a bug killed is replaced
        while len(self._workers) < PASSES_IN_FLIGHT:
            self._workers.append(asyncio.get_running_loop().create_task(self._work(), name="pass worker"))

    async def _work(self) -> None:
        while True:
            key = await self._job_keys.get()
            job = self._jobs.pop(key, None)
            if job is not None:
                await job()

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self.ctx.checks.stop()

    def _fingerprint(self, key: OwnerKey, found: PassInput) -> tuple[Any, ...]:
        """Everything a pass reads, by revision: the object, our last status write, children, pods, inventory."""
        children = tuple(sorted((kind, record.resource_version) for kind, record in found.view.children.items()))
        pods = tuple((p["metadata"].get("name"), p["metadata"].get("resourceVersion")) for p in found.view.pods)
        cache = found.view.cache.revisions() if found.view.cache is not None else ()
        owned = tuple(sorted((n, (c.get("metadata") or {}).get("resourceVersion"))
                             for n, c in found.view.owned_caches.items()))  # fmt: skip
        templates = tuple(sorted((n, r.resource_version) for n, r in found.view.claim_templates.items()))
        return (resource_version(found.owner), self._written.get(key, (0,))[0], children, pods, id(found.inventory),
                found.view.crds, self.ctx.applied.revisions(*key), cache, owned, templates)  # fmt: skip

    def _recheck_later(self, key: OwnerKey, read: Callable[[], PassInput | None], delay_seconds: float) -> None:
        """A rollout in progress waits on time too (pause, metric-gate window, timeout), and a child not applied
        needs another try after its back-off: look again then (the earlier of two asks wins)."""
        loop = asyncio.get_running_loop()
        pending = self._rechecks.get(key)
        if pending is not None:
            if pending.when() <= loop.time() + delay_seconds:
                return
            pending.cancel()

        async def recheck() -> None:
            try:
                await self.run(key, read, "rollout-timer")
            except KubeError as error:  # the API is gone: say so in one line, and look again (nothing else will)
                logger.warning("could not recheck %s/%s: %s; again in %.0f s", key[0], key[1], error,
                               ROLLOUT_RECHECK_SECONDS)  # fmt: skip
                self._recheck_later(key, read, ROLLOUT_RECHECK_SECONDS)

        def fire() -> None:
            self._rechecks.pop(key, None)
            self.enqueue(key, recheck)

        self._rechecks[key] = loop.call_later(delay_seconds, fire)

    def status_of(self, key: OwnerKey, owner: Mapping[str, Any]) -> Manifest:
        """The freshest status we know: the cached object's, or our own later write."""
        written = self._written.get(key)
        if written is not None and written[0] > resource_version(owner):
            return written[1]
        self._written.pop(key, None)
        return dict(owner.get("status") or {})

    async def write_status(self, key: OwnerKey, patch: Manifest, writer: str) -> None:
        kill_point(f"passes.status:{writer}:before")
        result = await asyncio.to_thread(self.ctx.kube.patch_llamadeployment_status, key[0], key[1], patch)
        kill_point(f"passes.status:{writer}:after")
        STATUS_WRITES.labels(writer).inc()
        self._written[key] = (resource_version(result), dict(result.get("status") or {}))

    async def run(
        self, key: OwnerKey, read: Callable[[], PassInput | None], trigger: str
    ) -> tuple[Outcome, Manifest] | None:
        """A pass for `key`, unless one is already waiting for the lock (it will see this event's state).
        Returns the outcome and the status the object carried before, or None when folded or gone."""
        if key in self._queued:
            return None
        self._queued.add(key)
        lock = self.lock(key)
        try:
            await lock.acquire()
        finally:
            self._queued.discard(key)  # from here on, a new event needs a pass of its own
        try:
            return await self._pass(key, read, trigger)
        finally:
            lock.release()

    async def run_now(
        self, key: OwnerKey, read: Callable[[], PassInput | None], trigger: str
    ) -> tuple[Outcome, Manifest] | None:
        """A pass that is never folded (the owner's own create/update/resume must report its result)."""
        async with self.lock(key):
            return await self._pass(key, read, trigger)

    async def _pass(
        self, key: OwnerKey, read: Callable[[], PassInput | None], trigger: str
    ) -> tuple[Outcome, Manifest] | None:
        async with self._slots:
            return await self._bounded_pass(key, read, trigger)

    async def _bounded_pass(
        self, key: OwnerKey, read: Callable[[], PassInput | None], trigger: str
    ) -> tuple[Outcome, Manifest] | None:
        found = read()
        if found is None or found.owner["metadata"].get("deletionTimestamp"):
            return None
        fingerprint = self._fingerprint(key, found)
        if trigger != "owner" and self._steady.get(key) == fingerprint:
            return None  # this pass saw exactly what the last one did, which had nothing to do
        PASSES.labels(trigger).inc()
        meta = found.owner["metadata"]
        ref = ObjectRef(key[1], key[0], str(meta["uid"]), int(meta.get("generation") or 0))
        current = self.status_of(key, found.owner)
        status: LlamaDeploymentStatus = parse_status(current)
        with RECONCILE_SECONDS.time():
            outcome = await reconcile(self.ctx, ref, found.owner.get("spec") or {}, status, view=found.view,
                                      inventory=found.inventory)  # fmt: skip
        rollout = outcome.status.adapter_rollout
        if rollout is not None and (rollout.phase == "Progressing" or rollout.checks):
            self._recheck_later(key, read, ROLLOUT_RECHECK_SECONDS)
        cache = outcome.status.model_cache
        downloading = cache is not None and cache.phase == "Downloading"
        if downloading:  # its progress is in the Job's log, which no watch reports
            self._recheck_later(key, read, CACHE_PROGRESS_SECONDS)
        retry_in = outcome.retry_in(self.ctx.clock())
        if retry_in is not None:  # a child not applied is tried again after its back-off (even if the write fails)
            self._recheck_later(key, read, max(retry_in, MIN_RETRY_SECONDS))
        new_status = status_patch(outcome)
        wrote = changed(current, new_status)
        if wrote:
            await self.write_status(key, new_status, "reconcile")
        steady = not (wrote or outcome.applied or outcome.failures or downloading
                      or (rollout and rollout.phase == "Progressing"))  # fmt: skip
        if steady:
            self._steady[key] = fingerprint
        else:
            self._steady.pop(key, None)
        if self.on_outcome is not None:
            self.on_outcome(found.owner, outcome, current)
        return outcome, current

    async def run_after(
        self,
        key: OwnerKey,
        first: Callable[[LlamaDeploymentStatus], Awaitable[None]],
        read: Callable[[], PassInput | None],
        trigger: str,
    ) -> tuple[Outcome, Manifest] | None:
        """Under the lock: `first` (the autoscaler's write of its own field), then a pass that sees it."""
        async with self.lock(key):
            found = read()
            if found is None or found.owner["metadata"].get("deletionTimestamp"):
                return None
            await first(parse_status(self.status_of(key, found.owner)))
            return await self._pass(key, read, trigger)
