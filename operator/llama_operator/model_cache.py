"""Pure: the shared model cache (`model.cache`) — its claim, its download Job, and what status says about it.

One PersistentVolumeClaim per model source and format in a namespace (`cache_names.cache_claim_name`),
shared by every LlamaDeployment that asks for it: each user is an owner reference of the claim (not its
controller), so the garbage collector deletes the claim when its last user goes. A Job owned by the claim
fills it once, with the same download step a pod's init container runs, and prints progress lines the
operator reads from its log. Serving pods mount the claim read-only; the workload is not applied until the
Job has completed, so no pod ever waits on a download or starts on a partial model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_operator.api import status as st
from llama_operator.api.spec import GROUP, KIND, VERSION, LlamaDeploymentSpec
from llama_operator.api.status import ModelCacheStatus
from llama_operator.cache_names import CACHE_LABEL, CACHE_SOURCE_ANNOTATION, cache_of, job_name
from llama_operator.engines.base import EngineInput, Manifest
from llama_operator.engines.pod import (
    COMPLETE_LINE,
    DOWNLOAD_CONTAINER,
    PROGRESS_LINE,
    RESTRICTED_EXCEPTION_ANNOTATION,
    container_security_context,
    model_downloader,
    pod_security_context,
    scratch_volumes,
)
from llama_operator.render import MANAGED_BY, RenderOptions, pod_placement
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import MIB

MIN_CLAIM_MIB = 1024
HEADROOM = 1.2  # room for the download's temporary file next to the finished one, and for a rounding plan
JOB_BACKOFF_LIMIT = 3  # pod retries for errors curl's own retries did not cover (a reset, a full volume)
CURL_HTTP_ERROR = 22  # curl -f: the server answered >= 400 (404, 401, 403): retrying will not help
MAX_MESSAGE = 1024
CLAIM_API = ("v1", "PersistentVolumeClaim")
JOB_API = ("batch/v1", "Job")


@dataclass(frozen=True)
class CacheObjects:
    """What the watch caches hold of one model cache: its claim, its Job and the Job's pods (slim)."""

    name: str
    claim: Mapping[str, Any] | None = None
    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    def revisions(self) -> tuple[Any, ...]:
        """For the pass fingerprint: any change of the claim, the Job or a pod is a reason to look again."""
        bodies = [self.claim, self.job, *self.pods]
        return tuple(((b.get("metadata") or {}).get("name"), (b.get("metadata") or {}).get("resourceVersion"))
                     for b in bodies if b is not None)  # fmt: skip


def user_reference(name: str, uid: str) -> Manifest:
    """A LlamaDeployment that mounts the cache: an owner, not the controller (the cache has several users)."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid}


def users(claim: Mapping[str, Any]) -> list[Manifest]:
    """The claim's LlamaDeployment owner references."""
    refs = (claim.get("metadata") or {}).get("ownerReferences") or []
    return [dict(r) for r in refs if r.get("kind") == KIND]


def expected_bytes(decision: SizingDecision) -> int:
    """The model's weight bytes, as the plan counted them (per GPU times the GPUs of one replica)."""
    chosen = decision.chosen
    if chosen is None:
        return 0
    shape = chosen.shape
    return int(chosen.memory.weights * max(shape.gpus_per_node, 1) * max(shape.nodes, 1))


def claim_size(spec: LlamaDeploymentSpec, decision: SizingDecision) -> str:
    """`model.cache.size`, or the weights plus HEADROOM in MiB (at least MIN_CLAIM_MIB)."""
    cache = spec.model.cache
    if cache is not None and cache.size is not None:
        return cache.size
    return f"{max(MIN_CLAIM_MIB, math.ceil(expected_bytes(decision) * HEADROOM / MIB))}Mi"


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/component": "model-cache", "app.kubernetes.io/managed-by": MANAGED_BY}


def render_claim(
    namespace: str, spec: LlamaDeploymentSpec, decision: SizingDecision, *, user_name: str, user_uid: str
) -> Manifest:
    """The cache's claim as its first user creates it."""
    claim = cache_of(spec)
    cache = spec.model.cache
    if claim is None or cache is None:
        raise ValueError("render_claim needs model.cache")
    claim_spec: Manifest = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": claim_size(spec, decision)}},
        "volumeMode": "Filesystem",
    }
    if cache.storage_class_name is not None:
        claim_spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": CLAIM_API[0],
        "kind": CLAIM_API[1],
        "metadata": {
            "name": claim,
            "namespace": namespace,
            "labels": {**_labels(), CACHE_LABEL: claim},
            "annotations": {CACHE_SOURCE_ANNOTATION: f"{spec.model.format}:{spec.model.source}"},
            "ownerReferences": [user_reference(user_name, user_uid)],
        },
        "spec": claim_spec,
    }


