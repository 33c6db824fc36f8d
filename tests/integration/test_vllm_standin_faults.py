"""The one vLLM fault the real server cannot be made to show on demand, on the vLLM stand-in: an engine
that accepts the smoke request's connection and never answers must not wedge its LlamaDeployment.
The pods are the operator's, as rendered (the model downloads from the hub first); only `vllm` is the
stand-in (tests/standins/vllm_openai.py). Also: the GPU pool keeps its GPUs under the process-backed kubelet."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION, get_llamadeployment, wait_adapter_rollout
from tests.integration.vllm_fixtures import GPU_POOL, support_adapter, vllm_llama_deployment, vllm_pod_urls
from tests.reliability import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("vllm-standin")]

SILENT = "vllm-silent"
TIMEOUT = 90


def test_the_gpu_pool_keeps_its_gpus_under_the_process_backed_kubelet(plane: ControlPlane, api_client: Any) -> None:
    assert plane.process_kubelet is not None
    core = kube_client.CoreV1Api(api_client)
    nodes = core.list_node(label_selector=f"llamaops.io/node-pool={GPU_POOL}").items
    assert sorted(node.metadata.name for node in nodes) == [f"kwok-{GPU_POOL}-0", f"kwok-{GPU_POOL}-1"]
    assert set(plane.process_kubelet.node_names) >= {node.metadata.name for node in nodes}
    for node in nodes:
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("True", "KubeletReady")  # reported by the process-backed kubelet
        assert node.status.capacity["nvidia.com/gpu"] == "4"
        assert node.status.allocatable["nvidia.com/gpu"] == "4"


def test_an_engine_that_never_answers_does_not_wedge_its_deployment(
    api_client: Any, operator: OperatorProcess, ledger: Recorder
) -> None:
    """The engine accepts the smoke request's connection and never answers (a chat completion that takes an
    hour): the same LlamaDeployment still takes a replicas change at once, and its status names the pod."""
    namespace = create_namespace(api_client)
    manifest = vllm_llama_deployment(SILENT, adapters=[support_adapter("v1")], replicas=1)
    manifest["spec"]["engine"]["env"] = [{"name": "STANDIN_DELAY_SECONDS", "value": "3600"}]
    manifest["spec"]["adapterRollout"] = {"smokeRequest": {"prompt": "Say hello.", "maxTokens": 4,
                                                           "timeoutSeconds": 600}}  # fmt: skip
    objects = kube_client.CustomObjectsApi(api_client)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    rollout = wait_adapter_rollout(
        api_client, namespace, SILENT, lambda r: bool(r.get("checks")), what="a check in flight",
        operator=operator, timeout_seconds=TIMEOUT,
    )  # fmt: skip
    silent_pod = rollout["checks"][0]["pod"]
    assert silent_pod in vllm_pod_urls(api_client, namespace, SILENT)
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SILENT, {"spec": {"replicas": 2}})
    apps = kube_client.AppsV1Api(api_client)
    poll_until(
        lambda: True if apps.read_namespaced_deployment(SILENT, namespace).spec.replicas == 2 else None,
        30,
        "the Deployment to take replicas: 2 while the engine stays silent",
    )
    status = get_llamadeployment(api_client, namespace, SILENT)["status"]
    assert silent_pod in [c["pod"] for c in status["adapterRollout"]["checks"]]
    condition = next(c for c in status["conditions"] if c["type"] == "AdapterRollout")
    print(f"silent engine: {condition['message']}")
    assert f"on pod {silent_pod} unanswered since" in condition["message"]
    ledger.outage(
        "an engine that accepts connections and never answers",
        f"a replicas change applied at once while the check waited; AdapterRollout said: {condition['message']}",
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SILENT)
