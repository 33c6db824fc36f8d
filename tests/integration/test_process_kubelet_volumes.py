"""Claims, Jobs and pod logs on the process-backed pool, against a real control plane.

The module's plane has the process-backed pool and nothing else: what the operator's shared model
cache needs of the dev cluster, done by the real components. A claim of the default StorageClass
is provisioned and bound by the controller-manager's hostPath provisioner; a download Job writes
into it and the Job controller marks it Complete; a second pod mounts the claim read-only and
sees the file; ``read_namespaced_pod_log`` goes through the apiserver to the process kubelet's
log server; a script that exits 22 fails its Job by the podFailurePolicy; deleting the claim
deletes the PV and its folder.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.storage import DEFAULT_STORAGE_CLASS, HOSTPATH_PV_ROOT
from tests.integration.cluster_setup import poll_until, skip_without_binaries
from tests.integration.test_process_kubelet_init import delete_and_wait_gone, read_pod, wait_pod

pytestmark = [pytest.mark.integration]

MOUNT = "/models"
CLAIM_SECONDS = 30
JOB_SECONDS = 60
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
PROCESS_POOL = {
    "nodeSelector": {PROCESS_BACKED_LABEL: "true"},
    "tolerations": [{"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A plane of the module's own whose process-backed pool runs plain shell pods (no path map)."""
    skip_without_binaries()
    config = ProcessBackedConfig(path_map={}, restart_backoff_initial_seconds=0.5, restart_backoff_max_seconds=2.0)
    with ControlPlane(tmp_path_factory.mktemp("volumes-plane"), process_backed=config) as started:
        yield started


# -- objects ----------------------------------------------------------------------------------


def claim(name: str) -> dict[str, Any]:
    """A claim as the operator makes it: ReadWriteMany, no storageClassName (the default class)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "2Gi"}}},
    }


def claim_volume(claim_name: str, *, read_only: bool) -> dict[str, Any]:
    source: dict[str, Any] = {"claimName": claim_name}
    if read_only:
        source["readOnly"] = True
    return {"name": "models", "persistentVolumeClaim": source}


def download_job(name: str, script: str, claim_name: str | None = None) -> dict[str, Any]:
    """A download Job as the operator renders it: restartPolicy Never, restricted, FailJob on exit 22."""
    container: dict[str, Any] = {
        "name": "download",
        "image": "busybox",
        "command": ["/bin/sh", "-c", script],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": RESTRICTED_CONTAINER,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 2,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        **PROCESS_POOL,
    }
    if claim_name is not None:
        container["volumeMounts"] = [{"name": "models", "mountPath": MOUNT}]
        pod_spec["volumes"] = [claim_volume(claim_name, read_only=False)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 2,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "download", "operator": "In", "values": [22]},
                    }
                ]
            },
            "template": {"spec": pod_spec},
        },
    }


def reader_pod(name: str, script: str, claim_name: str) -> dict[str, Any]:
    """A serving-like pod: the claim mounted read-only (volume and mount)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "server",
                    "image": "busybox",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "models", "mountPath": MOUNT, "readOnly": True}],
                }
            ],
            "volumes": [claim_volume(claim_name, read_only=True)],
            **PROCESS_POOL,
        },
    }


# -- waits ------------------------------------------------------------------------------------


def core(api_client: Any) -> kube_client.CoreV1Api:
    return kube_client.CoreV1Api(api_client)


