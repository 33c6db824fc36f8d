"""What every integration suite does on a control plane: wait with a deadline, skip without the
binaries, create a namespace the apiserver accepts pods in, install the CRD."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.binaries import BUILD_SCRIPT, expected_bin_dir, missing_binaries

T = TypeVar("T")
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "llamadeployments.llamaops.io.yaml"


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


def create_namespace(api_client: Any, prefix: str = "test") -> str:
    """A fresh namespace whose default service account exists (pods are refused before it does)."""
    core = kube_client.CoreV1Api(api_client)
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
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
    return name


def install_crd(api_client: Any) -> None:
    """The LlamaDeployment CRD from crds/ (created, or replaced when it exists), once Established."""
    ext = kube_client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(CRD_FILE.read_text())
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


GC_PROBE_SECONDS = 90
GC_PROBE_TRY_SECONDS = 5


def wait_until_collected_with_llamadeployments(api_client: Any) -> None:
    """Block until the controller-manager's garbage collector collects what a deleted LlamaDeployment owned.

    The collector finds a new CRD's kind by discovery every 30 s; an owner it does not watch yet is looked up
    with a growing backoff, so a test that deletes a LlamaDeployment right after `install_crd` may wait minutes
    for the owned objects to go. Each try owns a fresh ConfigMap by a fresh LlamaDeployment (one that fits
    nowhere: an operator running alongside creates nothing for it) and deletes the owner.
    """
    core = kube_client.CoreV1Api(api_client)
    custom = kube_client.CustomObjectsApi(api_client)
    namespace = create_namespace(api_client, "gc-probe")
    spec = {"model": {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"}}
    deadline = time.monotonic() + GC_PROBE_SECONDS
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        name = f"probe-{attempt}"
        body = {
            "apiVersion": "llamaops.io/v1alpha1",
            "kind": "LlamaDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
        owner = custom.create_namespaced_custom_object("llamaops.io", "v1alpha1", namespace, "llamadeployments", body)
        reference = {"apiVersion": "llamaops.io/v1alpha1", "kind": "LlamaDeployment", "name": name,
                     "uid": owner["metadata"]["uid"]}  # fmt: skip
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "ownerReferences": [reference]}})
        custom.delete_namespaced_custom_object("llamaops.io", "v1alpha1", namespace, "llamadeployments", name)
        try_until = time.monotonic() + GC_PROBE_TRY_SECONDS
        while time.monotonic() < try_until:
            try:
                core.read_namespaced_config_map(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    core.delete_namespace(namespace)
                    return
                raise
            time.sleep(0.25)
    pytest.fail(f"the garbage collector did not collect a LlamaDeployment's ConfigMap in {GC_PROBE_SECONDS} s")
