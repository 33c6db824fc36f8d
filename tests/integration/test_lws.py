"""A replica that spans nodes, on the REAL LeaderWorkerSet controller (hack/upstream-versions.env,
built by hack/build-upstream.sh) with its CRDs and webhooks, in a control plane of this module's own.

Llama 3.1 405B in bf16 with `placement.maxNodesPerReplica: 2` becomes a LeaderWorkerSet; the LWS controller
(not the operator) creates the leader StatefulSet, the leader pod, the group's worker StatefulSet and its
worker pod, labelled by LWS's pod webhook, one per H100 node. The LlamaDeployment's status follows the
LWS's own conditions: Ready while it is Available; at 2 replicas the second group cannot be placed (the
H100 pool has two 8-GPU nodes), the LWS reports Progressing and so does the LlamaDeployment, until it is
scaled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from llama_operator_dev.lws import BUILD_SCRIPT, lws_binary
from tests.integration.cluster_setup import poll_until, skip_without_binaries
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
NAME = "llama-405b"
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
TIMEOUT = 60


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """This module's own plane, with the LWS controller (its webhooks would outlive no other module)."""
    skip_without_binaries()
    if lws_binary() is None:
        pytest.skip(f"the LeaderWorkerSet manager is not built; run {BUILD_SCRIPT} LWS")
    with ControlPlane(tmp_path_factory.mktemp("lws-plane"), lws=True) as started:
        yield started


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LlamaDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"},
            "placement": {"maxNodesPerReplica": 2},
        },
    }


def read_ld(api: Any, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube_client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME
    )
    return obj


def current_condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == kind), None)


def ready_condition(api: Any, namespace: str, status: str, contains: str) -> dict[str, Any] | None:
    condition = current_condition(read_ld(api, namespace), "Ready")
    if condition and condition["status"] == status and contains in condition["message"]:
        return condition
    return None


def wait_ready(api: Any, namespace: str, status: str, contains: str, what: str) -> dict[str, Any]:
    """Poll for Ready=status whose message contains `contains`; a timeout shows the last status seen."""
    try:
        return poll_until(lambda: ready_condition(api, namespace, status, contains), TIMEOUT, what)
    except pytest.fail.Exception:
        pytest.fail(f"timed out waiting for {what}; last status: {read_ld(api, namespace).get('status')}")


def group_pods(api: Any, namespace: str) -> list[Any]:
    pods = kube_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{LWS_NAME_LABEL}={NAME}")
    return [p for p in pods.items if p.metadata.deletion_timestamp is None]


def ready_pods(api: Any, namespace: str, count: int) -> list[Any] | None:
    pods = [p for p in group_pods(api, namespace)
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]  # fmt: skip
    return pods if len(pods) == count else None


def owner_chain(api: Any, namespace: str, pod: Any) -> list[str]:
    """Kind/name of each controller owner up from the pod, until an owner that is no pod or StatefulSet."""
    apps, core = kube_client.AppsV1Api(api), kube_client.CoreV1Api(api)
    chain, current = [], pod
    while True:
        owner = next((r for r in current.metadata.owner_references or [] if r.controller), None)
        if owner is None:
            return chain
        chain.append(f"{owner.kind}/{owner.name}")
        if owner.kind == "StatefulSet":
            current = apps.read_namespaced_stateful_set(owner.name, namespace)
        elif owner.kind == "Pod":
            current = core.read_namespaced_pod(owner.name, namespace)
        else:
            return chain


