"""Building blocks of the serving tests' fixtures: a control plane whose process-backed pool runs
the operator's llama.cpp pods as real llama-server processes, with a real Prometheus scraping them
(conftest's `assets` and `plane` for modules marked `pytest.mark.own_plane("llamacpp")`), and
LlamaDeployments for it.

The llama-server binary comes from `hack/build-llama-server.sh` (built here when the cache lacks
it; the tests skip only when this machine cannot build it) and is the pods' `/app/llama-server`. The
model and adapters come from `tiny_models` (written into a temp folder) and are published on a
`LocalHub`, the operator's `hubEndpoint`: the rendered init containers download them with curl into
the pod's `/models/<file>.gguf` and `/adapters/<name>/<version>.gguf`, as they would from the Hub.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from llama_operator_dev.binaries import REPOSITORY_ROOT, expected_bin_dir, missing_binaries
from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.prometheus import Prometheus
from llama_operator_dev.tiny_models import (
    LLAMA_SERVER_BUILD_SCRIPT,
    TinyModelSet,
    find_vocab_file,
    llama_server_install_dir,
    write_tiny_model_set,
)
from tests.integration.cluster_setup import poll_until
from tests.integration.operator_process import OperatorProcess

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
LLAMA_SERVER_IN_POD = "/app/llama-server"
MODEL_REPO, ADAPTER_REPO = "llama-operator/tiny-gguf", "llama-operator/tiny-lora-gguf"
ADAPTER_NAME, ADAPTER_VERSION = "tiny-lora", "v1"
BUILD_TIMEOUT_SECONDS = 40 * 60
# Probe the pods at least this often: the rendered periods (10 s startup) are for multi-minute
# model loads; the tiny model loads in well under a second, and a short period catches its 503s.
PROBE_PERIOD_SECONDS = 0.05


@dataclass(frozen=True)
class ServingAssets:
    """The built llama-server, the generated model files, and the hub that serves them."""

    llama_server: Path
    models: TinyModelSet
    hub: LocalHub

    def path_map(self) -> dict[str, Path]:
        return {LLAMA_SERVER_IN_POD: self.llama_server}

    def model_source(self) -> str:
        return f"hf://{MODEL_REPO}/{self.models.model.path.name}"

    def adapter_source(self, version: str) -> str:
        """The hub source of the adapter at ``version``: v1, v2, or v3 (parses as GGUF, llama-server refuses it)."""
        files = {"v1": self.models.lora_v1, "v2": self.models.lora_v2, "v3": self.models.lora_broken}
        return f"hf://{ADAPTER_REPO}/{files[version].name}"


def built_llama_server() -> Path:
    """The pinned llama-server, built now if the cache lacks it (minutes, once per machine)."""
    binary = llama_server_install_dir() / "bin" / "llama-server"
    if binary.is_file():
        return binary
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot build llama-server here: {', '.join(missing)} not on PATH")
    result = subprocess.run(
        ["bash", str(REPOSITORY_ROOT / LLAMA_SERVER_BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{LLAMA_SERVER_BUILD_SCRIPT} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return binary


def make_serving_assets(root: Path) -> ServingAssets:
    """Skip when this machine lacks the control-plane binaries or Prometheus; build llama-server if needed."""
    bin_dir = expected_bin_dir()
    if missing_binaries(bin_dir):
        pytest.skip(f"control-plane binaries not built in {bin_dir}; run hack/build-controlplane.sh")
    if not Prometheus.available():
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus)")
    binary = built_llama_server()
    models = write_tiny_model_set(root / "generated", find_vocab_file(install_dir=binary.parents[1]))
    hub = LocalHub(root / "hub")
    hub.publish(MODEL_REPO, models.model.path)
    for lora in (models.lora_v1, models.lora_v2, models.lora_broken):
        hub.publish(ADAPTER_REPO, lora)
    return ServingAssets(binary, models, hub)


@contextmanager
def serving_control_plane(assets: ServingAssets, workdir: Path, *, keda: bool = False) -> Iterator[ControlPlane]:
    """A control plane of its own: the process-backed kubelet, Prometheus (scraping every second) and the hub
    (and the real KEDA with ``keda=True``)."""
    config = ProcessBackedConfig(path_map=assets.path_map(), max_probe_period_seconds=PROBE_PERIOD_SECONDS)
    plane = ControlPlane(workdir, process_backed=config, prometheus=True, keda=keda)
    with assets.hub:
        plane.start()
        try:
            yield plane
        finally:
            plane.stop()


def tiny_llama_deployment(
    name: str, assets: ServingAssets, *, adapters: bool, extra_args: list[str], max_sequences: int = 1
) -> dict[str, Any]:
    """The CPU llama.cpp example (manifests/examples/llama-3.2-3b-gguf-cpu.yaml) for the tiny model.

    The tiny model is not in the catalog, so its architecture facts are in the spec; the pods
    select (and tolerate) the process-backed pool, where they run for real.
    """
    facts = assets.models.model
    parameters = facts.vocab_size * facts.embedding_length + facts.block_count * (
        4 * facts.embedding_length * facts.embedding_length + 3 * facts.embedding_length * facts.feed_forward_length
    )
    spec: dict[str, Any] = {
        "model": {
            "architecture": {
                "layers": facts.block_count,
                "hiddenSize": facts.embedding_length,
                "attentionHeads": facts.head_count,
                "kvHeads": facts.head_count_kv,
                "intermediateSize": facts.feed_forward_length,
                "vocabSize": facts.vocab_size,
                "maxContextLength": facts.context_length,
                "parametersBillions": round(parameters / 1e9, 6),
                "tiedEmbeddings": True,
            },
            "source": assets.model_source(),
            "format": "gguf",
            "quantization": "f16",
            "contextLength": 1024,
        },
        "engine": {"type": "llamacpp", "extraArgs": extra_args},
        "placement": {"cpuOnly": True},
        "serving": {"maxConcurrentSequences": max_sequences},
        "scheduling": {
            "nodeSelector": {PROCESS_BACKED_LABEL: "true"},
            "tolerations": [{"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    if adapters:
        spec["adapters"] = [
            {
                "name": ADAPTER_NAME,
                "source": assets.adapter_source(ADAPTER_VERSION),
                "version": ADAPTER_VERSION,
            }
        ]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LlamaDeployment", "metadata": {"name": name}, "spec": spec}


def get_llamadeployment(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def condition_of(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The object's condition of type ``kind`` ({} when it has none)."""
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def long_chat(model: str) -> Callable[[], dict[str, Any]]:
    """A request body maker for ``Load``: a chat that keeps a slot busy for a while."""
    return lambda: {"model": model, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 48}


def wait_adapter_rollout(
    api_client: Any,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    *,
    what: str,
    operator: OperatorProcess,
    timeout_seconds: float = 120,
) -> dict[str, Any]:
    """`status.adapterRollout` once `check` holds; the operator's log is printed when it never does."""

    def probe() -> dict[str, Any] | None:
        rollout = (get_llamadeployment(api_client, namespace, name).get("status") or {}).get("adapterRollout") or {}
        return rollout if check(rollout) else None

    try:
        return poll_until(probe, timeout_seconds, what, interval_seconds=0.05)
    except pytest.fail.Exception:
        print(operator.log_tail())  # shown by pytest only when the test fails
        raise
