"""Hostile input that only the operator can judge, and YAML alias bombs, on the real control plane.

The apiserver admits each manifest of `OPERATOR_CASES` (its schema cannot see a flag that the operator
renders itself, a model's own context limit, a base model, the shape of a passthrough affinity, or a name
that cannot name a Service); the operator refuses it with Ready=False/InvalidSpec, a message naming the
field, and creates nothing. All cases are created at once in one namespace, then each is polled.

An alias bomb ("billion laughs") is refused by the apiserver as YAML and by `llama-operator plan`, at once.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.alias_bomb import alias_bomb
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_operator import GROUP, PLURAL, VERSION, condition, create, example, get_ld
from tests.reliability import Recorder

CHILD_KINDS = (  # every kind the operator renders: (api group/version, plural)
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("policy/v1", "poddisruptionbudgets"),
    ("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    ("monitoring.coreos.com/v1", "servicemonitors"),
)
REFUSAL_SECONDS = 60.0  # every case's first pass, on 2 busy cores


@dataclass(frozen=True)
class OperatorCase:
    id: str
    manifest: dict[str, Any]
    field: str  # the field the operator's message names
    message: str  # a substring of the Ready condition's message

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


def adapted(stem: str, name: str, spec: dict[str, Any] | None = None, **engine: Any) -> dict[str, Any]:
    """An example under another name, with `spec` merged into its spec (one level) and `engine` into its engine."""
    manifest = copy.deepcopy(example(stem))
    manifest["metadata"]["name"] = name
    for key, value in (spec or {}).items():
        current = manifest["spec"].get(key)
        manifest["spec"][key] = {**current, **value} if isinstance(current, dict) else value
    manifest["spec"]["engine"] = {**manifest["spec"].get("engine", {}), **engine}
    return manifest


VLLM, TGI, LLAMACPP = "llama-3.1-8b-vllm-24gb", "llama-3.1-8b-tgi", "llama-3.2-3b-gguf-cpu"
EXTRA_ARGS = "spec.engine.extraArgs"


def extra_args_case(case_id: str, stem: str, args: list[str], message: str) -> OperatorCase:
    return OperatorCase(case_id, adapted(stem, case_id, extraArgs=args), EXTRA_ARGS, message)


OPERATOR_CASES = (
    # extraArgs that set again, in any spelling the engine's parser reads, a flag the operator renders: vLLM
    # keeps the last and undoes the sizing; TGI's launcher refuses a repeated flag; llama.cpp loads another model.
    extra_args_case("vllm-port", VLLM, ["--port", "9000"], "--port is rendered by the operator"),
    extra_args_case("vllm-port-equals", VLLM, ["--port=9000"], "--port is rendered by the operator"),
    extra_args_case(
        "vllm-gpu-memory-utilization",
        VLLM,
        ["--gpu-memory-utilization", "0.99"],
        "--gpu-memory-utilization is rendered by the operator (the share of each GPU the sizing planned",
    ),
    extra_args_case(
        "vllm-max-model-len",
        VLLM,
        ["--max-model-len", "1000000"],
        "--max-model-len is rendered from spec.model.contextLength; set that instead",
    ),
    extra_args_case(
        "vllm-max-model-len-with-underscores",
        VLLM,
        ["--max_model_len=8192"],
        "--max_model_len (--max-model-len) is rendered from spec.model.contextLength",
    ),
    extra_args_case(
        "vllm-abbreviated-flag",  # argparse's allow_abbrev reads it as --gpu-memory-utilization
        VLLM,
        ["--gpu-memory-util", "0.99"],
        "--gpu-memory-util (--gpu-memory-utilization) is rendered by the operator",
    ),
    extra_args_case(
        "vllm-short-tensor-parallel",
        VLLM,
        ["-tp", "4"],
        "-tp (--tensor-parallel-size) is rendered from spec.placement.gpuCount",
    ),
    extra_args_case(
        "vllm-served-model-name",
        VLLM,
        ["--served-model-name", "gpt-4o"],
        "--served-model-name is rendered from spec.serving.servedModelName",
    ),
    extra_args_case(
        "llamacpp-short-ctx-size",
        LLAMACPP,
        ["-c", "131072"],
        "-c (--ctx-size) is rendered from spec.model.contextLength",
    ),
    extra_args_case(
        "llamacpp-ctx-size-equals",
        LLAMACPP,
        ["--ctx-size=131072"],
        "--ctx-size is rendered from spec.model.contextLength",
    ),
    extra_args_case(
        "llamacpp-another-model-file",
        LLAMACPP,
        ["-m", "/etc/passwd"],
        "-m (--model) is rendered from spec.model.source",
    ),
    extra_args_case("tgi-num-shard", TGI, ["--num-shard", "4"], "--num-shard is rendered from spec.placement.gpuCount"),
    extra_args_case("tgi-model-id", TGI, ["--model-id=/etc"], "--model-id is rendered from spec.model.source"),
    # What the model, its adapters and the passthrough fields say, read against the catalog and core/v1.
    OperatorCase(
        "adapter-for-another-base-model",
        adapted(
            VLLM,
            "adapter-for-another-base-model",
            {
                "adapters": [
                    {
                        "name": "support",
                        "source": "hf://acme/support-lora",
                        "version": "v1",
                        "baseModel": "meta-llama/Llama-3.1-70B-Instruct",
                    }
                ]
            },
        ),
        "spec.adapters[support].baseModel",
        "is not the served model",
    ),
    OperatorCase(
        "context-above-the-catalog-maximum",
        adapted(VLLM, "context-above-the-catalog-maximum", {"model": {"contextLength": 1_000_000}}),
        "spec.model.contextLength",
        "1000000 exceeds llama-3.1-8b's maximum of 131072 tokens",
    ),
    OperatorCase(
        "affinity-terms-not-a-list",
        adapted(
            VLLM,
            "affinity-terms-not-a-list",
            {
                "scheduling": {
                    "affinity": {
                        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "gpu"}}
                    }
                }
            },
        ),
        "spec.scheduling.affinity",
        "affinity.nodeAffinity must be a core/v1 NodeAffinity",
    ),
    OperatorCase(
        "affinity-match-expressions-not-a-list",
        adapted(
            VLLM,
            "affinity-match-expressions-not-a-list",
            {
                "scheduling": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": {"key": "pool", "operator": "Exists"}}]
                            }
                        }
                    }
                }
            },
        ),
        "spec.scheduling.affinity",
        "affinity.nodeAffinity must be a core/v1 NodeAffinity",
    ),
    # Names the apiserver admits for a LlamaDeployment (a DNS subdomain) but not for its Service.
    OperatorCase("name-with-dots", adapted(VLLM, "llama.8b.chat"), "metadata.name", "'llama.8b.chat' contains dots"),
    OperatorCase("name-of-64-characters", adapted(VLLM, "llama-" + "x" * 58), "metadata.name", "has 64 characters"),
    OperatorCase(
        "name-starting-with-a-digit", adapted(VLLM, "8b-chat"), "metadata.name", "does not start with a letter"
    ),
)


def children(api_client: Any, namespace: str) -> list[str]:
    """`kind/name` of every object in the namespace of a kind the operator creates (a kind not served: none)."""
    found = []
    for api_version, plural in CHILD_KINDS:
        group, _, version = api_version.rpartition("/")
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        method, url, headers, _, _ = api_client.param_serialize(
            "GET", f"{path}/namespaces/{namespace}/{plural}", auth_settings=["BearerToken"]
        )
        response = api_client.call_api(method, url, header_params=headers)
        body = response.read().decode()
        if response.status == 404:
            continue
        assert response.status == 200, body
        items = yaml.safe_load(body)["items"]
        found += [f"{plural}/{item['metadata']['name']}" for item in items]
    return found


@pytest.fixture(scope="module")
def hostile_namespace(api_client: Any) -> Iterator[str]:
    name = create_namespace(api_client, "hostile")
    yield name
    kube_client.CoreV1Api(api_client).delete_namespace(name)


@pytest.fixture(scope="module")
def refused(api_client: Any, crd: None, operator: OperatorProcess, hostile_namespace: str) -> str:
    """Every operator case created at once (each admitted by the apiserver); the namespace."""
    for case in OPERATOR_CASES:
        create(api_client, hostile_namespace, case.manifest)
    return hostile_namespace


def invalid_spec_condition(api_client: Any, namespace: str, name: str, operator: OperatorProcess) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_ld(api_client, namespace, name)
        ready = condition(obj, "Ready")
        if ready and ready.get("observedGeneration") == obj["metadata"]["generation"]:
            return ready
        return None

    try:
        return poll_until(check, REFUSAL_SECONDS, f"{name}: a Ready condition of its generation")
    except pytest.fail.Exception:
        print(operator.log_tail())  # shown by pytest only when the test fails
        raise


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[case.id for case in OPERATOR_CASES])
def test_the_operator_refuses_with_invalid_spec_and_creates_nothing(
    api_client: Any, refused: str, operator: OperatorProcess, case: OperatorCase, ledger: Recorder
) -> None:
    ready = invalid_spec_condition(api_client, refused, case.name, operator)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), ready
    assert case.field in ready["message"], ready["message"]
    assert case.message in ready["message"], ready["message"]
    assert get_ld(api_client, refused, case.name)["status"]["phase"] == "Failed"
    assert children(api_client, refused) == []
    ledger.hostile(f"operator: {case.id}", f"InvalidSpec, nothing created: {ready['message']}")


def test_the_apiserver_refuses_an_alias_bomb_and_stays_healthy(
    api_client: Any, crd: None, hostile_namespace: str, ledger: Recorder
) -> None:
    bomb = alias_bomb(name="laughs")
    method, url, headers, body, _ = api_client.param_serialize(
        "POST",
        f"/apis/{GROUP}/{VERSION}/namespaces/{hostile_namespace}/{PLURAL}",
        header_params={"Content-Type": "application/yaml", "Accept": "application/json"},
        body=bomb,
        auth_settings=["BearerToken"],
    )
    started = time.monotonic()
    response = api_client.call_api(method, url, header_params=headers, body=body, _request_timeout=60)
    refused_in = time.monotonic() - started
    answer = response.read().decode()
    assert 400 <= response.status < 500, answer
    assert "excessive aliasing" in answer, answer  # refused for the aliases, before any schema was read
    assert refused_in < 10, f"refused after {refused_in:.1f} s"
    with pytest.raises(ApiException) as missing:
        get_ld(api_client, hostile_namespace, "laughs")
    assert missing.value.status == 404

    method, url, headers, _, _ = api_client.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
    ready = api_client.call_api(method, url, header_params=headers, _request_timeout=10)
    assert (ready.status, ready.read().decode()) == (200, "ok")
    started = time.monotonic()
    kube_client.CustomObjectsApi(api_client).list_namespaced_custom_object(GROUP, VERSION, hostile_namespace, PLURAL)
    assert time.monotonic() - started < 2, "the apiserver is slow after the bomb"
    message = yaml.safe_load(answer).get("message", answer)
    ledger.hostile("apiserver: YAML alias bomb", f"refused ({response.status}) in {refused_in:.2f} s: {message}")


@pytest.mark.parametrize("output", ["table", "json"])
def test_plan_refuses_an_alias_bomb_at_once(tmp_path: Path, output: str, ledger: Recorder) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(alias_bomb())
    command = [str(Path(sys.executable).with_name("llama-operator")), "plan", "-f", str(path), "-o", output]
    started = time.monotonic()
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert (ran.returncode, ran.stdout) == (2, ""), ran.stderr
    assert ran.stderr.count("\n") == 1, ran.stderr
    assert ran.stderr.startswith(f"error: {path}: line 10, column 18: YAML aliases (*l0) are not read"), ran.stderr
    assert elapsed < 10, f"exited after {elapsed:.1f} s"
    said = ran.stderr.strip().replace(str(tmp_path) + "/", "")  # the report names no machine path
    ledger.hostile("plan: YAML alias bomb", f"exit 2 in {elapsed:.2f} s (-o {output}): {said}")
