"""Building blocks of the vLLM tests' fixtures: a control plane whose `gpu-24gb-real` pool runs the
operator's vLLM pods as REAL `vllm serve` processes (conftest's `assets` and `plane` for modules marked
`pytest.mark.own_plane("vllm")`), and LlamaDeployments for it.

The pods run what the operator rendered, unmodified: the init container downloads the model with
`huggingface_hub.snapshot_download` from the operator's `hubEndpoint`, here a `LocalHub` on loopback
that serves the tiny generated Llama under the example's repository id (`meta-llama/Llama-3.1-8B-Instruct`)
and the PEFT adapters `org/support-v1`, `org/support-v2` and the broken `org/support-v3`; then
`vllm serve /models/model ...` starts with the example's sizing flags. The pool's "image" is the vLLM
runtime venv (`hack/build-vllm-runtime.sh`): its `bin/` comes first on the pods' PATH, so `vllm` and
`python3` (with huggingface_hub) are the runtime's. What the CPU backend needs on top is in the test
manifests (`spec.engine.extraArgs` and `env`), as a user would write it, not in the renderer.

Modules marked `own_plane("vllm-standin")` get the same pool and hub with `vllm` mapped to the vLLM
stand-in (tests/standins/vllm_openai.py), for the one fault real vLLM cannot be made to show.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.prometheus import Prometheus
from llama_operator_dev.real_pools import on_cpu_vllm, on_process_backed_pool
from llama_operator_dev.tiny_hf_models import TinyHfModelSet, write_tiny_hf_model_set
from llama_operator_dev.vllm_runtime import VLLM_RUNTIME_BUILD_SCRIPT, vllm_python
from tests.integration.cluster_setup import skip_without_binaries
from tests.integration.serving_fixtures import GROUP, PROBE_PERIOD_SECONDS, VERSION

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
POOLS_FILE = Path(__file__).with_name("pools-with-gpu-processes.yaml")
EXAMPLE = REPOSITORY_ROOT / "manifests" / "examples" / "llama-3.1-8b-vllm-24gb.yaml"
VLLM_PORT = 8000
GPU_POOL = "gpu-24gb-real"
STANDIN_WRAPPER = REPOSITORY_ROOT / "tests" / "standins" / "vllm"
ADAPTER_REPOS = {"v1": "org/support-v1", "v2": "org/support-v2", "v3": "org/support-v3"}  # v3: broken
# A pod start: the model download, then vLLM's start (30-60 s on 2 busy cores).
POD_READY_SECONDS = 240


@dataclass(frozen=True)
class VllmAssets:
    """The vLLM runtime the pods run, the tiny model set, and the hub that serves it."""

    runtime_bin: Path  # the runtime venv's bin/: vllm, python3
    models: TinyHfModelSet
    hub: LocalHub

    def node_env(self) -> dict[str, str]:
        """What the pool's nodes add to every pod process: the runtime first on PATH (the image's tools)."""
        return {"PATH": f"{self.runtime_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def standin_env(self) -> dict[str, str]:
        """For stand-in pods: hub adapters resolve in the hub's folder (vLLM would download them)."""
        return {**self.node_env(), "STANDIN_HUB_DIR": str(self.hub.root), "PYTHON": sys.executable}


def make_vllm_assets(root: Path) -> VllmAssets:
    """Skip when this machine lacks the control-plane binaries or the vLLM runtime; write the models."""
    skip_without_binaries()
    python = vllm_python()
    if python is None:
        pytest.skip(f"the vLLM runtime is not built: run {VLLM_RUNTIME_BUILD_SCRIPT} (or make vllmruntime)")
    models = write_tiny_hf_model_set(root / "models")
    hub = LocalHub(root / "hub")
    hub.publish("meta-llama/Llama-3.1-8B-Instruct", models.model_dir)
    hub.publish(ADAPTER_REPOS["v1"], models.lora_v1)
    hub.publish(ADAPTER_REPOS["v2"], models.lora_v2)
    hub.publish(ADAPTER_REPOS["v3"], models.lora_broken)
    return VllmAssets(python.parent, models, hub)


@contextmanager
def vllm_control_plane(assets: VllmAssets, workdir: Path, *, standin: bool = False) -> Iterator[ControlPlane]:
    """A control plane of its own with the process-backed GPU pool, the hub and Prometheus.

    ``standin``: `vllm` is the stand-in (the model still downloads from the hub, as rendered).
    """
    if not Prometheus.available():
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus)")
    config = (
        ProcessBackedConfig(path_map={"vllm": STANDIN_WRAPPER}, extra_env=assets.standin_env(),
                            max_probe_period_seconds=PROBE_PERIOD_SECONDS)
        if standin
        else ProcessBackedConfig(path_map={}, extra_env=assets.node_env(), max_probe_period_seconds=1.0)
    )  # fmt: skip
    plane = ControlPlane(workdir, POOLS_FILE, process_backed=config, prometheus=not standin)
    assets.hub.start()
    try:
        plane.start()
        try:
            yield plane
        finally:
            plane.stop()
    finally:
        assets.hub.stop()


def vllm_llama_deployment(
    name: str, *, adapters: list[dict[str, Any]], replicas: int, tool_calling: bool = False
) -> dict[str, Any]:
    """The vLLM example (Llama 3.1 8B on one 24 GB GPU) as a user would adapt it to this pool: its
    pods select the process-backed GPU nodes, the CPU backend's settings go in `extraArgs`/`env`,
    and the context is shortened to 4096 (the tiny model knows 8192 positions; 4096 keeps the KV small).

    ``adapters``: e.g. ``[support_adapter("v1")]``.
    """
    # The same adaptation the demo makes: CPU flags and env, no hub token, the process-backed nodes.
    manifest = on_process_backed_pool(on_cpu_vllm(yaml.safe_load(EXAMPLE.read_text())))
    manifest["metadata"] = {"name": name}
    spec = manifest["spec"]
    spec["replicas"] = replicas
    spec["model"]["contextLength"] = 4096
    spec["serving"]["toolCalling"] = tool_calling
    if adapters:
        spec["adapters"] = adapters
    assert manifest["apiVersion"] == f"{GROUP}/{VERSION}"
    return manifest


def support_adapter(version: str) -> dict[str, str]:
    """The `support` adapter at ``version`` (v1, v2, or the broken v3), from the hub."""
    return {"name": "support", "source": f"hf://{ADAPTER_REPOS[version]}", "version": version}


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
