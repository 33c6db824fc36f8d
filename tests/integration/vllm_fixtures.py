"""Building blocks of the vLLM tests' fixtures: a control plane whose `gpu-24gb-real` pool runs the
operator's vLLM pods as the vLLM stand-in (tests/standins/vllm_openai.py; conftest's `assets` and
`plane` for modules marked `pytest.mark.own_plane("vllm")`), and LlamaDeployments for it.

vLLM needs a GPU; the stand-in follows vLLM's documented HTTP contract instead. Pods of the
process-backed GPU pool (tests/integration/pools-with-gpu-processes.yaml) run `vllm serve ...` as
rendered, with `vllm` mapped to the stand-in's wrapper script and `/models/model` to a local
folder. Hub adapters (`hf://org/support-v1` -> lora_path `org/support-v1`) resolve under
`STANDIN_HUB_DIR`, where `make_vllm_assets` writes `org/support-v1`, `org/support-v2` (different
weights) and `org/support-v3` (broken: vLLM's 400 on load).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.prometheus import Prometheus
from tests.integration.cluster_setup import skip_without_binaries
from tests.integration.serving_fixtures import GROUP, PROBE_PERIOD_SECONDS, VERSION

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
POOLS_FILE = Path(__file__).with_name("pools-with-gpu-processes.yaml")
VLLM_WRAPPER = REPOSITORY_ROOT / "tests" / "standins" / "vllm"
VLLM_COMMAND_IN_POD = "vllm"
MODEL_IN_POD = "/models/model"  # where the operator puts a non-GGUF hub model for vLLM
VLLM_PORT = 8000
GPU_POOL = "gpu-24gb-real"
# org/<repo> -> the adapter's weights; v3 is what vLLM refuses to load (400).
HUB_ADAPTERS = {
    "org/support-v1": b"support adapter, version 1",
    "org/support-v2": b"support adapter, version 2",
    "org/support-v3": b"BROKEN support adapter, version 3",
}


@dataclass(frozen=True)
class VllmAssets:
    """What the stand-in pods see: the model folder and the hub of adapters."""

    model_dir: Path  # the pod's /models/model
    hub_dir: Path  # STANDIN_HUB_DIR: org/support-v1, org/support-v2, org/support-v3 (PEFT folders)

    def path_map(self) -> dict[str, Path]:
        return {VLLM_COMMAND_IN_POD: VLLM_WRAPPER, MODEL_IN_POD: self.model_dir}

    def pod_env(self, delay_seconds: float) -> dict[str, str]:
        """The env the process-backed kubelet adds to every pod process (the pod's own env wins)."""
        return {
            "STANDIN_HUB_DIR": str(self.hub_dir),
            "STANDIN_DELAY_SECONDS": str(delay_seconds),
            "PYTHON": sys.executable,
        }


def write_hub_adapter(hub_dir: Path, repo: str, weights: bytes) -> Path:
    """A PEFT adapter folder ``hub_dir/<org>/<repo>`` (config and weights), as the hub would serve it."""
    folder = hub_dir / repo
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "lora_alpha": 16}\n')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def make_vllm_assets(root: Path) -> VllmAssets:
    """Skip when this machine lacks the control-plane binaries; write the model folder and the hub."""
    skip_without_binaries()
    model_dir, hub_dir = root / "model", root / "hub"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    for repo, weights in HUB_ADAPTERS.items():
        write_hub_adapter(hub_dir, repo, weights)
    return VllmAssets(model_dir, hub_dir)


@contextmanager
def vllm_control_plane(
    assets: VllmAssets, workdir: Path, *, prometheus: bool = False, delay_seconds: float = 0.05
) -> Iterator[ControlPlane]:
    """A control plane of its own with the process-backed GPU pool (and Prometheus, if asked).

    ``delay_seconds``: how long each chat completion stays in flight in the stand-in.
    """
    if prometheus and not Prometheus.available():
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus)")
    config = ProcessBackedConfig(
        path_map=assets.path_map(),
        extra_env=assets.pod_env(delay_seconds),
        max_probe_period_seconds=PROBE_PERIOD_SECONDS,
    )
    plane = ControlPlane(workdir, POOLS_FILE, process_backed=config, prometheus=prometheus)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def vllm_llama_deployment(name: str, *, adapters: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    """Llama 3.1 8B on vLLM for gpu-24gb, sent to the process-backed GPU pool.

    ``adapters``: hub adapters, e.g. ``{"name": "support", "source": "hf://org/support-v1", "version": "v1"}``.
    """
    spec: dict[str, Any] = {
        "replicas": replicas,
        "model": {
            "catalogName": "llama-3.1-8b",
            "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
            "contextLength": 4096,
        },
        "engine": {"type": "vllm"},
        "placement": {"gpuClass": "gpu-24gb"},
        "serving": {"maxConcurrentSequences": 2},
        "scheduling": {
            "nodeSelector": {PROCESS_BACKED_LABEL: "true"},
            "tolerations": [{"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    if adapters:
        spec["adapters"] = adapters
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LlamaDeployment", "metadata": {"name": name}, "spec": spec}


def vllm_pod_urls(api_client: Any, namespace: str, name: str) -> dict[str, str]:
    """Pod name -> ``http://<pod IP>:8000`` for the running, not terminating pods of a LlamaDeployment."""
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={name}"
    )
    return {
        pod.metadata.name: f"http://{pod.status.pod_ip}:{VLLM_PORT}"
        for pod in pods.items
        if pod.metadata.deletion_timestamp is None and pod.status.phase == "Running" and pod.status.pod_ip
    }