def render_job(
    name: str, namespace: str, spec: LlamaDeploymentSpec, decision: SizingDecision, *, options: RenderOptions,
    claim_uid: str,
) -> Manifest:  # fmt: skip
    """The Job that fills the claim: the pods' own download step with progress lines, placed where the
    serving pods go (a node-local volume is then filled on a node that can serve it), restricted like them.
    An HTTP error (curl's exit code 22: a 404, a refused token) fails the Job at once; other errors retry."""
    claim = cache_of(spec)
    if claim is None:
        raise ValueError("render_job needs model.cache")
    inp = EngineInput(name=name, spec=spec, decision=decision, images=options.images, hub_endpoint=options.hub_endpoint)
    engine_image = inp.engine.image(inp)
    download = model_downloader(inp, engine_image, progress=True)
    # A hub checkpoint is fetched by the engine image's huggingface_hub: as the engine runs, exception included.
    exception = inp.engine.container(inp).restricted_exception if download["image"] == engine_image else None
    download["name"] = DOWNLOAD_CONTAINER
    download["volumeMounts"][0] = {**download["volumeMounts"][0], "name": "models"}
    download["terminationMessagePolicy"] = "FallbackToLogsOnError"  # the download's own error in the pod status
    download["securityContext"] = container_security_context(read_only_root=True)
    labels = {**_labels(), CACHE_LABEL: claim}
    pod: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(exception),
        "containers": [download],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim}}, *scratch_volumes()],
        **pod_placement(inp),
    }
    owner = {"apiVersion": CLAIM_API[0], "kind": CLAIM_API[1], "name": claim, "uid": claim_uid, "controller": True}
    annotations = {RESTRICTED_EXCEPTION_ANNOTATION: exception} if exception is not None else {}
    return {
        "apiVersion": JOB_API[0],
        "kind": JOB_API[1],
        "metadata": {"name": job_name(claim), "namespace": namespace, "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": DOWNLOAD_CONTAINER,
                            "operator": "In",
                            "values": [CURL_HTTP_ERROR],
                        },
                    }
                ]
            },
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        },
    }


# -- what status says -------------------------------------------------------------------------------------


_PROGRESS = re.compile(rf"({re.escape(PROGRESS_LINE)}|{re.escape(COMPLETE_LINE)})[ \t]*(\d*)[ \t]*$", re.MULTILINE)


