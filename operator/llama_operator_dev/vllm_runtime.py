"""Where the real vLLM for CPU lives: a venv per vLLM version, built by ``hack/build-vllm-runtime.sh``.

The version is the one the default vLLM image carries (``VLLM_VERSION`` in
``llama_operator.engines.base``); the packages are pinned by ``hack/vllm-runtime.lock``. The venv
is built into ``$LLAMA_OPERATOR_CACHE/vllm/<version>/`` (``~/.cache/llama-operator`` by default)
and is complete once its ``BUILD-INFO`` is written (the script renames the whole folder into
place at the end).
"""

from __future__ import annotations

from pathlib import Path

from llama_operator.engines.base import VLLM_VERSION
from llama_operator_dev.binaries import cache_root

VLLM_RUNTIME_BUILD_SCRIPT = "hack/build-vllm-runtime.sh"


def vllm_runtime_dir(version: str = VLLM_VERSION) -> Path:
    """The venv folder the build script fills for ``version``, built or not."""
    return cache_root() / "vllm" / version


def vllm_python(version: str = VLLM_VERSION) -> Path | None:
    """The built venv's interpreter (``import vllm`` works there), or None when it is not built."""
    venv = vllm_runtime_dir(version)
    python = venv / "bin" / "python"
    if not (venv / "BUILD-INFO").is_file() or not python.exists():
        return None
    return python
