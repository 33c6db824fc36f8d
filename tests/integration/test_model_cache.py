"""The shared model cache (`model.cache`), for real: the controller-manager provisions the claim on a host
folder, the download Job runs curl against the local hub on the process-backed pool, and real llama-server
pods mount the claim read-only.

Each test publishes the tiny model under a repository of its own, so the hub's download counts and the
cache names (one per source) are the test's alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator.cache_names import CACHE_LABEL, cache_claim_name, job_name
from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until, wait_until_collected_with_llamadeployments
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    get_llamadeployment,
    tiny_llama_deployment,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp")]

CHAT_TEMPLATE_ARGS = ["--chat-template", "vicuna"]
READY_SECONDS = 180
SCALED_REPLICAS = 4
# Slow enough that the Job prints several progress lines (every 2 s) and the operator reads them.
THROTTLED_DOWNLOAD_SECONDS = 30


@pytest.fixture(scope="module", autouse=True)
def collected(api_client: Any, crd: None) -> None:
    """Deleting a user must let the garbage collector delete the cache: wait until it watches LlamaDeployments."""
    wait_until_collected_with_llamadeployments(api_client)


def publish_model(assets: ServingAssets, repo: str) -> str:
    """The tiny GGUF model under `repo` on the hub: its source, for the spec."""
    assets.hub.publish(repo, assets.models.model.path)
    return f"hf://{repo}/{assets.models.model.path.name}"


def model_key(source: str) -> str:
    return source.removeprefix("hf://")


def cached_deployment(name: str, assets: ServingAssets, source: str, *, cache: bool) -> dict[str, Any]:
    manifest = tiny_llama_deployment(name, assets, adapters=False, extra_args=CHAT_TEMPLATE_ARGS)
    manifest["spec"]["model"]["source"] = source
    if cache:
        manifest["spec"]["model"]["cache"] = {}
    return manifest


def create(api: Any, namespace: str, manifest: dict[str, Any]) -> None:
    kube_client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)


def delete(api: Any, namespace: str, name: str) -> None:
    kube_client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else {}


def wait_for(
    api: Any, namespace: str, name: str, operator: OperatorProcess, *, check: Callable[[dict[str, Any]], bool],
    what: str, timeout: float = READY_SECONDS,
) -> dict[str, Any]:  # fmt: skip
    def probe() -> dict[str, Any] | None:
        obj = get_llamadeployment(api, namespace, name)
        return obj if check(obj) else None

    try:
        return poll_until(probe, timeout, f"{name}: {what}", interval_seconds=0.2)
    except pytest.fail.Exception:
        print(operator.log_tail())
        print(yaml.safe_dump(get_llamadeployment(api, namespace, name).get("status")))
        raise


def ready_with(replicas: int) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        return (
            ready.get("status") == "True"
            and ready.get("observedGeneration") == obj["metadata"]["generation"]
            and status.get("readyReplicas") == replicas
        )

    return check


def serving_pods(api: Any, namespace: str, name: str) -> list[Any]:
    pods = kube_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"llamaops.io/deployment={name}")
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def scale(api: Any, namespace: str, name: str, replicas: int) -> None:
    kube_client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"replicas": replicas}}
    )


def scale_restart_and_count(
    api: Any, namespace: str, name: str, operator: OperatorProcess, *, assets: ServingAssets, source: str
) -> int:
    """Ready at 1 replica, then at 4, then again after one pod is deleted: the hub's downloads of the model."""
    wait_for(api, namespace, name, operator, check=ready_with(1), what="Ready with 1 replica")
    scale(api, namespace, name, SCALED_REPLICAS)
    wait_for(
        api, namespace, name, operator, check=ready_with(SCALED_REPLICAS), what=f"Ready with {SCALED_REPLICAS} replicas"
    )
    victim = serving_pods(api, namespace, name)[0]
    kube_client.CoreV1Api(api).delete_namespaced_pod(victim.metadata.name, namespace, grace_period_seconds=0)

    def replaced() -> bool | None:
        pods = serving_pods(api, namespace, name)
        names = {p.metadata.name for p in pods}
        ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        return (victim.metadata.name not in names and len(ready) == SCALED_REPLICAS) or None

    poll_until(replaced, READY_SECONDS, f"{name}: the deleted pod replaced and Ready", interval_seconds=0.2)
    wait_for(api, namespace, name, operator, check=ready_with(SCALED_REPLICAS), what="Ready again after the restart")
    return assets.hub.downloads().get(model_key(source), 0)


