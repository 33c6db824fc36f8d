"""Pure rules behind claims and pod logs on the process-backed pool: claim -> folder, the
containerLogs request and its answer, the node's kubelet port, the provisioner's leftovers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llama_operator_dev.certs import CertificateFiles, ClusterCertificates
from llama_operator_dev.components import ControlPlanePorts, apiserver_command, controller_manager_command
from llama_operator_dev.process_pod_logs import (
    BadLogRequestError,
    LogRequest,
    chosen_log_file,
    container_runs,
    log_excerpt,
    missing_log_message,
    parse_log_request,
)
from llama_operator_dev.process_pod_paths import (
    claim_volume_folder,
    container_mount_folders,
    pod_claims,
    pod_volume_folders,
    unbacked_volumes,
)
from llama_operator_dev.process_pods import node_status_patch, pod_event
from llama_operator_dev.storage import (
    DEFAULT_CLASS_ANNOTATION,
    HOSTPATH_PROVISIONER,
    default_storage_class,
    leftover_volume_folders,
)

PV_FOLDER = Path("/tmp/hostpath_pv/0b7c")


def bound_claim(volume_name: str = "pvc-1") -> dict[str, Any]:
    return {"metadata": {"name": "cache"}, "spec": {"volumeName": volume_name}, "status": {"phase": "Bound"}}


def host_path_volume(path: str = str(PV_FOLDER)) -> dict[str, Any]:
    return {"metadata": {"name": "pvc-1"}, "spec": {"hostPath": {"path": path}}}


class TestClaimFolders:
    def test_a_bound_claim_is_the_folder_of_its_host_path_or_local_volume(self) -> None:
        assert claim_volume_folder("cache", bound_claim(), host_path_volume()) == PV_FOLDER
        local = {"spec": {"local": {"path": "/srv/disk1"}}}
        assert claim_volume_folder("cache", bound_claim(), local) == Path("/srv/disk1")

    def test_a_missing_pending_or_deleted_claim_says_why_the_pod_waits(self) -> None:
        assert claim_volume_folder("cache", None, None) == 'persistentvolumeclaim "cache" not found'
        pending = {"spec": {}, "status": {"phase": "Pending"}}
        assert claim_volume_folder("cache", pending, None) == 'persistentvolumeclaim "cache" is not bound'
        deleted = {**bound_claim(), "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}
        assert "is being deleted" in str(claim_volume_folder("cache", deleted, host_path_volume()))
        assert (
            claim_volume_folder("cache", bound_claim(), None) == 'persistentvolume "pvc-1" of claim "cache" not found'
        )

    def test_a_volume_without_a_host_folder_is_not_backed(self) -> None:
        nfs = {"spec": {"nfs": {"server": "x", "path": "/export"}}}
        assert "has no hostPath or local path" in str(claim_volume_folder("cache", bound_claim(), nfs))

    def test_claim_volumes_are_named_and_backed_once_resolved(self) -> None:
        spec = {
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": "cache", "readOnly": True}},
                {"name": "scratch", "emptyDir": {}},
            ],
            "containers": [
                {
                    "name": "main",
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models", "readOnly": True},
                        {"name": "models", "mountPath": "/m/sub", "subPath": "tiny"},
                        {"name": "scratch", "mountPath": "/tmp/s"},
                    ],
                }
            ],
        }
        assert pod_claims(spec) == {"models": "cache"}
        folders = pod_volume_folders(spec, Path("/pods/p"))
        assert unbacked_volumes(spec, {}, folders) == ["models"]  # until the claim is Bound
        folders["models"] = PV_FOLDER
        assert unbacked_volumes(spec, {}, folders) == []
        mounts = container_mount_folders(spec["containers"][0], folders)
        assert mounts["/models"] == PV_FOLDER
        assert mounts["/m/sub"] == PV_FOLDER / "tiny"


class TestLogRequests:
    def test_the_apiserver_s_query_is_parsed(self) -> None:
        request = parse_log_request(
            "/containerLogs/ns-1/pod-a/download", "tailLines=20&limitBytes=100&previous=true&timestamps=true"
        )
        assert request == LogRequest("ns-1", "pod-a", "download", tail_lines=20, limit_bytes=100, previous=True)
        assert parse_log_request("/containerLogs/ns/pod/c", "") == LogRequest("ns", "pod", "c")
        assert parse_log_request("/containerLogs/ns/pod-only", "") is None
        assert parse_log_request("/exec/ns/pod/c", "") is None

    @pytest.mark.parametrize("query", ["tailLines=x", "limitBytes=-1"])
    def test_a_bad_number_is_a_bad_request(self, query: str) -> None:
        with pytest.raises(BadLogRequestError):
            parse_log_request("/containerLogs/ns/pod/c", query)

    def test_the_latest_run_is_the_log_and_the_one_before_it_the_previous(self) -> None:
        names = ["main.10.log", "main.2.log", "init.0.log", "main.0.log", "main.x.log", "other"]
        assert container_runs(names, "main") == ["main.0.log", "main.2.log", "main.10.log"]
        assert chosen_log_file(names, "main", previous=False) == "main.10.log"
        assert chosen_log_file(names, "main", previous=True) == "main.2.log"
        assert chosen_log_file(names, "init", previous=True) is None
        assert chosen_log_file(names, "absent", previous=False) is None

    def test_tail_lines_then_limit_bytes(self) -> None:
        data = b"one\ntwo\nthree"
        assert log_excerpt(data, None, None) == data
        assert log_excerpt(data, 2, None) == b"two\nthree"
        assert log_excerpt(data, 0, None) == b""
        assert log_excerpt(data, 9, None) == data
        assert log_excerpt(data, 2, 3) == b"two"

    def test_no_log_reads_as_a_kubelet_s_400(self) -> None:
        request = LogRequest("ns", "p", "c")
        assert missing_log_message(request, "") == 'container "c" in pod "p" is waiting to start: ContainerCreating'
        previous = LogRequest("ns", "p", "c", previous=True)
        assert missing_log_message(previous, "") == 'previous terminated container "c" in pod "p" not found'


class TestNodeAndEvents:
    def test_the_node_names_its_kubelet_port_only_when_it_serves_one(self) -> None:
        with_port = node_status_patch("127.0.0.1", "n", "now", "v0", kubelet_port=10250)
        assert with_port["status"]["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
        assert "daemonEndpoints" not in node_status_patch("127.0.0.1", "n", "now", "v0")["status"]

    def test_a_failed_mount_event_is_about_the_pod(self) -> None:
        pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
        event = pod_event(pod, "node-1", "FailedMount", "no claim", now="T")
        assert event["involvedObject"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": "ns",
            "name": "p",
            "uid": "u",
        }
        assert (event["reason"], event["type"], event["source"]["host"]) == ("FailedMount", "Warning", "node-1")


class TestProvisioning:
    def test_the_default_class_is_the_host_path_provisioner_s(self) -> None:
        storage_class = default_storage_class()
        assert storage_class["provisioner"] == HOSTPATH_PROVISIONER == "kubernetes.io/host-path"
        assert storage_class["metadata"]["annotations"] == {DEFAULT_CLASS_ANNOTATION: "true"}
        assert (storage_class["reclaimPolicy"], storage_class["volumeBindingMode"]) == ("Delete", "Immediate")

    def test_only_the_provisioner_s_own_folders_are_leftovers(self) -> None:
        root = Path("/tmp/hostpath_pv")
        volumes = [
            (HOSTPATH_PROVISIONER, str(root / "b")),
            (HOSTPATH_PROVISIONER, str(root / "a")),
            ("", str(root / "static")),  # a PV someone made by hand
            (HOSTPATH_PROVISIONER, "/srv/elsewhere"),
            (HOSTPATH_PROVISIONER, str(root)),
            (HOSTPATH_PROVISIONER, ""),
        ]
        assert leftover_volume_folders(volumes, root) == [root / "a", root / "b"]

    def test_the_components_run_with_the_provisioner_and_the_kubelet_client(self, tmp_path: Path) -> None:
        files = CertificateFiles(tmp_path / "c.crt", tmp_path / "c.key")
        certificates = ClusterCertificates(
            files, files, files, files, files, files, files, files, tmp_path / "k", tmp_path / "p"
        )
        ports = ControlPlanePorts(1, 2, 3, 4, 5, 6)
        manager = controller_manager_command(Path("kcm"), certificates, tmp_path / "kubeconfig", ports)
        assert "--enable-hostpath-provisioner" in manager
        apiserver = apiserver_command(Path("kas"), certificates, ports)
        assert f"--kubelet-client-certificate={files.cert}" in apiserver
        assert f"--kubelet-certificate-authority={files.cert}" in apiserver
        assert "--kubelet-preferred-address-types=InternalIP,Hostname" in apiserver
