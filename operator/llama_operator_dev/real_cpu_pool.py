"""`llama-operator-dev` with a real CPU pool: the CPU examples run as llama-server processes.

When the pinned llama-server is built (``hack/build-llama-server.sh``), ``real_cpu_pool`` writes
the tiny generated model and returns the process-backed kubelet's config: every GGUF file an
example names (``/models/<file>.gguf``) maps to the tiny model, ``/app/llama-server`` to the
binary. ``on_real_cpu_pool`` sends a CPU-only example to that pool (node selector and toleration).
Without the binary (or the ``gguf`` package that writes the model) it says why and returns None:
the examples then run on KWOK's fake nodes as before.
"""

from __future__ import annotations

import copy
import logging
import posixpath
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from llama_operator_dev.pools import PROCESS_BACKED_LABEL
from llama_operator_dev.process_kubelet import ProcessBackedConfig

LOGGER = logging.getLogger(__name__)

Manifest = dict[str, Any]
LLAMA_SERVER_IN_POD = "/app/llama-server"
MODELS_IN_POD = "/models"


def gguf_files(manifests: Iterable[Manifest]) -> list[str]:
    """The file names the operator renders as ``/models/<file>`` for the GGUF models of ``manifests``."""
    names = set()
    for manifest in manifests:
        model = (manifest.get("spec") or {}).get("model") or {}
        source = str(model.get("source", ""))
        if model.get("format") == "gguf" and not source.startswith("pvc://"):
            names.add(posixpath.basename(source.rstrip("/")))
    return sorted(names)


def example_manifests(examples_dir: Path) -> list[Manifest]:
    return [m for path in sorted(examples_dir.glob("*.yaml")) for m in yaml.safe_load_all(path.read_text()) if m]


def real_cpu_pool(workdir: Path, examples_dir: Path, say: Callable[[str], None]) -> ProcessBackedConfig | None:
    """The process-backed pool's config for ``llama-operator-dev``, or None (and a line saying why) when it cannot run."""
    try:
        from llama_operator_dev import tiny_models  # noqa: PLC0415 - needs gguf and numpy, optional here
    except ImportError as error:
        say(f"CPU examples stay on fake nodes: the tiny model cannot be written ({error})")
        return None
    binary = tiny_models.llama_server_install_dir() / "bin" / "llama-server"
    if not binary.is_file():
        say(f"CPU examples stay on fake nodes: llama-server is not built; run {tiny_models.LLAMA_SERVER_BUILD_SCRIPT}")
        return None
    vocab = tiny_models.find_vocab_file(install_dir=binary.parents[1])
    models_dir = workdir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_models.write_tiny_model(models_dir / f"{tiny_models.TINY_MODEL_NAME}.gguf", vocab)
    path_map = {LLAMA_SERVER_IN_POD: binary}
    for name in gguf_files(example_manifests(examples_dir)):
        path_map[posixpath.join(MODELS_IN_POD, name)] = model.path
    say(f"CPU examples run as real llama-server processes ({binary}) on the tiny model {model.path}")
    return ProcessBackedConfig(path_map=path_map)


def on_real_cpu_pool(manifest: Manifest) -> Manifest:
    """A CPU-only LlamaDeployment sent to the process-backed pool; any other manifest unchanged."""
    spec = manifest.get("spec") or {}
    if not (spec.get("placement") or {}).get("cpuOnly"):
        return manifest
    moved = copy.deepcopy(manifest)
    scheduling = moved["spec"].setdefault("scheduling", {})
    scheduling.setdefault("nodeSelector", {})[PROCESS_BACKED_LABEL] = "true"
    toleration = {"key": PROCESS_BACKED_LABEL, "operator": "Exists", "effect": "NoSchedule"}
    scheduling["tolerations"] = [*scheduling.get("tolerations", []), toleration]
    return moved
