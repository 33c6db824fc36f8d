"""Init containers and emptyDir volumes on the process-backed pool, against a real control plane.

The module's plane has the process-backed pool and nothing else (no operator, no model): plain
pods with `/bin/sh` containers show what a user of the pool would see. An init container writes
into an emptyDir volume that the main container then reads; a failing init container crash-loops
while the pod stays Pending; with `restartPolicy: Never` it fails the pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from tests.integration.cluster_setup import poll_until, skip_without_binaries

pytestmark = [pytest.mark.integration]

MOUNT = "/work-vol"
POD_SECONDS = 60


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A plane of the module's own whose process-backed pool runs plain shell pods (no path map)."""
    skip_without_binaries()
    config = ProcessBackedConfig(path_map={}, restart_backoff_initial_seconds=0.5, restart_backoff_max_seconds=2.0)
    with ControlPlane(tmp_path_factory.mktemp("init-plane"), process_backed=config) as started:
        yield started


def shell_pod(name: str, init_script: str, main_script: str, restart_policy: str = "Always") -> dict[str, Any]:
    def container(container_name: str, script: str) -> dict[str, Any]:
        return {
            "name": container_name,
            "image": "busybox",
            "command": ["/bin/sh", "-c", script],
            "volumeMounts": [{"name": "work", "mountPath": MOUNT}],
        }

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": {PROCESS_BACKED_LABEL: "true"},
            "tolerations": [{"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [container("prepare", init_script)],
            "containers": [container("main", main_script)],
        },
    }


def read_pod(api_client: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        pod: dict[str, Any] = api_client.sanitize_for_serialization(
            kube_client.CoreV1Api(api_client).read_namespaced_pod(name, namespace)
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return pod


def wait_pod(api_client: Any, namespace: str, name: str, check: Any, what: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = read_pod(api_client, namespace, name)
        return pod if pod is not None and check(pod) else None

    return poll_until(probe, POD_SECONDS, f"pod {name}: {what}", interval_seconds=0.1)


def condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in pod["status"].get("conditions") or [] if c["type"] == type_)


def init_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod["status"].get("initContainerStatuses") or [{}]
    status: dict[str, Any] = statuses[0]
    return status


def delete_and_wait_gone(api_client: Any, namespace: str, name: str) -> None:
    kube_client.CoreV1Api(api_client).delete_namespaced_pod(name, namespace)
    poll_until(
        lambda: True if read_pod(api_client, namespace, name) is None else None,
        POD_SECONDS,
        f"pod {name} to be deleted",
        interval_seconds=0.1,
    )


def test_the_main_container_reads_what_the_init_container_wrote(
    plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    body = shell_pod("handoff", f"echo hi from init > {MOUNT}/x", f"cat {MOUNT}/x; exec sleep 1000")
    kube_client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)
    pod = wait_pod(
        api_client,
        namespace,
        "handoff",
        lambda p: "running" in (p["status"].get("containerStatuses") or [{}])[0].get("state", {}),
        "main container running",
    )
    assert pod["status"]["phase"] == "Running"
    init = init_status(pod)
    assert init["state"]["terminated"]["exitCode"] == 0
    assert init["state"]["terminated"]["reason"] == "Completed"
    assert init["ready"] is True
    assert condition(pod, "Initialized")["status"] == "True"
    assert plane.process_kubelet is not None
    pod_dir = plane.process_kubelet.pod_log_dir(namespace, "handoff")
    assert pod_dir is not None
    log = pod_dir / "main.0.log"
    poll_until(lambda: True if log.exists() and log.read_text() else None, POD_SECONDS, "main's output")
    assert log.read_text() == "hi from init\n"
    assert (pod_dir / "volumes" / "work" / "x").read_text() == "hi from init\n"
    delete_and_wait_gone(api_client, namespace, "handoff")
    poll_until(lambda: True if not (pod_dir / "volumes").exists() else None, POD_SECONDS, "the pod's volumes to go")


def test_a_failing_init_container_crash_loops_and_the_pod_stays_pending(api_client: Any, namespace: str) -> None:
    body = shell_pod("init-fails", "echo the download failed >&2; exit 3", "exec sleep 1000")
    kube_client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)
    pod = wait_pod(
        api_client,
        namespace,
        "init-fails",
        lambda p: (
            init_status(p).get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"
            and init_status(p).get("restartCount", 0) >= 1
        ),
        "init container in CrashLoopBackOff after a retry",
    )
    init = init_status(pod)
    assert init["lastState"]["terminated"]["exitCode"] == 3
    assert init["lastState"]["terminated"]["message"] == "the download failed"
    assert pod["status"]["phase"] == "Pending"
    initialized = condition(pod, "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("False", "ContainersNotInitialized")
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    delete_and_wait_gone(api_client, namespace, "init-fails")


def test_a_pod_that_never_restarts_fails_with_its_init_container(api_client: Any, namespace: str) -> None:
    body = shell_pod("init-never", "exit 1", "exec sleep 1000", restart_policy="Never")
    kube_client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)
    pod = wait_pod(api_client, namespace, "init-never", lambda p: p["status"].get("phase") == "Failed", "phase Failed")
    assert init_status(pod)["state"]["terminated"]["exitCode"] == 1
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    delete_and_wait_gone(api_client, namespace, "init-never")


def test_a_deletion_during_init_stops_the_init_container(plane: ControlPlane, api_client: Any, namespace: str) -> None:
    # "$$" is Kubernetes' escape of "$": the shell gets "echo $$", its own pid.
    body = shell_pod("init-slow", f"echo $$$$ > {MOUNT}/pid; exec sleep 1000", "exec sleep 1000")
    kube_client.CoreV1Api(api_client).create_namespaced_pod(namespace, body)
    wait_pod(
        api_client,
        namespace,
        "init-slow",
        lambda p: "running" in init_status(p).get("state", {}),
        "init container running",
    )
    assert plane.process_kubelet is not None
    pod_dir = plane.process_kubelet.pod_log_dir(namespace, "init-slow")
    assert pod_dir is not None
    pid_file = pod_dir / "volumes" / "work" / "pid"
    poll_until(lambda: True if pid_file.exists() and pid_file.read_text() else None, POD_SECONDS, "the init's pid")
    pid = int(pid_file.read_text())
    delete_and_wait_gone(api_client, namespace, "init-slow")
    assert not Path(f"/proc/{pid}").exists(), "the init container's process outlived its pod"