def wait_bound(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    def bound() -> dict[str, Any] | None:
        found: dict[str, Any] = api_client.sanitize_for_serialization(
            core(api_client).read_namespaced_persistent_volume_claim(name, namespace)
        )
        return found if found["status"].get("phase") == "Bound" else None

    return poll_until(bound, CLAIM_SECONDS, f"claim {name} to be Bound")


def read_volume(api_client: Any, name: str) -> dict[str, Any] | None:
    try:
        volume: dict[str, Any] = api_client.sanitize_for_serialization(core(api_client).read_persistent_volume(name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return volume


def wait_job(api_client: Any, namespace: str, name: str, condition_type: str) -> dict[str, Any]:
    """The Job once ``condition_type`` (Complete or Failed) is True; fails at once on the other one."""

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = api_client.sanitize_for_serialization(
            kube_client.BatchV1Api(api_client).read_namespaced_job(name, namespace)
        )
        true = {c["type"]: c for c in job.get("status", {}).get("conditions") or [] if c["status"] == "True"}
        other = "Failed" if condition_type == "Complete" else "Complete"
        assert other not in true, f"job {name} ended {other}: {true[other]}"
        return job if condition_type in true else None

    return poll_until(finished, JOB_SECONDS, f"job {name} to be {condition_type}")


def job_pods(api_client: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = core(api_client).list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}")
    pods: list[dict[str, Any]] = api_client.sanitize_for_serialization(listed)["items"]
    return pods


def pod_log(api_client: Any, namespace: str, pod: str, container: str, **options: Any) -> str:
    text: str = core(api_client).read_namespaced_pod_log(pod, namespace, container=container, **options)
    return text


def wait_log(api_client: Any, namespace: str, pod: str, container: str, expected: str, **options: Any) -> None:
    """Until the log through the API reads ``expected`` (a running container may not have written it yet)."""
    poll_until(
        lambda: True if pod_log(api_client, namespace, pod, container, **options) == expected else None,
        JOB_SECONDS,
        f"the log of {pod}/{container} to read {expected!r}",
    )


def direct_log_answer(port: int, path: str, context: ssl.SSLContext) -> bytes:
    """The log server's first answer bytes to a GET of ``path`` ("" when the TLS handshake refused us)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(1024)
    except (ssl.SSLError, OSError):
        return b""


def delete_job_and_pods(api_client: Any, namespace: str, name: str) -> None:
    kube_client.BatchV1Api(api_client).delete_namespaced_job(name, namespace, propagation_policy="Background")
    poll_until(
        lambda: True if not job_pods(api_client, namespace, name) else None,
        JOB_SECONDS,
        f"the pods of job {name} to be gone",
    )


# -- tests ------------------------------------------------------------------------------------


def test_a_download_job_fills_a_claim_that_a_read_only_pod_then_reads(api_client: Any, namespace: str) -> None:
    core(api_client).create_namespaced_persistent_volume_claim(namespace, claim("cache"))
    bound = wait_bound(api_client, namespace, "cache")
    assert bound["spec"]["storageClassName"] == DEFAULT_STORAGE_CLASS
    assert bound["status"]["accessModes"] == ["ReadWriteMany"]
    volume = read_volume(api_client, bound["spec"]["volumeName"])
    assert volume is not None
    folder = Path(volume["spec"]["hostPath"]["path"])
    assert folder.parent == HOSTPATH_PV_ROOT
    assert folder.is_dir()
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Delete"

    script = f"echo downloading; echo weights-v1 > {MOUNT}/x; echo done"
    batch = kube_client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, download_job("download", script, "cache"))
    wait_job(api_client, namespace, "download", "Complete")
    assert (folder / "x").read_text() == "weights-v1\n"

    core(api_client).create_namespaced_pod(
        namespace, reader_pod("server", f"cat {MOUNT}/x && exec sleep 3600", "cache")
    )
    wait_pod(api_client, namespace, "server", lambda p: p["status"].get("phase") == "Running", "Running")
    wait_log(api_client, namespace, "server", "server", "weights-v1\n")

    # The pods go; the claim's folder (and the model in it) stays.
    delete_and_wait_gone(api_client, namespace, "server")
    delete_job_and_pods(api_client, namespace, "download")
    assert (folder / "x").read_text() == "weights-v1\n"


def test_pod_logs_through_the_api_tail_a_running_pod_and_a_succeeded_job_pod(
    plane: ControlPlane, api_client: Any, namespace: str
) -> None:
    batch = kube_client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, download_job("lines", "for i in 1 2 3 4 5; do echo line $i; done"))
    wait_job(api_client, namespace, "lines", "Complete")
    (job_pod,) = job_pods(api_client, namespace, "lines")
    assert job_pod["status"]["phase"] == "Succeeded"
    pod_name = job_pod["metadata"]["name"]
    assert pod_log(api_client, namespace, pod_name, "download", tail_lines=2) == "line 4\nline 5\n"
    assert pod_log(api_client, namespace, pod_name, "download") == "".join(f"line {i}\n" for i in range(1, 6))
    assert pod_log(api_client, namespace, pod_name, "download", tail_lines=2, limit_bytes=4) == "line"
    with pytest.raises(ApiException) as no_previous:
        pod_log(api_client, namespace, pod_name, "download", previous=True)
    assert no_previous.value.status == 400
    assert "previous terminated container" in str(no_previous.value.body)

    running = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["/bin/sh", "-c", "echo a; echo b; echo c; exec sleep 3600"],
                }
            ],
            **PROCESS_POOL,
        },
    }
    core(api_client).create_namespaced_pod(namespace, running)
    wait_pod(api_client, namespace, "talker", lambda p: p["status"].get("phase") == "Running", "Running")
    wait_log(api_client, namespace, "talker", "main", "b\nc\n", tail_lines=2)

    # The log server itself refuses a client without a certificate of the cluster CA.
    node = core(api_client).read_node(job_pod["spec"]["nodeName"])
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    assert plane.process_kubelet is not None
    assert plane.process_kubelet.log_server is not None
    assert port == plane.process_kubelet.log_server.port
    path = f"/containerLogs/{namespace}/talker/main?tailLines=1"
    with_certificate = ssl.create_default_context(cafile=str(plane.ca_path))
    with_certificate.load_cert_chain(str(plane.pki_dir / "admin.crt"), str(plane.pki_dir / "admin.key"))
    assert direct_log_answer(port, path, with_certificate).startswith(b"HTTP/1.0 200")
    without = ssl.create_default_context(cafile=str(plane.ca_path))
    assert not direct_log_answer(port, path, without).startswith(b"HTTP/"), "answered a client without a certificate"
    delete_and_wait_gone(api_client, namespace, "talker")

    # follow: the answer grows while the container runs and ends when it exits.
    short = {**running, "metadata": {"name": "short"}}
    short["spec"] = {
        **running["spec"],
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "busybox", "command": ["/bin/sh", "-c", "echo x; sleep 3; echo y"]}],
    }
    core(api_client).create_namespaced_pod(namespace, short)
    wait_pod(api_client, namespace, "short", lambda p: p["status"].get("phase") == "Running", "Running")
    began = time.monotonic()
    assert pod_log(api_client, namespace, "short", "main", follow=True, _request_timeout=30) == "x\ny\n"
    assert time.monotonic() - began < 20, "follow ended only at the client's timeout"


def test_exit_22_fails_the_job_by_its_pod_failure_policy_with_the_last_line_as_message(
    api_client: Any, namespace: str
) -> None:
    script = "echo fetching tiny.gguf; echo 'error: 404 Not Found: no such file' >&2; exit 22"
    kube_client.BatchV1Api(api_client).create_namespaced_job(namespace, download_job("fails", script))
    job = wait_job(api_client, namespace, "fails", "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert job["status"].get("failed") == 1, "FailJob ends the Job at the first failure, without a retry"
    (pod,) = job_pods(api_client, namespace, "fails")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 22
    assert terminated["message"].splitlines()[-1] == "error: 404 Not Found: no such file"
    assert pod_log(api_client, namespace, pod["metadata"]["name"], "download", tail_lines=1) == (
        "error: 404 Not Found: no such file\n"
    )


def test_a_pod_waits_for_its_claim_and_starts_once_it_is_bound(api_client: Any, namespace: str) -> None:
    # Bound to a node directly, the pod passes the scheduler (which would hold it back itself).
    node = core(api_client).list_node(label_selector=f"{PROCESS_BACKED_LABEL}=true").items[0].metadata.name
    body = reader_pod("early", f"ls {MOUNT} && exec sleep 3600", "late")
    body["spec"]["nodeName"] = node
    core(api_client).create_namespaced_pod(namespace, body)

    def waiting_message(pod: dict[str, Any]) -> bool:
        state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
        return 'persistentvolumeclaim "late" not found' in state.get("waiting", {}).get("message", "")

    pod = wait_pod(api_client, namespace, "early", waiting_message, "waiting on its claim")
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    events = core(api_client).list_namespaced_event(namespace, field_selector="involvedObject.name=early").items
    assert any(e.reason == "FailedMount" and '"late" not found' in (e.message or "") for e in events)

    core(api_client).create_namespaced_persistent_volume_claim(namespace, claim("late"))
    wait_pod(api_client, namespace, "early", lambda p: p["status"].get("phase") == "Running", "Running once bound")
    assert read_pod(api_client, namespace, "early") is not None
    delete_and_wait_gone(api_client, namespace, "early")


def test_deleting_the_claim_deletes_its_volume_and_folder(api_client: Any, namespace: str) -> None:
    core(api_client).create_namespaced_persistent_volume_claim(namespace, claim("gone"))
    volume_name = wait_bound(api_client, namespace, "gone")["spec"]["volumeName"]
    volume = read_volume(api_client, volume_name)
    assert volume is not None
    folder = Path(volume["spec"]["hostPath"]["path"])
    kube_client.BatchV1Api(api_client).create_namespaced_job(
        namespace, download_job("fill", f"echo data > {MOUNT}/blob", "gone")
    )
    wait_job(api_client, namespace, "fill", "Complete")
    delete_job_and_pods(api_client, namespace, "fill")
    assert (folder / "blob").read_text() == "data\n", "the pod's removal must leave the claim's folder alone"

    core(api_client).delete_namespaced_persistent_volume_claim("gone", namespace)
    poll_until(
        lambda: True if read_volume(api_client, volume_name) is None else None,
        CLAIM_SECONDS,
        f"PV {volume_name} to be deleted with its claim",
    )
    poll_until(lambda: True if not folder.exists() else None, CLAIM_SECONDS, f"the PV's folder {folder} to go")