def claims(api: Any, namespace: str) -> list[Any]:
    return list(kube_client.CoreV1Api(api).list_namespaced_persistent_volume_claim(namespace).items)


def wait_gone(what: str, read: Callable[[], object]) -> None:
    def gone() -> bool | None:
        try:
            read()
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return None

    try:
        poll_until(gone, 120, f"{what} deleted", interval_seconds=0.5)
    except pytest.fail.Exception:
        print(read())  # what holds it: its finalizers, owners, status
        raise


def test_the_cache_downloads_once_for_a_scale_up_and_a_restart_and_pods_download_each_start_without_it(
    api_client: Any, assets: ServingAssets, operator: OperatorProcess, plane: ControlPlane
) -> None:
    namespace = create_namespace(api_client)
    cached_source = publish_model(assets, "llama-operator/tiny-gguf-cached")
    create(api_client, namespace, cached_deployment("cached", assets, cached_source, cache=True))
    cached_downloads = scale_restart_and_count(
        api_client, namespace, "cached", operator, assets=assets, source=cached_source
    )

    obj = get_llamadeployment(api_client, namespace, "cached")
    cache = obj["status"]["modelCache"]
    claim = cache_claim_name(cached_source, "gguf")
    assert cache["claimName"] == claim
    assert cache["phase"] == "Ready"
    assert cache["bytesDone"] == assets.models.model.path.stat().st_size
    assert condition(obj, "ModelCached")["status"] == "True"
    # No pod downloads: none has the fetch-model init container; all mount the claim read-only.
    for pod in serving_pods(api_client, namespace, "cached"):
        assert not pod.spec.init_containers or all(c.name != "fetch-model" for c in pod.spec.init_containers)
        (volume,) = [v for v in pod.spec.volumes if v.persistent_volume_claim is not None]
        assert volume.persistent_volume_claim.claim_name == claim
        assert volume.persistent_volume_claim.read_only is True
    delete(api_client, namespace, "cached")
    wait_gone(f"PersistentVolumeClaim/{claim}",
              lambda: kube_client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(claim, namespace))  # fmt: skip

    plain_source = publish_model(assets, "llama-operator/tiny-gguf-per-pod")
    create(api_client, namespace, cached_deployment("per-pod", assets, plain_source, cache=False))
    per_pod_downloads = scale_restart_and_count(
        api_client, namespace, "per-pod", operator, assets=assets, source=plain_source
    )
    delete(api_client, namespace, "per-pod")

    assert cached_downloads == 1
    assert per_pod_downloads == 1 + (SCALED_REPLICAS - 1) + 1  # the first pod, three more, the restarted one
    assert claims(api_client, namespace) == []


def test_two_deployments_of_one_source_share_one_claim_and_deleting_both_removes_it(
    api_client: Any, assets: ServingAssets, operator: OperatorProcess
) -> None:
    namespace = create_namespace(api_client)
    source = publish_model(assets, "llama-operator/tiny-gguf-shared")
    create(api_client, namespace, cached_deployment("first", assets, source, cache=True))
    create(api_client, namespace, cached_deployment("second", assets, source, cache=True))
    for name in ("first", "second"):
        wait_for(api_client, namespace, name, operator, check=ready_with(1), what="Ready with 1 replica")

    (claim,) = claims(api_client, namespace)
    assert claim.metadata.name == cache_claim_name(source, "gguf")
    assert claim.metadata.labels[CACHE_LABEL] == claim.metadata.name
    owners = {(r.kind, r.name, bool(r.controller)) for r in claim.metadata.owner_references}
    assert owners == {("LlamaDeployment", "first", False), ("LlamaDeployment", "second", False)}
    assert assets.hub.downloads().get(model_key(source)) == 1
    volume_name = claim.spec.volume_name
    assert volume_name

    core = kube_client.CoreV1Api(api_client)
    delete(api_client, namespace, "first")
    # The second user still serves from it: the claim stays, with one owner left.
    wait_gone("LlamaDeployment/first", lambda: get_llamadeployment(api_client, namespace, "first"))
    time.sleep(3)  # a pass of the second object, and the garbage collector, have had time to act
    (kept,) = claims(api_client, namespace)
    assert [r.name for r in kept.metadata.owner_references] == ["second"]
    wait_for(api_client, namespace, "second", operator, check=ready_with(1), what="still Ready")

    delete(api_client, namespace, "second")
    wait_gone(f"PersistentVolumeClaim/{claim.metadata.name}",
              lambda: core.read_namespaced_persistent_volume_claim(claim.metadata.name, namespace))  # fmt: skip
    wait_gone(f"PersistentVolume/{volume_name}", lambda: core.read_persistent_volume(volume_name))
    wait_gone(f"Job/{job_name(claim.metadata.name)}",
              lambda: kube_client.BatchV1Api(api_client).read_namespaced_job(job_name(claim.metadata.name), namespace))  # fmt: skip


