"""routing.inferencePool against the real Gateway API Inference Extension CRD (hack/upstream-versions.env),
taken from its Go module and installed in the real apiserver while the operator runs.

Before the CRD exists the object says which CRD to install and everything else is rolled; once it is
installed the operator notices (it watches CRDs), renders the InferencePool, and the apiserver accepts it
under the extension's own schema. Its selector then matches exactly the Ready serving pods, at 1 replica
and at 2; turned off, the pool is deleted.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.upstream import read_upstream, upstream_crds
from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess
from tests.unit.render_cases import ROOT

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
POOL_GROUP, POOL_VERSION, POOL_PLURAL = "inference.networking.k8s.io", "v1", "inferencepools"
POOL_CRD = f"{POOL_PLURAL}.{POOL_GROUP}"
NAME = "llama-8b-chat"
TIMEOUT = 90
PICKER = {"name": "llm-d-epp", "port": 9002, "failureMode": "FailOpen"}


def manifest() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "examples" / "llama-3.1-8b-vllm-24gb.yaml").read_text())
    body["spec"].pop("hubTokenSecretRef", None)
    body["spec"]["routing"] = {"inferencePool": {"enabled": True, "endpointPickerRef": PICKER}}
    return body


def get_ld(api: Any, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube_client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME
    )
    return obj


def pool_condition(api: Any, namespace: str) -> dict[str, Any] | None:
    obj = get_ld(api, namespace)
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if (
            condition["type"] == "InferencePool"
            and condition.get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return dict(condition)
    return None


def read_pool(api: Any, namespace: str) -> dict[str, Any] | None:
    try:
        pool: dict[str, Any] = kube_client.CustomObjectsApi(api).get_namespaced_custom_object(
            POOL_GROUP, POOL_VERSION, namespace, POOL_PLURAL, NAME
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return pool


def install_pool_crd(api: Any) -> None:
    ext = kube_client.ApiextensionsV1Api(api)
    for crd in upstream_crds("GIE"):
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise

    def established() -> bool | None:
        conditions = ext.read_custom_resource_definition(POOL_CRD).status.conditions or []
        return True if any(c.type == "Established" and c.status == "True" for c in conditions) else None

    poll_until(established, 30, f"{POOL_CRD} to be established")


def matches_ready_pods(api: Any, namespace: str, pool: dict[str, Any], replicas: int) -> bool | None:
    """The pods the pool selects are exactly the Ready pods of the object's Deployment, `replicas` of them."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(pool["spec"]["selector"]["matchLabels"].items()))
    core = kube_client.CoreV1Api(api)
    selected = {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                if p.metadata.deletion_timestamp is None}  # fmt: skip
    ready = {
        p.metadata.name
        for p in core.list_namespaced_pod(namespace).items
        if any(r.kind == "ReplicaSet" and r.name.startswith(f"{NAME}-") for r in p.metadata.owner_references or [])
        and p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }
    return True if selected == ready and len(ready) == replicas else None


def test_an_inference_pool_waits_for_its_crd_then_selects_exactly_the_ready_serving_pods(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    ext = kube_client.ApiextensionsV1Api(api_client)
    present = [c.metadata.name for c in ext.list_custom_resource_definition().items]
    assert POOL_CRD not in present, "this test installs the Inference Extension's CRD itself"
    custom = kube_client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest())

    def missing() -> dict[str, Any] | None:
        condition = pool_condition(api_client, namespace)
        return condition if condition and condition["reason"] == "CRDNotInstalled" else None

    condition = poll_until(missing, TIMEOUT, "InferencePool=False CRDNotInstalled")
    assert condition["status"] == "False"
    assert POOL_CRD in condition["message"], condition
    assert "routing.inferencePool.enabled: false" in condition["message"], condition
    # Everything else rolled: the Deployment and the Service exist.
    kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, namespace)
    kube_client.CoreV1Api(api_client).read_namespaced_service(NAME, namespace)

    install_pool_crd(api_client)

    def rendered() -> dict[str, Any] | None:
        condition = pool_condition(api_client, namespace)
        return condition if condition and condition["status"] == "True" else None

    condition = poll_until(rendered, TIMEOUT, "InferencePool=True once the CRD is installed")
    pool = read_pool(api_client, namespace)
    assert pool is not None
    uid = get_ld(api_client, namespace)["metadata"]["uid"]
    assert [(r["uid"], r["controller"]) for r in pool["metadata"]["ownerReferences"]] == [(uid, True)]
    assert pool["spec"]["selector"] == {"matchLabels": {"llamaops.io/deployment": NAME}}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]  # vLLM's API port
    assert pool["spec"]["endpointPickerRef"] == {"name": "llm-d-epp", "kind": "Service", "group": "", "port": {"number": 9002},
                                                 "failureMode": "FailOpen"}  # fmt: skip
    assert (
        condition["message"]
        == f"InferencePool/{NAME} selects the serving pods (llamaops.io/deployment={NAME}) on port 8000"
    )
    poll_until(lambda: matches_ready_pods(api_client, namespace, pool, 1), TIMEOUT, "the pool's pods = the Ready pods")

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 2}})
    poll_until(lambda: matches_ready_pods(api_client, namespace, pool, 2), TIMEOUT, "2 Ready pods, both in the pool")

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"routing": {"inferencePool": {"enabled": False}}}}
    )
    poll_until(lambda: True if read_pool(api_client, namespace) is None else None, TIMEOUT, "the pool deleted")

    def condition_gone() -> bool | None:
        obj = get_ld(api_client, namespace)
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return True if all(c["type"] != "InferencePool" for c in status.get("conditions") or []) else None

    poll_until(condition_gone, TIMEOUT, "the InferencePool condition gone")


def test_the_pinned_extension_serves_inference_pool_v1() -> None:
    """The pin in hack/upstream-versions.env gives the v1 InferencePool CRD this operator renders."""
    project = read_upstream("GIE")
    (crd,) = [c for c in upstream_crds("GIE") if c["metadata"]["name"] == POOL_CRD]  # type: ignore[index]
    assert project.module == "sigs.k8s.io/gateway-api-inference-extension"
    assert [v["name"] for v in crd["spec"]["versions"] if v["served"]] == ["v1"]  # type: ignore[index]
