"""One real control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK pools) per test run.

Build the binaries first with `hack/build-controlplane.sh`; without them these tests skip.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from llama_operator_dev.binaries import BUILD_SCRIPT, expected_bin_dir, missing_binaries

T = TypeVar("T")


def skip_without_binaries() -> None:
    bin_dir = expected_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        pytest.skip(f"control-plane binaries not built ({', '.join(missing)} missing in {bin_dir}); run {BUILD_SCRIPT}")


def poll_until(check: Callable[[], T | None], timeout_seconds: float, what: str, interval_seconds: float = 0.25) -> T:
    """Call ``check`` until it returns something other than None; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_seconds:.0f}s waiting for {what}")
        time.sleep(interval_seconds)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    skip_without_binaries()
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[Any]:
    """The official client, configured from the generated admin kubeconfig."""
    client = kube_config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(api_client: Any, control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace whose default service account exists (pods are refused before it does)."""
    core = kube_client.CoreV1Api(api_client)
    name = f"test-{uuid.uuid4().hex[:10]}"
    core.create_namespace(body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def default_service_account() -> bool | None:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return True

    poll_until(default_service_account, 60, f"service account default in {name}")
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def crd(api_client: Any) -> None:
    ext = kube_client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "crds" / "llamadeployments.llamaops.io.yaml").read_text()
    )
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool | None:
        conditions = ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
        return True if any(c.type == "Established" and c.status == "True" for c in conditions) else None

    poll_until(established, 30, "the CRD to be established")
