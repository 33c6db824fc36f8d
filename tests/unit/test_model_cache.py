"""The shared model cache's pure parts: its name, its claim and Job, and what status says at each stage.

The Job and claim run for real in tests/integration/test_model_cache.py; here every state the watch
caches can hold is read, including the ones a live run passes too quickly to see (a claim not yet bound,
a retried pod, a Job failed by its pod failure policy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import ModelCacheStatus
from llama_operator.cache_names import CACHE_LABEL, cache_claim_name, cache_of, job_name
from llama_operator.engines.pod import (
    COMPLETE_LINE,
    DOWNLOAD_CONTAINER,
    PROGRESS_LINE,
    RESTRICTED_EXCEPTION_ANNOTATION,
    RUN_AS_USER,
)
from llama_operator.model_cache import (
    CURL_HTTP_ERROR,
    MIN_CLAIM_MIB,
    CacheObjects,
    claim_size,
    expected_bytes,
    finished_pod,
    parse_progress,
    progress_text,
    read_cache,
    render_claim,
    render_job,
    running_pod,
    users,
)
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import MIB
from tests.unit.render_cases import INVENTORY, spec_from
from tests.unit.test_pod_security import pod_security_violations

SOURCE = "hf://bartowski/Llama-3.2-3B-Instruct-GGUF/Llama-3.2-3B-Instruct-Q4_K_M.gguf"
GGUF_BASE: dict[str, Any] = {
    "model": {"catalogName": "llama-3.2-3b", "source": SOURCE, "format": "gguf", "quantization": "q4_k_m",
              "contextLength": 8192, "cache": {}},
    "engine": {"type": "llamacpp"},
    "placement": {"cpuOnly": True},
}  # fmt: skip
Manifest = dict[str, Any]


def cached(**model: Any) -> tuple[LlamaDeploymentSpec, SizingDecision]:
    spec = spec_from(GGUF_BASE, model=model) if model else spec_from(GGUF_BASE)
    return spec, plan(spec, "chat", INVENTORY)


# -- names ------------------------------------------------------------------------------------------------


def test_one_claim_per_source_and_format_readable_and_short_enough_for_the_job_label() -> None:
    name = cache_claim_name(SOURCE, "gguf")
    assert name == cache_claim_name(SOURCE, "gguf")
    assert name.startswith("model-llama-3-2-3b-instruct-q4-k")
    assert name != cache_claim_name(SOURCE, "safetensors")
    assert name != cache_claim_name(SOURCE.replace("Q4_K_M", "Q8_0"), "gguf")
    longest = cache_claim_name("hf://org/" + "x" * 200, "gguf")
    assert len(job_name(longest)) <= 63
    assert cache_claim_name("hf://org/___", "gguf").startswith("model-")  # nothing left of the slug


def test_two_specs_of_one_source_name_the_same_cache_and_no_cache_names_none() -> None:
    spec, _ = cached()
    other, _ = cached(contextLength=4096)
    assert cache_of(spec) == cache_of(other) == cache_claim_name(SOURCE, "gguf")
    plain = spec_from({**GGUF_BASE, "model": {k: v for k, v in GGUF_BASE["model"].items() if k != "cache"}})
    assert cache_of(plain) is None


# -- the claim --------------------------------------------------------------------------------------------


def test_the_claim_is_sized_from_the_plan_with_headroom_and_owned_by_its_user_not_controlled() -> None:
    spec, decision = cached()
    claim = render_claim("team-a", spec, decision, user_name="chat", user_uid="uid-1")
    assert claim["metadata"]["name"] == cache_of(spec)
    assert claim["metadata"]["labels"][CACHE_LABEL] == cache_of(spec)
    assert claim["metadata"]["ownerReferences"] == [
        {"apiVersion": "llamaops.io/v1alpha1", "kind": "LlamaDeployment", "name": "chat", "uid": "uid-1"}
    ]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    weights = expected_bytes(decision)
    assert weights > 1 << 30  # a 3B model in Q4_K_M is about 2 GB
    size_mib = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Mi"))
    assert weights * 1.2 <= size_mib * MIB < weights * 1.2 + MIB


def test_the_claim_takes_the_size_storage_class_and_access_mode_the_spec_names() -> None:
    spec, decision = cached(cache={"size": "50Gi", "storageClassName": "fast-nfs", "accessMode": "ReadWriteOnce"})
    claim = render_claim("team-a", spec, decision, user_name="chat", user_uid="uid-1")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast-nfs"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_a_tiny_model_still_gets_the_minimum_claim() -> None:
    spec, decision = cached()
    tiny = dataclasses.replace(decision, chosen=None)
    assert expected_bytes(tiny) == 0
    assert claim_size(spec, tiny) == f"{MIN_CLAIM_MIB}Mi"


def test_users_are_the_llamadeployment_owners_only() -> None:
    claim = {"metadata": {"ownerReferences": [
        {"kind": "LlamaDeployment", "name": "a", "uid": "1"}, {"kind": "ConfigMap", "name": "x", "uid": "2"},
        {"kind": "LlamaDeployment", "name": "b", "uid": "3"},
    ]}}  # fmt: skip
    assert [u["name"] for u in users(claim)] == ["a", "b"]
    assert users({}) == []


# -- the Job ----------------------------------------------------------------------------------------------


def job_for(spec: LlamaDeploymentSpec, decision: SizingDecision) -> Manifest:
    return render_job("chat", "team-a", spec, decision, options=RenderOptions(), claim_uid="claim-uid")


def test_the_job_is_controlled_by_its_claim_and_fails_at_once_on_an_http_error() -> None:
    spec, decision = cached()
    job = job_for(spec, decision)
    claim = cache_of(spec)
    assert claim is not None
    assert job["metadata"]["name"] == job_name(claim)
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": claim, "uid": "claim-uid", "controller": True}
    ]
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": DOWNLOAD_CONTAINER, "operator": "In", "values": [CURL_HTTP_ERROR]}
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]  # writable here
    (container,) = pod["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    script = container["command"][-1]
    assert PROGRESS_LINE in script
    assert COMPLETE_LINE in script
    assert "curl -fL" in script
    assert "/resolve/main/Llama-3.2-3B-Instruct-Q4_K_M.gguf" in script


def test_the_job_pod_meets_restricted_and_goes_where_the_serving_pods_go() -> None:
    spec, decision = cached()
    job = job_for(spec, decision)
    template = job["spec"]["template"]
    assert pod_security_violations(template, "restricted") == []
    assert template["spec"]["automountServiceAccountToken"] is False
    serving = next(c for c in render("chat", "team-a", spec, decision, options=RenderOptions(), owner=Owner("chat", "u"))
               if c["kind"] == "Deployment")["spec"]["template"]["spec"]  # fmt: skip
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert template["spec"].get(key) == serving.get(key), key


def test_serving_pods_mount_the_cache_read_only_and_do_not_download() -> None:
    spec, decision = cached()
    (deployment,) = [c for c in render("chat", "team-a", spec, decision, options=RenderOptions(),
                                       owner=Owner("chat", "u")) if c["kind"] == "Deployment"]  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    assert all(c["name"] != DOWNLOAD_CONTAINER for c in pod.get("initContainers") or [])
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert models == {"name": "models", "persistentVolumeClaim": {"claimName": cache_of(spec), "readOnly": True}}


# -- progress lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("", None),
        ("curl: (6) Could not resolve host\n", None),
        (f"{PROGRESS_LINE} 10\n{PROGRESS_LINE} 2048\n", (2048, False)),
        (f"{PROGRESS_LINE} 10\n{COMPLETE_LINE} 4096\n", (4096, True)),
        # curl's meter rewrites one line with carriage returns between our lines
        (f"{PROGRESS_LINE} 10\r  5 4096  5  200    0 \r{PROGRESS_LINE} 300\r 12 4096", (300, False)),
        # as a real Job's log has it: our line appended to a meter update that ended with no newline
        (
            f"\r  9 4853k    9  436k    0     0   166k      0  0:00:29  0:00:02  0:00:27  166k\r 12 4853k   12  598k"
            f"    0     0   164k      0  0:00:29  0:00:03  0:00:26  164k{PROGRESS_LINE} 659456\n\r 15 4853k",
            (659456, False),
        ),
        (f"{PROGRESS_LINE} 512\n{PROGRESS_LINE} not-a-number\n", (512, False)),
        (f"{PROGRESS_LINE}\n", (0, False)),
    ],
)
def test_the_last_progress_line_counts(log: str, expected: tuple[int, bool] | None) -> None:
    assert parse_progress(log) == expected


def test_progress_text_as_kubectl_get_shows_it() -> None:
    assert progress_text("Downloading", 3 << 29, 4 << 30) == "Downloading 1.5 GiB/4.0 GiB (37%)"
    assert progress_text("Downloading", 5 << 30, 4 << 30).endswith("(100%)")  # the plan's estimate was low
    assert progress_text("Ready", 2 << 20, 4 << 30) == "Ready 2.0 MiB"
    assert progress_text("Ready", 0, 4 << 10) == "Ready 4.0 KiB"
    assert progress_text("Pending", 0, 100) == "Pending"
    assert progress_text("Downloading", 10, 0) == "Downloading"


# -- what status says at each stage -----------------------------------------------------------------------

CLAIM = cache_claim_name(SOURCE, "gguf")


def claim_body(phase: str = "Bound") -> Manifest:
    return {"metadata": {"name": CLAIM, "uid": "c"}, "spec": {}, "status": {"phase": phase}}


def job_body(*conditions: tuple[str, str, str], failed: int = 0) -> Manifest:
    return {
        "metadata": {"name": job_name(CLAIM)},
        "status": {"startTime": "2026-12-07T10:00:00Z", "failed": failed,
                   "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions]},
    }  # fmt: skip


def pod_body(name: str, phase: str, *, exit_code: int | None = None, message: str = "", created: str = "") -> Manifest:
    state = {"terminated": {"exitCode": exit_code, "message": message}} if exit_code is not None else {"running": {}}
    return {
        "metadata": {"name": name, "creationTimestamp": created or "2026-12-07T10:00:01Z"},
        "status": {"phase": phase, "containerStatuses": [{"name": DOWNLOAD_CONTAINER, "state": state}]},
    }


def read(objects: CacheObjects, log: str | None = None, previous: ModelCacheStatus | None = None) -> ModelCacheStatus:
    return read_cache(objects, source=SOURCE, expected=4096, log_tail=log, previous=previous).status


def test_pending_until_the_claim_exists_is_bound_and_the_job_has_a_pod() -> None:
    assert read(CacheObjects(CLAIM)).message == f"creating PersistentVolumeClaim {CLAIM}"
    assert read(CacheObjects(CLAIM, claim=claim_body())).message.startswith(f"creating Job {job_name(CLAIM)}")
    unbound = read(CacheObjects(CLAIM, claim=claim_body("Pending"), job=job_body()))
    assert unbound.phase == "Pending"
    assert "waiting for the default StorageClass to provide a volume" in unbound.message
    starting = read(CacheObjects(CLAIM, claim=claim_body(), job=job_body(), pods=[pod_body("p", "Pending")]))
    assert (starting.phase, starting.message) == ("Pending", f"Job {job_name(CLAIM)} is starting its download pod")


def test_an_unschedulable_download_pod_says_why() -> None:
    pod = pod_body("p", "Pending")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}]
    status = read(CacheObjects(CLAIM, claim=claim_body(), job=job_body(), pods=[pod]))
    assert status.message == "pod p cannot be scheduled: 0/3 nodes are available"


def test_downloading_counts_the_bytes_of_the_last_progress_line_and_keeps_them_between_reads() -> None:
    objects = CacheObjects(CLAIM, claim=claim_body(), job=job_body(), pods=[pod_body("p", "Running")])
    assert running_pod(objects) == "p"
    status = read(objects, f"{PROGRESS_LINE} 1024\n")
    assert (status.phase, status.bytes_done, status.bytes_expected) == ("Downloading", 1024, 4096)
    assert status.progress == "Downloading 1.0 KiB/4.0 KiB (25%)"
    assert "since 2026-12-07T10:00:00Z" in status.message
    again = read(objects, None, previous=status)  # the log could not be read this time: the bytes stay
    assert again.bytes_done == 1024
    other = status.model_copy(update={"claim_name": "model-other-0123456789"})
    assert read(objects, None, previous=other).bytes_done == 0  # another cache's bytes are not ours


def test_a_retried_download_says_which_try_it_is() -> None:
    objects = CacheObjects(CLAIM, claim=claim_body(), job=job_body(failed=1),
                           pods=[pod_body("p1", "Failed", exit_code=56), pod_body("p2", "Running")])  # fmt: skip
    assert "(try 2 of 4)" in read(objects).message


def test_ready_when_the_job_completed_with_the_complete_lines_bytes() -> None:
    pod = pod_body("p", "Succeeded", exit_code=0)
    objects = CacheObjects(CLAIM, claim=claim_body(), job=job_body(("Complete", "", "")), pods=[pod])
    assert running_pod(objects) is None
    assert finished_pod(objects) == "p"
    status = read(objects, f"{PROGRESS_LINE} 2000\n{COMPLETE_LINE} 4100\n")
    assert (status.phase, status.bytes_done, status.progress) == ("Ready", 4100, "Ready 4.0 KiB")
    assert read_cache(objects, source=SOURCE, expected=4096, log_tail=None, previous=None).ready


def test_a_failed_job_gives_the_downloads_own_error_and_what_to_do() -> None:
    log = f"{PROGRESS_LINE} 0\ncurl: (22) The requested URL returned error: 404\n"
    pods = [pod_body("p", "Failed", exit_code=22, message=log)]
    job = job_body(("Failed", "PodFailurePolicy", "Container fetch-model for pod p failed with exit code 22"))
    reading = read_cache(CacheObjects(CLAIM, claim=claim_body(), job=job, pods=pods), source=SOURCE, expected=4096,
                         log_tail=None, previous=None)  # fmt: skip
    assert reading.failed
    assert not reading.ready
    message = reading.status.message
    assert f"Job {job_name(CLAIM)} could not download {SOURCE} (PodFailurePolicy)" in message
    assert "exit code 22: curl: (22) The requested URL returned error: 404" in message
    assert PROGRESS_LINE not in message
    assert message.endswith(f"delete Job {job_name(CLAIM)} to try the same source again")


def test_a_failed_job_without_a_pod_left_gives_the_jobs_own_message_and_long_errors_are_clipped() -> None:
    job = job_body(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    status = read(CacheObjects(CLAIM, claim=claim_body(), job=job))
    assert "(BackoffLimitExceeded): Job has reached the specified backoff limit" in status.message
    noisy = [pod_body("p", "Failed", exit_code=1, message="e" * 5000)]
    assert len(read(CacheObjects(CLAIM, claim=claim_body(), job=job, pods=noisy)).message) <= 1024


def test_revisions_change_with_any_cache_object() -> None:
    pod = pod_body("p", "Running")
    pod["metadata"]["resourceVersion"] = "7"
    before = CacheObjects(CLAIM, claim=claim_body(), job=job_body(), pods=[pod])
    pod2 = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "8"}}
    after = CacheObjects(CLAIM, claim=claim_body(), job=job_body(), pods=[pod2])
    assert before.revisions() != after.revisions()


def test_a_checkpoint_fetched_with_the_engine_image_runs_as_that_engine_runs() -> None:
    """TGI's image needs root (its documented exception): its Job says so; a curl download stays non-root."""
    spec = spec_from({"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r", "cache": {}},
                      "engine": {"type": "tgi"}})  # fmt: skip
    template = job_for(spec, plan(spec, "chat", INVENTORY))["spec"]["template"]
    assert template["spec"]["containers"][0]["image"].startswith("ghcr.io/huggingface/text-generation-inference")
    assert template["spec"]["securityContext"]["runAsNonRoot"] is False
    assert RESTRICTED_EXCEPTION_ANNOTATION in template["metadata"]["annotations"]
    gguf, decision = cached()
    curl = job_for(gguf, decision)["spec"]["template"]
    assert curl["spec"]["securityContext"]["runAsUser"] == RUN_AS_USER
    assert curl["metadata"]["annotations"] == {}
