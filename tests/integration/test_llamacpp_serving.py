"""The operator's llama.cpp pods, run for real: a process-backed node pool runs each pod's
container as a llama-server process, and a real Prometheus scrapes it.

One LlamaDeployment (the CPU example for the tiny model, one slot, one adapter) is created for
the module; each test checks one thing a user would notice on it. A second one, with an argument
the server rejects, must end Degraded with the server's own error.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.prometheus import Sample
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import (
    ADAPTER_NAME,
    ADAPTER_VERSION,
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    tiny_llama_deployment,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp")]

NAME = "tiny-cpu"
BROKEN_NAME = "tiny-broken"
POD_NETWORK = ipaddress.ip_network("127.0.1.0/24")
GATE_CONDITION = "llamaops.io/adapters-verified"
# The tiny model's random weights mostly repeat the last prompt token. Its own chat template ends
# the prompt with a newline, so every reply would be whitespace, which the operator's smoke
# request rightly rejects; llama.cpp's built-in "vicuna" template ends it with "ASSISTANT:".
CHAT_TEMPLATE_ARGS = ["--chat-template", "vicuna"]
WILDCARD = "0.0.0.0"  # noqa: S104 - the rendered --host, compared, never bound here
LOAD_SECONDS = 20.0
LOAD_CLIENTS = 2  # with --parallel 1: one request runs, one waits; llama-server keeps an HTTP thread for probes


@dataclass(frozen=True)
class ServedDeployment:
    namespace: str
    name: str
    pod: Any  # V1Pod
    args: list[str]  # the rendered engine args

    @property
    def url(self) -> str:
        return f"http://{self.pod.status.pod_ip}:{flag(self.args, '--port')}"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod.metadata.name}"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def condition_of(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def wait_ld_condition(
    api: Any, namespace: str, name: str, operator: OperatorProcess, *, type_: str, status: str, timeout: float
) -> dict[str, Any]:
    custom = kube_client.CustomObjectsApi(api)

    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        found = condition_of(obj, type_)
        ok = found and found["status"] == status and found.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if ok else None

    try:
        return poll_until(check, timeout, f"{name}: {type_}={status}")
    except pytest.fail.Exception:
        print(operator.log_tail())
        print(
            yaml.safe_dump(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status"))
        )
        raise


def rfc3339_seconds(value: datetime) -> float:
    return value.replace(tzinfo=value.tzinfo or UTC).timestamp()


@pytest.fixture(scope="module")
def serving_namespace(api_client: Any) -> str:
    return create_namespace(api_client)


@pytest.fixture(scope="module")
def served(
    api_client: Any,
    assets: ServingAssets,
    serving_namespace: str,
    operator: OperatorProcess,
    plane: ControlPlane,
) -> ServedDeployment:
    """The tiny CPU example, reconciled by the operator, Ready, with its one pod."""
    manifest = tiny_llama_deployment(NAME, assets, adapters=True, extra_args=CHAT_TEMPLATE_ARGS)
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, serving_namespace, PLURAL, manifest
    )
    wait_ld_condition(api_client, serving_namespace, NAME, operator, type_="Ready", status="True", timeout=120)
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        serving_namespace, label_selector=f"llamaops.io/deployment={NAME}"
    )
    (pod,) = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    args = kube_client.AppsV1Api(api_client).read_namespaced_deployment(NAME, serving_namespace)
    return ServedDeployment(serving_namespace, NAME, pod, list(args.spec.template.spec.containers[0].args))


def chat(url: str, model: str, *, max_tokens: int = 16, lora_scale: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the operator."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if lora_scale is not None:
        body["lora"] = [{"id": 0, "scale": lora_scale}]
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == httpx.codes.OK, response.text
    reply: dict[str, Any] = response.json()
    return reply


def test_the_rendered_pod_runs_llama_server_and_serves_a_chat_completion(
    served: ServedDeployment, api_client: Any, plane: ControlPlane
) -> None:
    pod = served.pod
    node = kube_client.CoreV1Api(api_client).read_node(pod.spec.node_name)
    assert node.metadata.labels.get(PROCESS_BACKED_LABEL) == "true"
    assert ipaddress.ip_address(pod.status.pod_ip) in POD_NETWORK
    (container,) = pod.status.container_statuses
    assert (container.ready, container.started, container.restart_count) == (True, True, 0)
    assert container.state.running is not None

    # Ready only after /health said 200: while loading, llama-server answers 503.
    kubelet = plane.process_kubelet
    assert kubelet is not None
    records = kubelet.probe_records(served.key)
    first_ok = next(i for i, r in enumerate(records) if r.ok)
    assert records[first_ok].answer.startswith("HTTP 200")
    assert not any(r.container_ready for r in records[:first_ok]), "ready before /health answered 200"
    loading = [r for r in records[:first_ok] if r.answer.startswith("HTTP 503")]
    assert loading, f"no 503 seen while the model loaded: {[r.answer for r in records[:first_ok]]}"
    assert not any(r.container_ready for r in records if r.answer.startswith("HTTP 503"))
    conditions = {c.type: c for c in pod.status.conditions}
    assert conditions["Ready"].status == "True"
    assert rfc3339_seconds(conditions["ContainersReady"].last_transition_time) >= int(records[first_ok].wall_time)
    assert conditions[GATE_CONDITION].status == "True", "the operator's smoke request passed on the real server"
    print(f"{served.key}: {len(loading)} probes answered 503 while loading, then {records[first_ok].answer!r}")

    reply = chat(served.url, served.name)
    print(f"chat completion from pod {served.key} at {served.url}:\n{json.dumps(reply, indent=2)}")
    assert reply["usage"]["completion_tokens"] > 0
    assert reply["choices"][0]["message"]["content"].strip()
    assert reply["model"] == served.name


def test_the_server_runs_with_the_args_sizing_rendered(served: ServedDeployment, assets: ServingAssets) -> None:
    ctx_size, parallel = int(flag(served.args, "--ctx-size")), int(flag(served.args, "--parallel"))
    assert (flag(served.args, "--host"), flag(served.args, "--port")) == (WILDCARD, "8080")
    assert "--metrics" in served.args

    props = httpx.get(f"{served.url}/props", timeout=10).json()
    slots = httpx.get(f"{served.url}/slots", timeout=10).json()
    metrics = httpx.get(f"{served.url}/metrics", timeout=10)
    assert props["total_slots"] == parallel == 1
    assert props["default_generation_settings"]["n_ctx"] == ctx_size // parallel
    assert [slot["n_ctx"] for slot in slots] == [ctx_size // parallel] * parallel
    assert props["endpoint_metrics"] is True
    assert metrics.status_code == httpx.codes.OK
    assert "llamacpp:requests_deferred" in metrics.text
    assert props["model_alias"] == served.name
    assert Path(props["model_path"]).name == assets.models.model.path.name

    # The init containers downloaded the model and the adapter from the hub into the pod's volumes.
    statuses = {s.name: s.state.terminated for s in served.pod.status.init_container_statuses}
    assert {name: done.exit_code for name, done in statuses.items()} == {
        "fetch-model": 0,
        f"fetch-adapter-{ADAPTER_NAME}": 0,
    }
    model_key = assets.model_source().removeprefix("hf://")
    assert assets.hub.downloads().get(model_key, 0) >= 1, assets.hub.downloads()

    # The process runs exactly the rendered args: only the wildcard host and pod paths are mapped.
    (container,) = served.pod.status.container_statuses
    pid = int(container.container_id.removeprefix("process://"))
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert flag(argv, "--n-gpu-layers") == flag(served.args, "--n-gpu-layers") == "0"
    mapped = [served.pod.status.pod_ip if a == WILDCARD else a for a in served.args]
    assert len(argv) == 1 + len(mapped)
    for rendered, running in zip(mapped, argv[1:], strict=True):
        if rendered.startswith(("/models/", "/adapters/")):
            assert running.endswith(rendered.split("/", 2)[2]), (rendered, running)
        else:
            assert running == rendered


def query_by_deployment(plane: ControlPlane, metric: str, served: ServedDeployment) -> list[Sample]:
    prometheus = plane.prometheus
    assert prometheus is not None
    return prometheus.query(f'{metric}{{namespace="{served.namespace}", llamaops_io_deployment="{served.name}"}}')


def test_prometheus_scrapes_the_queue_and_sees_requests_deferred_under_load(
    served: ServedDeployment, plane: ControlPlane
) -> None:
    prometheus = plane.prometheus
    assert prometheus is not None
    for metric in ("llamacpp:requests_processing", "llamacpp:requests_deferred"):
        samples = poll_until(
            lambda metric=metric: query_by_deployment(plane, metric, served) or None,
            60,
            f"Prometheus to scrape {metric} of {served.key}",
        )
        (sample,) = samples
        assert sample.labels["pod"] == served.pod.metadata.name
        assert sample.labels["llamaops_io_engine"] == "llamacpp"

    stop = threading.Event()
    replies: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 128}
                replies.append(http.post(f"{served.url}/v1/chat/completions", json=body).status_code)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(LOAD_CLIENTS)]
    deferred_query = (
        f'max_over_time(llamacpp:requests_deferred{{namespace="{served.namespace}", '
        f'llamaops_io_deployment="{served.name}"}}[30s])'
    )
    started = time.monotonic()
    for thread in clients:
        thread.start()
    try:
        peak = poll_until(
            lambda: next((s for s in prometheus.query(deferred_query) if s.value > 0), None),
            LOAD_SECONDS,
            "llamacpp:requests_deferred > 0 in Prometheus under load",
            interval_seconds=0.5,
        )
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    print(f"{deferred_query} = {peak.value:g} after {time.monotonic() - started:.1f}s of load ({len(replies)} replies)")
    assert peak.value >= 1
    assert replies
    assert set(replies) == {httpx.codes.OK}


def test_the_adapter_is_rendered_listed_and_served(served: ServedDeployment) -> None:
    adapter_path = f"/adapters/{ADAPTER_NAME}/{ADAPTER_VERSION}.gguf"
    assert flag(served.args, "--lora") == adapter_path

    listed = httpx.get(f"{served.url}/lora-adapters", timeout=10).json()
    assert [entry["id"] for entry in listed] == [0]
    assert listed[0]["path"].endswith(f"{ADAPTER_NAME}/{ADAPTER_VERSION}.gguf")

    base = chat(served.url, served.name, lora_scale=0.0)
    adapted = chat(served.url, served.name, lora_scale=1.0)
    base_text, adapted_text = (r["choices"][0]["message"]["content"] for r in (base, adapted))
    print(f"base model: {base_text!r}; with {ADAPTER_NAME}@{ADAPTER_VERSION}: {adapted_text!r}")
    assert adapted["usage"]["completion_tokens"] > 0
    assert adapted_text != base_text, "the adapter did not change the reply"


def test_a_broken_rendering_ends_degraded_with_the_servers_own_error(
    api_client: Any, assets: ServingAssets, serving_namespace: str, operator: OperatorProcess
) -> None:
    manifest = tiny_llama_deployment(BROKEN_NAME, assets, adapters=False, extra_args=["--definitely-not-a-flag"])
    kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, serving_namespace, PLURAL, manifest
    )
    obj = wait_ld_condition(
        api_client, serving_namespace, BROKEN_NAME, operator, type_="Degraded", status="True", timeout=90
    )
    degraded = condition_of(obj, "Degraded")
    assert degraded is not None
    print(f"{BROKEN_NAME}: Degraded: {degraded['reason']}: {degraded['message']}")
    assert "CrashLoopBackOff" in degraded["message"]
    assert "invalid argument: --definitely-not-a-flag" in degraded["message"]
    assert obj["status"]["phase"] == "Degraded"
    ready = condition_of(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