def parse_progress(log: str) -> tuple[int, bool] | None:
    """(bytes, complete) from the last progress line of the Job's log; None when there is none yet. A line
    may begin with the rest of curl's progress meter (its `\r` updates end with no newline)."""
    found = list(_PROGRESS.finditer(log.replace("\r", "\n")))
    if not found:
        return None
    word, count = found[-1].groups()
    return int(count or 0), word == COMPLETE_LINE


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def progress_text(phase: str, done: int, expected: int) -> str:
    """What `kubectl get` shows: `Downloading 1.2 GiB/4.0 GiB (30%)`, `Ready 4.0 GiB`, `Failed`."""
    if phase == "Ready":
        return f"Ready {_size(done or expected)}"
    if phase == "Downloading" and expected:
        return f"Downloading {_size(done)}/{_size(expected)} ({min(100, 100 * done // expected)}%)"
    return phase


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def _newest(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    ordered = sorted(pods, key=lambda p: (str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                                          str((p.get("metadata") or {}).get("name") or "")))  # fmt: skip
    return ordered[-1] if ordered else None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == DOWNLOAD_CONTAINER:
            return dict((status.get("state") or {}).get("terminated") or {})
    return {}


def _failure_detail(pods: Sequence[Mapping[str, Any]]) -> str:
    """The last failed pod's own words: exit code and the tail of its log (FallbackToLogsOnError)."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and _terminated(p)]
    pod = _newest(failed)
    if pod is None:
        return ""
    terminated = _terminated(pod)
    lines = [line for line in str(terminated.get("message") or "").splitlines() if line.strip()]
    words = "; ".join(line for line in lines if not line.startswith((PROGRESS_LINE, COMPLETE_LINE)))[-600:]
    return f"exit code {terminated.get('exitCode')}: {words}".rstrip(": ")


def _unscheduled(pods: Sequence[Mapping[str, Any]]) -> str:
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                name = (pod.get("metadata") or {}).get("name")
                return f"pod {name} cannot be scheduled: {condition.get('message') or condition.get('reason')}"
    return ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


@dataclass(frozen=True)
class CacheReading:
    """The cache's state, and whether the workload may be applied (only once the model is complete)."""

    status: ModelCacheStatus
    reason: str

    @property
    def ready(self) -> bool:
        return self.status.phase == "Ready"

    @property
    def failed(self) -> bool:
        return self.status.phase == "Failed"


def read_cache(
    objects: CacheObjects, *, source: str, expected: int, log_tail: str | None, previous: ModelCacheStatus | None
) -> CacheReading:
    """Pending (claim not bound, Job not started), Downloading (bytes from the log), Ready (the Job completed)
    or Failed (the Job failed: its reason and the download's own error, and what to do)."""
    claim_name = objects.name
    job = job_name(claim_name)
    kept = previous if previous is not None and previous.claim_name == claim_name else None
    done = kept.bytes_done if kept is not None else 0
    progress = parse_progress(log_tail) if log_tail else None
    if progress is not None:
        done = progress[0]

    def reading(phase: st.ModelCachePhase, reason: str, message: str) -> CacheReading:
        status = ModelCacheStatus(claim_name=claim_name, job=job, phase=phase, bytes_done=done,
                                  bytes_expected=expected, progress=progress_text(phase, done, expected),
                                  message=_clip(message))  # fmt: skip
        return CacheReading(status, reason)

    claim = objects.claim
    if claim is None:
        return reading("Pending", st.REASON_CACHE_PENDING, f"creating PersistentVolumeClaim {claim_name}")
    if objects.job is None:
        return reading("Pending", st.REASON_CACHE_PENDING, f"creating Job {job} to download {source}")
    phase, reason, message = _job_state(objects, claim, source=source, done=done, expected=expected)
    return reading(phase, reason, message)


def _job_state(
    objects: CacheObjects, claim: Mapping[str, Any], *, source: str, done: int, expected: int
) -> tuple[st.ModelCachePhase, str, str]:
    job = job_name(objects.name)
    claim_name = objects.name
    claim_phase = (claim.get("status") or {}).get("phase") or "Pending"
    if objects.job is None:
        raise ValueError("_job_state needs the Job")
    if _condition(objects.job, "Complete") is not None:
        return ("Ready", st.REASON_CACHED, f"{source} is in PersistentVolumeClaim {claim_name}")
    failed = _condition(objects.job, "Failed")
    if failed is not None:
        detail = _failure_detail(objects.pods) or str(failed.get("message") or "")
        why = failed.get("reason") or "Failed"
        return ("Failed", st.REASON_DOWNLOAD_FAILED, (
            f"Job {job} could not download {source} ({why}): {detail}. Check model.source and the hub token; "
            f"delete Job {job} to try the same source again"
        ))  # fmt: skip
    if claim_phase != "Bound":
        storage = ((claim.get("spec") or {}).get("storageClassName")) or "the default StorageClass"
        return ("Pending", st.REASON_CACHE_PENDING, (
            f"PersistentVolumeClaim {claim_name} is {claim_phase}: waiting for {storage} to provide a volume"
        ))  # fmt: skip
    unscheduled = _unscheduled(objects.pods)
    running = [p for p in objects.pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")]
    if not running:
        return ("Pending", st.REASON_CACHE_PENDING, unscheduled or f"Job {job} is starting its download pod")
    started = str(((objects.job.get("status") or {}).get("startTime")) or "")
    retries = int((objects.job.get("status") or {}).get("failed") or 0)
    tries = f" (try {retries + 1} of {JOB_BACKOFF_LIMIT + 1})" if retries else ""
    since = f" since {started}" if started else ""
    return (
        "Downloading",
        st.REASON_DOWNLOADING,
        f"Job {job} is downloading {source}{since}{tries}: {progress_text('Downloading', done, expected)}",
    )


def running_pod(objects: CacheObjects) -> str | None:
    """The Job pod whose log tells the progress: the newest running one."""
    pod = _newest([p for p in objects.pods if (p.get("status") or {}).get("phase") == "Running"])
    return str((pod.get("metadata") or {}).get("name")) if pod is not None else None


def finished_pod(objects: CacheObjects) -> str | None:
    """The Job pod that completed the download (its log has the complete line)."""
    pod = _newest([p for p in objects.pods if (p.get("status") or {}).get("phase") == "Succeeded"])
    return str((pod.get("metadata") or {}).get("name")) if pod is not None else None


def slim_cache_object(body: Mapping[str, Any]) -> Manifest:
    """What the cache index keeps of a claim, Job or Job pod."""
    meta = body.get("metadata") or {}
    kept_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                      "ownerReferences", "labels", "deletionTimestamp") if k in meta}  # fmt: skip
    status = dict(body.get("status") or {})
    spec = body.get("spec") or {}
    kept_spec = {"storageClassName": spec["storageClassName"]} if "storageClassName" in spec else {}
    return {"kind": body.get("kind"), "metadata": kept_meta, "spec": kept_spec, "status": status}
