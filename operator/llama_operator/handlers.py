"""kopf handlers only: watches feed indexes (the caches passes read), events start passes through `passes`.

No handler lists or gets anything per pass: nodes, CRDs, children and pods come from kopf indexes, which kopf
fills before any handler runs. A pass applies only what differs, so an idle object costs no API call, and
no timer re-applies anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from llama_operator.api.conditions import REASON_CHILD_REJECTED
from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import GROUP, PLURAL, VERSION
from llama_operator.api.status import LlamaDeploymentStatus
from llama_operator.autoscale.evaluate import decide_and_scale, read_metrics
from llama_operator.autoscale.evaluate import status_patch as autoscale_status_patch
from llama_operator.autoscale.keda import KEDA_CRD, TRIGGER_AUTH_CRD
from llama_operator.cache_names import CACHE_LABEL, cache_claim_name
from llama_operator.kill_points import kill_point
from llama_operator.kube import LWS_CRD, SERVICE_MONITOR_CRD, Kube, KubeError
from llama_operator.metrics import RECONCILE_ERRORS, forget_deployment
from llama_operator.model_cache import JOB_API, CacheObjects, slim_cache_object, users
from llama_operator.observed import (
    ChildRecord,
    ObjectView,
    OwnerKey,
    child_record,
    children_by_kind,
    owner_of,
    slim_pod,
)
from llama_operator.operator_config import OperatorConfig
from llama_operator.passes import PassInput, PassRunner, slim_owner
from llama_operator.reconcile import OperatorContext, Outcome, decision_summary
from llama_operator.render import INFERENCE_POOL_CRD, LABEL_DEPLOYMENT
from llama_operator.sizing.gpu_classes import (
    NodeFacts,
    SliceGpus,
    node_facts_from_manifest,
    slice_gpus_from_manifest,
    with_slice_gpus,
)

Manifest = dict[str, Any]
DEFAULT_EVALUATION_SECONDS = 15.0
API_CALLS_IN_FLIGHT = 16
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "llama-operator"}
WATCHED_CRDS = frozenset({SERVICE_MONITOR_CRD, LWS_CRD, INFERENCE_POOL_CRD, KEDA_CRD, TRIGGER_AUTH_CRD})
NODE_LABEL_PREFIXES = ("nvidia.com/", "llamaops.io/")  # what sizing reads; other label churn is ignored
PASS_LOGGER = logging.getLogger("llama_operator.passes")
CHILD_INDEXES = ("llama_deployments", "llama_services", "llama_pdbs", "llama_servicemonitors", "llama_lws",
                 "llama_inferencepools", "llama_scaledobjects", "llama_triggerauths")  # fmt: skip
CACHE_INDEXES = ("llama_cache_claims", "llama_cache_users", "llama_cache_jobs", "llama_cache_pods")
CLAIM_TEMPLATE_INDEX = "llama_claimtemplates"  # several per owner while pods roll to a new claim: by name
SLICE_INDEX = "llama_slices"  # GPUs the NVIDIA DRA driver publishes: inventory beside the nodes
INDEX_IDS = ("llama_owners", "llama_nodes", "llama_crds", "llama_pods", *CHILD_INDEXES, *CACHE_INDEXES,
             CLAIM_TEMPLATE_INDEX, SLICE_INDEX)  # fmt: skip
CACHE_LABELS: dict[str, Any] = {**MANAGED_LABELS, CACHE_LABEL: kopf.PRESENT}


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.execution.max_workers = 8
    settings.posting.level = logging.INFO  # our decisions (Planned, ScaledUp, ...) are Normal events
    settings.posting.loggers = False  # log lines stay logs; only explicit kopf.info/warn become Events
    settings.execution.default_backoff = 5  # a retry after an API hiccup should not wait a minute
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30  # kopf's own PATCHes: no call may hang a handler
    # Our API calls run in threads (the client is synchronous): enough of them that a thousand objects
    # converging are bound by the apiserver, not by a queue in front of six threads.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=API_CALLS_IN_FLIGHT, thread_name_prefix="api")
    )
    if "runner" not in memo:
        context = memo.get("context") or OperatorContext(kube=Kube.from_environment(), config=OperatorConfig())
        memo["runner"] = PassRunner(context, on_outcome=_report)


@kopf.on.cleanup(id="stop-checks")
async def stop_checks(memo: kopf.Memo, **_: Any) -> None:
    await _runner(memo).stop()


def _runner(memo: kopf.Memo) -> PassRunner:
    runner: PassRunner = memo["runner"]
    return runner


# -- caches: kopf indexes, filled from watches before any handler runs ------------------------------------


@kopf.index(GROUP, VERSION, PLURAL, id="llama_owners")
def llama_owners(body: kopf.Body, **_: Any) -> dict[OwnerKey, dict[str, Any]]:
    return {(str(body.metadata.namespace), str(body.metadata.name)): slim_owner(body)}


@kopf.index("", "v1", "nodes", id="llama_nodes")
def llama_nodes(body: kopf.Body, **_: Any) -> dict[None, NodeFacts]:
    facts = node_facts_from_manifest(body)
    labels = {k: v for k, v in facts.labels.items() if k.startswith(NODE_LABEL_PREFIXES)}
    return {None: NodeFacts(facts.name, labels, facts.allocatable_gpus, facts.allocatable_memory_bytes,
                            facts.unreadable)}  # fmt: skip


@kopf.index("apiextensions.k8s.io", "v1", "customresourcedefinitions", id="llama_crds")
def llama_crds(name: str, **_: Any) -> dict[None, str]:
    return {None: name} if name in WATCHED_CRDS else {}


def _child(body: kopf.Body) -> dict[OwnerKey, ChildRecord]:
    owner = owner_of(body)
    return {(str(body.metadata.namespace), owner): child_record(body)} if owner else {}


@kopf.index("apps", "v1", "deployments", labels=MANAGED_LABELS, id="llama_deployments")
def llama_deployments(body: kopf.Body, **_: Any) -> dict[OwnerKey, ChildRecord]:
    return _child(body)


@kopf.index("", "v1", "services", labels=MANAGED_LABELS, id="llama_services")
def llama_services(body: kopf.Body, **_: Any) -> dict[OwnerKey, ChildRecord]:
    return _child(body)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED_LABELS, id="llama_pdbs")
def llama_pdbs(body: kopf.Body, **_: Any) -> dict[OwnerKey, ChildRecord]:
    return _child(body)


@kopf.index("", "v1", "pods", labels=MANAGED_LABELS, id="llama_pods")
def llama_pods(body: kopf.Body, **_: Any) -> dict[OwnerKey, dict[str, Any]]:
    owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
    return {(str(body.metadata.namespace), owner): slim_pod(body)} if owner else {}


# -- the shared model caches: claims (by name and by user), their Jobs and the Jobs' pods -------------------


def _cache_key(body: kopf.Body) -> OwnerKey | None:
    name = body.metadata.labels.get(CACHE_LABEL)
    return (str(body.metadata.namespace), str(name)) if name else None


@kopf.index("", "v1", "persistentvolumeclaims", labels=CACHE_LABELS, id="llama_cache_claims")
def llama_cache_claims(body: kopf.Body, **_: Any) -> dict[OwnerKey, Manifest]:
    return {(str(body.metadata.namespace), str(body.metadata.name)): slim_cache_object(body)}


@kopf.index("", "v1", "persistentvolumeclaims", labels=CACHE_LABELS, id="llama_cache_users")
def llama_cache_users(body: kopf.Body, **_: Any) -> dict[OwnerKey, Manifest]:
    slim = slim_cache_object(body)
    return {(str(body.metadata.namespace), str(ref["name"])): slim for ref in users(body)}


@kopf.index("batch", "v1", "jobs", labels=CACHE_LABELS, id="llama_cache_jobs")
def llama_cache_jobs(body: kopf.Body, **_: Any) -> dict[OwnerKey, Manifest]:
    key = _cache_key(body)
    return {key: slim_cache_object(body)} if key else {}


@kopf.index("", "v1", "pods", labels=CACHE_LABELS, id="llama_cache_pods")
def llama_cache_pods(body: kopf.Body, **_: Any) -> dict[OwnerKey, Manifest]:
    key = _cache_key(body)
    return {key: slim_cache_object(body)} if key else {}


def wanted_cache(spec: Mapping[str, Any]) -> str | None:
    """The cache claim a raw spec asks for (before parsing: the reader's lookup key)."""
    model = spec.get("model") or {}
    if not isinstance(model, Mapping) or model.get("cache") is None or not isinstance(model.get("source"), str):
        return None
    return cache_claim_name(str(model["source"]), str(model.get("format") or "safetensors"))


def _cache_view(indexes: dict[str, Any], namespace: str, owner: Mapping[str, Any]) -> tuple[CacheObjects | None,
                                                                                           dict[str, Manifest]]:  # fmt: skip
    name = wanted_cache(owner.get("spec") or {})
    owned = {str(c["metadata"]["name"]): c for c in _values(indexes.get("llama_cache_users"),
                                                            (namespace, owner["metadata"]["name"]))}  # fmt: skip
    if name is None:
        return None, owned
    key = (namespace, name)
    claims = _values(indexes.get("llama_cache_claims"), key)
    jobs = _values(indexes.get("llama_cache_jobs"), key)
    pods = sorted(_values(indexes.get("llama_cache_pods"), key), key=lambda p: str(p["metadata"].get("name")))
    return CacheObjects(name, claim=claims[0] if claims else None, job=jobs[0] if jobs else None, pods=pods), owned


def _values(index: Any, key: object) -> list[Any]:
    return list(index[key]) if index is not None and key in index else []


def _reader(runner: PassRunner, key: OwnerKey, indexes: dict[str, Any], owner: kopf.Body | None = None) -> Any:
    """A function that assembles one pass's input from the caches, called under the object's lock."""

    def read() -> PassInput | None:
        owners = _values(indexes.get("llama_owners"), key)
        found = slim_owner(owner) if owner is not None else (owners[0] if owners else None)
        if found is None:
            return None
        nodes = _inventory_nodes(indexes)
        records = [r for name in CHILD_INDEXES for r in _values(indexes.get(name), key)]
        cache, owned_caches = _cache_view(indexes, key[0], found)
        view = ObjectView(
            children=children_by_kind(records),
            pods=sorted(_values(indexes.get("llama_pods"), key), key=lambda p: str(p["metadata"]["name"])),
            crds=frozenset(_values(indexes.get("llama_crds"), None)) & runner.ctx.watched_crds,
            cache=cache,
            owned_caches=owned_caches,
            claim_templates={r.name: r for r in _values(indexes.get(CLAIM_TEMPLATE_INDEX), key)},
        )
        inventory = runner.inventory.get(runner.ctx, nodes)
        return PassInput(found, view, inventory)

    return read


def _post_events(owner: kopf.Body, before: dict[str, Any], outcome: Outcome) -> None:
    sizing = outcome.status.sizing
    was = (before.get("gpus"), (before.get("sizing") or {}).get("fits"))
    if sizing is not None and was != (outcome.status.gpus, sizing.fits):
        if sizing.fits:
            kopf.info(owner, reason="Planned", message=decision_summary(outcome) or sizing.reason)
        else:
            kopf.warn(owner, reason="DoesNotFit", message="; ".join([sizing.reason, *sizing.alternatives]))
    for reason in outcome.rollbacks:
        kopf.warn(owner, reason="AdapterRolledBack", message=reason)
    if outcome.invalid is not None and before.get("phase") != "Failed":
        kopf.warn(owner, reason="InvalidSpec", message=outcome.invalid)
    refused = outcome.apply_error if outcome.rejected else None
    if refused is not None and _condition(before, "Degraded").get("message") != refused:
        kopf.warn(owner, reason=REASON_CHILD_REJECTED, message=refused)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _report(owner: Mapping[str, Any], outcome: Outcome, before: dict[str, Any]) -> None:
    """After every pass: Events on decisions, log lines on what was applied and started."""
    name = f"{owner['metadata'].get('namespace')}/{owner['metadata'].get('name')}"
    _post_events(kopf.Body(cast("kopf.RawBody", owner)), before, outcome)
    if outcome.applied:
        PASS_LOGGER.info("%s: applied %s", name, ", ".join(outcome.applied))
    for line in outcome.failed_now:
        RECONCILE_ERRORS.labels("rejected" if outcome.rejected else "apply").inc()
        PASS_LOGGER.warning("%s: %s", name, line)
    for line in outcome.smoke_results:
        PASS_LOGGER.info("%s: rollout: %s", name, line)


@kopf.on.resume(GROUP, VERSION, PLURAL, id="resume")
async def resume_handler(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """At start, every object gets a pass through the queue: a thousand resumes do not each hold their body
    while they wait (a pass that finds nothing to change writes nothing)."""
    kill_point("handlers.resume:entry")
    _queue_pass((str(body.metadata.namespace), str(body.metadata.name)), memo, "resume", _indexes(kwargs))


@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
async def reconcile_handler(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    kill_point("handlers.reconcile:entry")
    runner = _runner(memo)
    key = (str(body.metadata.namespace), str(body.metadata.name))
    try:
        result = await runner.run_now(key, _reader(runner, key, _indexes(kwargs), owner=body), "owner")
    except KubeError as error:
        RECONCILE_ERRORS.labels("api").inc()
        raise kopf.TemporaryError(f"Kubernetes API: {error}", delay=5) from error
    kill_point("handlers.reconcile:exit")
    outcome = result[0] if result is not None else None
    if outcome is not None and outcome.invalid is not None:
        RECONCILE_ERRORS.labels("invalid_spec").inc()
        raise kopf.PermanentError(f"invalid spec: {outcome.invalid}")
    # A child not applied is in status and logged once per try (`_report`); the pass runner tries again
    # after its back-off. No TemporaryError: kopf's retry would send a refused body again at once, and
    # write its progress annotation on every try.


@kopf.on.event(GROUP, VERSION, PLURAL, id="forget")
async def forget(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A deleted LlamaDeployment leaves nothing behind in memory: gauges, write-through state, locks."""
    if event["type"] == "DELETED":
        namespace, name = str(body.metadata.namespace), str(body.metadata.name)
        forget_deployment(namespace, name)
        _runner(memo).forget((namespace, name))


def _indexes(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Only the caches from a handler's kwargs: a queued pass must not keep the event's body alive."""
    return {name: kwargs[name] for name in INDEX_IDS if name in kwargs}


def _queue_pass(key: OwnerKey, memo: kopf.Memo, trigger: str, indexes: dict[str, Any]) -> None:
    """Queue a pass for `key` and return at once: kopf's worker for the event is free, its body released;
    a burst of events for one object becomes one pass."""
    runner = _runner(memo)

    async def job() -> None:
        try:
            await runner.run(key, _reader(runner, key, indexes), trigger)
        except KubeError as error:
            RECONCILE_ERRORS.labels("api").inc()
            PASS_LOGGER.warning("could not reconcile %s/%s after a %s event: %s", key[0], key[1], trigger, error)

    runner.enqueue(key, job)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_LABELS, id="child-deployment")
@kopf.on.event("", "v1", "services", labels=MANAGED_LABELS, id="child-service")
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED_LABELS, id="child-pdb")
async def child_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A child changed or went away: a hand edit is reverted at once, and the owner's status follows."""
    owner = owner_of(body)
    if owner:
        _queue_pass(
            (str(body.metadata.namespace), owner), memo, str(body.get("kind", "child")).lower(), _indexes(kwargs)
        )


@kopf.on.event("", "v1", "pods", labels=MANAGED_LABELS, id="child-pod")
async def child_pod(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pod of ours changed (scheduled, crashed, ready, gate set): refresh status and drive rollouts."""
    owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
    if owner:
        _queue_pass((str(body.metadata.namespace), owner), memo, "pod", _indexes(kwargs))


def _cache_users(namespace: str, name: str, claim: Mapping[str, Any] | None, indexes: dict[str, Any]) -> set[OwnerKey]:
    """Who reads this cache: its claim's users, and the objects of the namespace whose spec asks for it (a
    user not yet on the claim, or every user of a claim that is gone)."""
    keys = {(namespace, str(ref["name"])) for ref in users(claim or {})}
    owners = indexes.get("llama_owners")
    if owners is None:
        return keys
    for key in list(owners.keys()):
        if key[0] == namespace and any(wanted_cache(o.get("spec") or {}) == name for o in owners[key]):
            keys.add(key)
    return keys


async def _clear_downloads(runner: PassRunner, namespace: str, name: str, indexes: dict[str, Any]) -> None:
    """A claim on its way out takes its download Job (and so the Job's pods) along at once: the claim's
    protection finalizer waits for every scheduled pod that names it, finished ones too, and the garbage
    collector would only delete the Job once the claim is gone."""
    for job in _values(indexes.get("llama_cache_jobs"), (namespace, name)):
        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        try:
            kill_point("cache.job:delete:before")
            await asyncio.to_thread(runner.ctx.kube.delete, *JOB_API, namespace, str(meta["name"]),
                                    uid=str(meta.get("uid")), resource_version=None)  # fmt: skip
            kill_point("cache.job:delete:after")
        except KubeError as error:  # an outage: the claim's next event (or the operator's restart) tries again
            PASS_LOGGER.warning("could not delete Job %s/%s of a deleted cache: %s", namespace, meta["name"], error)


@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CACHE_LABELS, id="cache-claim")
async def cache_claim_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A cache claim was created, bound, joined, left or deleted: its users' passes follow."""
    indexes = _indexes(kwargs)
    namespace, name = str(body.metadata.namespace), str(body.metadata.name)
    if body.metadata.get("deletionTimestamp"):
        await _clear_downloads(_runner(memo), namespace, name, indexes)
    for key in _cache_users(namespace, name, body, indexes):
        _queue_pass(key, memo, "cache", indexes)


@kopf.on.event("batch", "v1", "jobs", labels=CACHE_LABELS, id="cache-job")
@kopf.on.event("", "v1", "pods", labels=CACHE_LABELS, id="cache-pod")
async def cache_download_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A cache's Job or download pod changed (started, finished, failed): its users' status follows."""
    key = _cache_key(body)
    if key is None:
        return
    indexes = _indexes(kwargs)
    claims = _values(indexes.get("llama_cache_claims"), key)
    for owner in _cache_users(key[0], key[1], claims[0] if claims else None, indexes):
        _queue_pass(owner, memo, "cache", indexes)


def _all_owners(memo: kopf.Memo, trigger: str, indexes: dict[str, Any]) -> None:
    owners = indexes.get("llama_owners")
    keys: Iterable[OwnerKey] = list(owners.keys()) if owners is not None else []
    for key in keys:
        _queue_pass(key, memo, trigger, indexes)


def _inventory_nodes(indexes: Mapping[str, Any]) -> list[NodeFacts]:
    """The nodes sizing reads, with the GPUs of their DRA ResourceSlices where no device plugin reports any."""
    return with_slice_gpus(_values(indexes.get("llama_nodes"), None), _values(indexes.get(SLICE_INDEX), None))


def _slice_index(body: kopf.Body, **_: Any) -> dict[None, SliceGpus]:
    found = slice_gpus_from_manifest(body)
    return {None: found} if found is not None else {}


@kopf.on.event("", "v1", "nodes", id="inventory")
async def inventory_changed(memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Nodes came, went or changed GPU facts: plans may change (a class appears, a refusal now fits)."""
    runner = _runner(memo)
    before = runner.inventory.current
    after = runner.inventory.get(runner.ctx, _inventory_nodes(kwargs))
    if before is not None and after != before:
        logger.info("GPU inventory changed: %s", ", ".join(after.class_names))
        _all_owners(memo, "nodes", _indexes(kwargs))


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", id="optional-apis",
               when=lambda name, **_: name in WATCHED_CRDS)  # fmt: skip
async def optional_api_changed(memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """The Prometheus Operator, LeaderWorkerSet or InferencePool CRDs came or went: children to add or stop
    rendering."""
    _all_owners(memo, "crd", _indexes(kwargs))


# Children of optional APIs: watched only where the operator may list and watch them (a watch that is
# refused would hold every handler back, since kopf fills all indexes first).
OPTIONAL_CHILDREN = {
    "llama_servicemonitors": ("monitoring.coreos.com", "v1", "servicemonitors"),
    "llama_lws": ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"),
    "llama_inferencepools": ("inference.networking.k8s.io", "v1", "inferencepools"),
    CLAIM_TEMPLATE_INDEX: ("resource.k8s.io", "v1", "resourceclaimtemplates"),
    "llama_scaledobjects": ("keda.sh", "v1alpha1", "scaledobjects"),
    "llama_triggerauths": ("keda.sh", "v1alpha1", "triggerauthentications"),
}


def watch_optional_children(allowed: Callable[[str, str], bool], logger: logging.Logger) -> list[str]:
    """Register the index and event handler of each optional child kind the operator may watch."""
    watched = []
    for index_id, (group, version, plural) in OPTIONAL_CHILDREN.items():
        if not allowed(group, plural):
            logger.info(
                "not watching %s.%s: no list/watch permission (the chart grants it when enabled)", plural, group
            )
            continue
        kopf.index(group, version, plural, labels=MANAGED_LABELS, id=index_id)(_optional_child_index)
        kopf.on.event(group, version, plural, labels=MANAGED_LABELS, id=f"child-{plural}")(child_changed)
        watched.append(f"{plural}.{group}")
    if allowed("resource.k8s.io", "resourceslices"):  # GPUs of the DRA driver count as inventory
        kopf.index("resource.k8s.io", "v1", "resourceslices", id=SLICE_INDEX)(_slice_index)
        kopf.on.event("resource.k8s.io", "v1", "resourceslices", id="inventory-slices")(inventory_changed)
        watched.append("resourceslices.resource.k8s.io")
    return watched


def _optional_child_index(body: kopf.Body, **_: Any) -> dict[OwnerKey, ChildRecord]:
    return _child(body)


def _autoscaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    """The built-in autoscaler runs; under autoscaling.mode: KEDA it does not (KEDA's HPA writes replicas)."""
    scaling = spec.get("autoscaling") or {}
    return bool(scaling.get("enabled")) and scaling.get("mode", "Builtin") != "KEDA"


async def _autoscale_once(runner: PassRunner, key: OwnerKey, body: kopf.Body, logger: kopf.Logger,
                          indexes: dict[str, Any]) -> float:  # fmt: skip
    """One evaluation: metrics read outside the lock; decide, scale and status under it; returns the
    seconds until the next evaluation."""
    try:
        spec = parse_spec(body.spec)
    except InvalidSpecError:
        return DEFAULT_EVALUATION_SECONDS  # the reconcile handler reports the spec
    interval = float(spec.autoscaling.evaluation_interval_seconds)
    ctx = runner.ctx
    namespace, name = key
    read = await read_metrics(ctx.kube, ctx.http, name=name, namespace=namespace, spec=spec,
                              default_prometheus_url=ctx.config.prometheus_url, now=time.time(),
                              allowed_prometheus_urls=ctx.config.prometheus_allowed_urls)  # fmt: skip

    async def decide(status: LlamaDeploymentStatus) -> None:
        was_available = status.autoscaling.metrics_available if status.autoscaling else True
        evaluation = await decide_and_scale(ctx.kube, read, name=name, namespace=namespace, spec=spec,
                                            status=status, now=time.time())  # fmt: skip
        await runner.write_status(key, autoscale_status_patch(evaluation), "autoscaler")
        decision = evaluation.decision
        if evaluation.scaled:
            logger.info("scaled %s: %s (metric=%s)", name, decision.reason, decision.metric)
            kopf.info(body, reason="ScaledUp" if decision.action == "up" else "ScaledDown", message=decision.reason)
        if not decision.metrics_available and was_available:
            kopf.warn(body, reason="MetricsUnavailable", message=evaluation.status.reason)

    try:
        await runner.run_after(key, decide, _reader(runner, key, indexes), "autoscaler")
    except KubeError as error:
        logger.warning("autoscaling %s/%s: %s", namespace, name, error)
    return interval


@kopf.daemon(GROUP, VERSION, PLURAL, id="autoscaler", when=_autoscaling_enabled, cancellation_timeout=10.0)
async def autoscaler(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Evaluate the queue metrics every evaluationIntervalSeconds while autoscaling is enabled."""
    runner = _runner(memo)
    key = (str(body.metadata.namespace), str(body.metadata.name))
    while not stopped:
        interval = await _autoscale_once(runner, key, body, logger, _indexes(kwargs))
        await stopped.wait(interval)
