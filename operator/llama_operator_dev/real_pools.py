"""`llama-operator-dev` with real pools: CPU examples run as llama-server processes and, when the vLLM
runtime is built, one vLLM example runs as a real `vllm serve` process.

The pods run what the operator rendered. Their init containers download the model from a `LocalHub`
on loopback, which the operator is configured with as its `hubEndpoint`: the hub serves the tiny
generated GGUF model under every GGUF example's `hf://` source, and (with the vLLM runtime) the tiny
HF-format Llama under the repository of the vLLM example that fits one 24 GB GPU. `/app/llama-server`
maps to the built binary; the vLLM runtime's `bin/` comes first on the pods' PATH (`vllm`, and
`python3` with huggingface_hub for the checkpoint download), as the vLLM image would provide them.

`place` sends a CPU-only example to the process-backed CPU pool (`cpu-real`) and the vLLM 24 GB
example to the process-backed GPU pool (`gpu-24gb-real`) with what the CPU backend needs in its
`extraArgs`/`env`, as a user would write them. Without llama-server (or the `gguf` package) it says
why and the examples run on KWOK's fake nodes as before; without the vLLM runtime, vLLM examples do.
"""

from __future__ import annotations

import copy
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.vllm_runtime import vllm_python

LOGGER = logging.getLogger(__name__)

Manifest = dict[str, Any]
LLAMA_SERVER_IN_POD = "/app/llama-server"
REAL_GPU_POOL_CLASS = "gpu-24gb"  # the vLLM example of this class runs for real
# vLLM on CPU: the KV cache sized explicitly (else a share of host RAM), one process instead of three,
# threads left to the OS.
VLLM_CPU_EXTRA_ARGS = ("--kv-cache-memory-bytes", str(64 * 1024 * 1024), "--distributed-executor-backend", "uni")
VLLM_CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def hub_file(source: str) -> tuple[str, str] | None:
    """``hf://org/repo/dir/file.gguf`` -> (``org/repo``, ``dir/file.gguf``); None for other sources."""
    if not source.startswith("hf://"):
        return None
    parts = source.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 3:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def gguf_sources(manifests: Iterable[Manifest]) -> list[tuple[str, str]]:
    """(repo, path in repo) of every hub GGUF model the examples name."""
    found = set()
    for manifest in manifests:
        model = (manifest.get("spec") or {}).get("model") or {}
        located = hub_file(str(model.get("source", "")))
        if model.get("format") == "gguf" and located is not None:
            found.add(located)
    return sorted(found)


def runs_on_real_gpu_pool(manifest: Manifest) -> bool:
    """The vLLM example that plans one 24 GB GPU: it runs for real when the vLLM runtime is built."""
    spec = manifest.get("spec") or {}
    return (spec.get("engine") or {}).get("type") == "vllm" and (spec.get("placement") or {}).get(
        "gpuClass"
    ) == REAL_GPU_POOL_CLASS


def example_manifests(examples_dir: Path) -> list[Manifest]:
    return [m for path in sorted(examples_dir.glob("*.yaml")) for m in yaml.safe_load_all(path.read_text()) if m]


def on_process_backed_pool(manifest: Manifest) -> Manifest:
    """A copy of ``manifest`` whose pods select (and tolerate) the process-backed nodes."""
    moved = copy.deepcopy(manifest)
    scheduling = moved["spec"].setdefault("scheduling", {})
    scheduling.setdefault("nodeSelector", {})[PROCESS_BACKED_LABEL] = "true"
    toleration = {"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}
    scheduling["tolerations"] = [*scheduling.get("tolerations", []), toleration]
    return moved


def on_cpu_vllm(manifest: Manifest) -> Manifest:
    """A vLLM manifest as a user would adapt it to run on CPU: the CPU backend's flags and env added,
    the hub token dropped (the local hub needs none)."""
    adapted = copy.deepcopy(manifest)
    spec = adapted["spec"]
    spec.pop("hubTokenSecretRef", None)
    engine = spec.setdefault("engine", {})
    engine["extraArgs"] = [*engine.get("extraArgs", []), *VLLM_CPU_EXTRA_ARGS]
    env = {e["name"]: e["value"] for e in engine.get("env", [])}
    engine["env"] = [{"name": k, "value": v} for k, v in sorted({**VLLM_CPU_ENV, **env}.items())]
    return adapted


@dataclass(frozen=True)
class RealPools:
    """The process-backed kubelet's config, the hub its pods download from, and what runs for real."""

    config: ProcessBackedConfig
    hub: LocalHub
    vllm: bool  # the vLLM 24 GB example runs as a real vLLM process

    def place(self, manifest: Manifest) -> Manifest:
        """The manifest as the demo applies it: moved to a process-backed pool when it runs for real there."""
        spec = manifest.get("spec") or {}
        if (spec.get("placement") or {}).get("cpuOnly"):
            return on_process_backed_pool(manifest)
        if self.vllm and runs_on_real_gpu_pool(manifest):
            return on_process_backed_pool(on_cpu_vllm(manifest))
        return manifest


def real_pools(workdir: Path, examples_dir: Path, say: Callable[[str], None]) -> RealPools | None:
    """The real pools for ``llama-operator-dev``, or None (and a line saying why) when none can run."""
    try:
        from llama_operator_dev import tiny_models  # noqa: PLC0415 - needs gguf and numpy, optional here
    except ImportError as error:
        say(f"examples stay on fake nodes: the tiny model cannot be written ({error})")
        return None
    binary = tiny_models.llama_server_install_dir() / "bin" / "llama-server"
    if not binary.is_file():
        say(f"examples stay on fake nodes: llama-server is not built; run {tiny_models.LLAMA_SERVER_BUILD_SCRIPT}")
        return None
    examples = example_manifests(examples_dir)
    hub = LocalHub(workdir / "hub")
    models_dir = workdir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_models.find_vocab_file(install_dir=binary.parents[1])
    model = tiny_models.write_tiny_model(models_dir / f"{tiny_models.TINY_MODEL_NAME}.gguf", vocab)
    for repo, path_in_repo in gguf_sources(examples):
        named = models_dir / "gguf" / repo / path_in_repo  # the tiny model under the example's file name
        named.parent.mkdir(parents=True, exist_ok=True)
        named.unlink(missing_ok=True)
        os.link(model.path, named)
        hub.publish(repo, named, path_in_repo=posixpath.dirname(path_in_repo))
    say(f"CPU examples run as real llama-server processes ({binary}) on the tiny model {model.path}")
    env: dict[str, str] = {}
    python = vllm_python()
    vllm = python is not None and any(runs_on_real_gpu_pool(m) for m in examples)
    if python is None:
        say("vLLM examples stay on fake nodes: the vLLM runtime is not built (make vllmruntime)")
    elif vllm:
        from llama_operator_dev.tiny_hf_models import write_tiny_hf_model_set  # noqa: PLC0415 - needs the runtime

        hf_models = write_tiny_hf_model_set(models_dir / "hf")
        for manifest in examples:
            if runs_on_real_gpu_pool(manifest):
                source = str(manifest["spec"]["model"]["source"])
                hub.publish(source.removeprefix("hf://").strip("/"), hf_models.model_dir)
        env["PATH"] = f"{python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        say(f"the vLLM {REAL_GPU_POOL_CLASS} example runs as a real vLLM process ({python.parent / 'vllm'})")
    return RealPools(ProcessBackedConfig(path_map={LLAMA_SERVER_IN_POD: binary}, extra_env=env), hub, vllm)
