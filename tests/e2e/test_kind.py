"""The kind end to end (e2e/kind/run.sh): a real image, the chart, and a real model answering on CPU llama.cpp.

It needs a Docker engine and kind, and skips saying so where either is missing. The checks of its
inputs below run everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_operator.operator_config import OperatorConfig
from llama_operator.plan_output import load_documents, plan_manifest

ROOT = Path(__file__).resolve().parents[2]
KIND_DIR = ROOT / "e2e" / "kind"
MANIFEST = KIND_DIR / "llama-3.2-1b-cpu.yaml"
RUN_TIMEOUT_SECONDS = 45 * 60
# run.sh refuses a Docker engine with fewer CPUs; the model's pod must fit in it.
ENGINE_CPUS = 4
ENGINE_MEMORY_MIB = 4096


def missing_prerequisite() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        last_line = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the Docker engine is not reachable (`docker info`: {last_line})"
    if shutil.which("kind") is None:
        return "kind is not installed"
    return None


def test_kind_serves_a_chat_completion_from_a_real_model(tmp_path: Path) -> None:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(f"kind e2e needs a Docker engine and kind: {reason}")
    log = tmp_path / "run.log"
    with log.open("w") as output:
        result = subprocess.run(
            ["bash", str(KIND_DIR / "run.sh")],
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "KIND_CLUSTER": f"llama-operator-e2e-{os.getpid()}"},
        )
    text = log.read_text(errors="replace")
    assert result.returncode == 0, text[-6000:]
    assert "] reply: " in text
    assert "] passed" in text


def planned() -> dict[str, Any]:
    (document,) = load_documents(MANIFEST.read_text())
    config = OperatorConfig()
    output: dict[str, Any] = plan_manifest(document, config.default_inventory(), config).output
    return output


def test_the_e2e_model_plans_a_cpu_llamacpp_replica_that_fits_the_kind_node() -> None:
    output = planned()
    assert output["sizing"]["fits"] is True
    assert output["sizing"]["engine"] == "llamacpp"
    assert output["sizing"]["gpusPerReplica"] == 0
    (deployment,) = [c for c in output["children"] if c["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (engine,) = pod["containers"]
    requests = engine["resources"]["requests"]
    assert float(requests["cpu"]) <= ENGINE_CPUS
    assert int(requests["memory"].removesuffix("Mi")) <= ENGINE_MEMORY_MIB // 2
    assert "nvidia.com/gpu" not in requests
    assert ":server-" in engine["image"]
    assert "cuda" not in engine["image"]
    fetch = " ".join(str(part) for c in pod["initContainers"] for part in c.get("command", []) + c.get("args", []))
    assert "bartowski/Llama-3.2-1B-Instruct-GGUF" in fetch


def test_the_kind_cluster_and_the_script_agree() -> None:
    cluster = yaml.safe_load((KIND_DIR / "cluster.yaml").read_text())
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cluster["networking"]["apiServerAddress"] == "127.0.0.1"
    script = (KIND_DIR / "run.sh").read_text()
    assert f"cpus >= {ENGINE_CPUS}" in script
    name = yaml.safe_load(MANIFEST.read_text())["metadata"]["name"]
    assert f"name={name}\n" in script
    assert "--address 127.0.0.1" in script