def test_a_405b_replica_over_two_h100_nodes_runs_on_the_real_lws_controller(
    api_client: Any, namespace: str, operator: OperatorProcess
) -> None:
    started = time.monotonic()
    custom = kube_client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest())

    ready = wait_ready(api_client, namespace, "True", "Available", "Ready=True")
    assert (
        ready["message"]
        == f"1/1 replicas ready; LeaderWorkerSet {NAME}: Available (AllGroupsReady: All replicas are ready)"
    )
    obj = read_ld(api_client, namespace)
    assert (obj["status"]["phase"], obj["status"]["ready"], obj["status"]["readyReplicas"]) == ("Ready", "1/1", 1)
    assert obj["status"]["gpus"] == "h100-80gb x16 (2 nodes)", obj["status"]

    lws = custom.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, NAME)
    assert [(r["kind"], r["uid"]) for r in lws["metadata"]["ownerReferences"]] == [
        ("LlamaDeployment", obj["metadata"]["uid"])
    ]
    # The LWS webhook defaulted what the operator leaves out; the LWS controller reports on this generation.
    assert lws["spec"]["networkConfig"] == {"subdomainPolicy": "Shared"}, lws["spec"]
    assert {c["type"]: c["status"] for c in lws["status"]["conditions"]}["Available"] == "True"
    assert lws["metadata"]["generation"] == 1, "the operator's apply and LWS's defaults must not fight"

    pods = {p.metadata.labels[WORKER_INDEX]: p for p in ready_pods(api_client, namespace, 2) or []}
    assert sorted(pods) == ["0", "1"], "one leader (worker-index 0) and one worker (1)"
    leader, worker = pods["0"], pods["1"]
    assert (leader.metadata.name, worker.metadata.name) == (NAME + "-0", NAME + "-0-1")
    assert {p.metadata.labels[GROUP_INDEX] for p in pods.values()} == {"0"}
    # Placed by the scheduler on the H100 pool, one whole node (8 GPUs) each.
    nodes = {n.metadata.name: n for n in kube_client.CoreV1Api(api_client).list_node().items}
    assert len({leader.spec.node_name, worker.spec.node_name}) == 2
    for pod in pods.values():
        assert nodes[pod.spec.node_name].metadata.labels["nvidia.com/gpu.product"] == H100_PRODUCT
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    # Created by LWS: the leader by the LWS's StatefulSet, the worker by the group's StatefulSet under the leader.
    assert owner_chain(api_client, namespace, leader) == [f"StatefulSet/{NAME}", f"LeaderWorkerSet/{NAME}"]
    assert owner_chain(api_client, namespace, worker) == [
        f"StatefulSet/{NAME}-0", f"Pod/{NAME}-0", f"StatefulSet/{NAME}", f"LeaderWorkerSet/{NAME}"
    ]  # fmt: skip
    # LWS's pod webhook gave the worker the leader's address, which the Ray worker command dials.
    env = {e.name: e.value for e in worker.spec.containers[0].env or []}
    assert env["LWS_LEADER_ADDRESS"].startswith(f"{NAME}-0.{NAME}.{namespace}"), env

    # A second replica: the pool has no third and fourth H100 node, LWS is no longer Available and says so.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 2}})
    waiting = wait_ready(api_client, namespace, "False", "Progressing (GroupsProgressing", "Ready=False quoting LWS")
    assert waiting["message"].startswith("1/2 replicas ready; "), waiting
    obj = read_ld(api_client, namespace)
    assert obj["status"]["phase"] in ("Progressing", "Degraded"), obj["status"]
    assert obj["status"]["ready"] == "1/2"
    lws = custom.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, NAME)
    assert lws["spec"]["replicas"] == 2

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"replicas": 1}})
    wait_ready(api_client, namespace, "True", "AllGroupsReady", "Ready=True again")
    poll_until(lambda: ready_pods(api_client, namespace, 2), TIMEOUT, "the second group's pods gone")
    assert time.monotonic() - started < 120


def test_lws_webhooks_touch_only_lws_pods(api_client: Any, namespace: str) -> None:
    """The pod webhooks select LWS pods only (the module's objectSelector): any other pod is created as is,
    and a LeaderWorkerSet the validating webhook refuses never reaches etcd."""
    core = kube_client.CoreV1Api(api_client)
    body = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]}}
    pod = core.create_namespaced_pod(namespace, body)
    assert not any(k.startswith("leaderworkerset.sigs.k8s.io/") for k in pod.metadata.labels or {})
    bad = {
        "apiVersion": f"{LWS_GROUP}/{LWS_VERSION}",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "bad"},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": body},
                 "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 0,
                                                                                               "maxUnavailable": 0}}},
    }  # fmt: skip
    with pytest.raises(ApiException) as refused:
        kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, bad
        )
    assert refused.value.status == 403, refused.value.body
    assert 'admission webhook \\"vleaderworkerset.kb.io\\" denied the request' in refused.value.body
    assert "must not be 0 when `maxSurge` is 0" in refused.value.body