def test_a_source_that_answers_404_fails_the_cache_with_the_404_and_rolls_nothing(
    api_client: Any, assets: ServingAssets, operator: OperatorProcess
) -> None:
    namespace = create_namespace(api_client)
    publish_model(assets, "llama-operator/tiny-gguf-missing-file")
    source = "hf://llama-operator/tiny-gguf-missing-file/absent-Q4_K_M.gguf"
    create(api_client, namespace, cached_deployment("missing", assets, source, cache=True))

    def failed(obj: dict[str, Any]) -> bool:
        return condition(obj, "ModelCached").get("reason") == "DownloadFailed"

    obj = wait_for(api_client, namespace, "missing", operator, check=failed, what="ModelCached=False DownloadFailed")
    ready = condition(obj, "Ready")
    assert ready["status"] == "False"
    assert "404" in ready["message"], ready
    assert f"delete Job {job_name(cache_claim_name(source, 'gguf'))}" in ready["message"], ready
    cache = obj["status"]["modelCache"]
    assert cache["phase"] == "Failed"
    assert "404" in cache["message"]
    assert obj["status"]["phase"] == "Failed"
    # Nothing else was rolled: no Deployment, no serving pod, and no further download Job pods.
    apps = kube_client.AppsV1Api(api_client)
    assert apps.list_namespaced_deployment(namespace).items == []
    assert serving_pods(api_client, namespace, "missing") == []
    job = kube_client.BatchV1Api(api_client).read_namespaced_job(job_name(cache["claimName"]), namespace)
    assert any(c.type == "Failed" and c.status == "True" for c in job.status.conditions or [])
    assert (job.status.failed or 0) == 1  # exit 22 fails the Job at once: curl's 404 is not retried
    delete(api_client, namespace, "missing")


def test_status_and_the_printer_column_show_a_download_in_progress(
    api_client: Any, assets: ServingAssets, operator: OperatorProcess
) -> None:
    namespace = create_namespace(api_client)
    source = publish_model(assets, "llama-operator/tiny-gguf-slow")
    size = assets.models.model.path.stat().st_size
    assets.hub.throttle(size / THROTTLED_DOWNLOAD_SECONDS)
    try:
        create(api_client, namespace, cached_deployment("slow", assets, source, cache=True))

        def under_way(obj: dict[str, Any]) -> bool:
            cache = (obj.get("status") or {}).get("modelCache") or {}
            return cache.get("phase") == "Downloading" and 0 < cache.get("bytesDone", 0) < size

        obj = wait_for(
            api_client, namespace, "slow", operator, check=under_way, what="Downloading with bytes done", timeout=120
        )
        seen = obj["status"]["modelCache"]
        assert seen["bytesExpected"] > 0
        assert "%" in seen["progress"], seen
        assert condition(obj, "ModelCached") == {**condition(obj, "ModelCached"), "status": "False",
                                                 "reason": "Downloading"}  # fmt: skip
        assert obj["status"]["phase"] == "Pending"
        # What `kubectl get llamad` prints: the server's table view, columns from the CRD.
        method, url, headers, _, _ = api_client.param_serialize(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/slow",
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            auth_settings=["BearerToken"],
        )
        response = json.loads(api_client.call_api(method, url, header_params=headers).read())
        columns = [c["name"] for c in response["columnDefinitions"]]
        (row,) = response["rows"]
        shown = row["cells"][columns.index("Cache")]
        assert "%" in shown, (columns, row["cells"])

        # Later progress lines move bytesDone forward.
        def moved(later: dict[str, Any]) -> bool:
            return bool(((later.get("status") or {}).get("modelCache") or {}).get("bytesDone", 0) > seen["bytesDone"])

        wait_for(api_client, namespace, "slow", operator, check=moved, what="bytesDone moving forward", timeout=60)
    finally:
        assets.hub.throttle(None)
    obj = wait_for(
        api_client, namespace, "slow", operator, check=ready_with(1), what="Ready once the download finished"
    )
    assert obj["status"]["modelCache"]["bytesDone"] == size
    assert obj["status"]["modelCache"]["phase"] == "Ready"
    delete(api_client, namespace, "slow")
