"""The operator's wheel (what the image installs) holds the operator only; the dev harness is its own wheel.

Both wheels are built offline with this environment's setuptools (pinned in requirements.lock) from a
copy of the sources, so no `build/` folder is left in the working tree.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_MODULES = {"cli.py", "handlers.py", "kube.py", "reconcile.py", "render.py", "adapters/drive.py"}
DEV_MODULES = {"controlplane.py", "process_kubelet.py", "prometheus.py", "tiny_models.py", "cli.py"}
DEV_DATA = {"pools.yaml", "kwok-stages.yaml"}
HARNESS_ONLY_REQUIREMENTS = {"gguf", "numpy"}


@dataclass(frozen=True)
class Wheel:
    files: list[str]
    metadata: email.message.Message
    entry_points: str

    @classmethod
    def read(cls, path: Path) -> Wheel:
        with zipfile.ZipFile(path) as archive:
            files = archive.namelist()
            info = next(name.rsplit("/", 1)[0] for name in files if name.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
            entry_points = (
                archive.read(f"{info}/entry_points.txt").decode() if f"{info}/entry_points.txt" in files else ""
            )
        return cls(files, metadata, entry_points)

    def requirement_names(self) -> set[str]:
        names = set()
        for requirement in self.metadata.get_all("Requires-Dist") or []:
            name = requirement.split(";")[0].strip()
            for separator in "<>=!~[ (":
                name = name.split(separator)[0]
            names.add(name.lower().replace("_", "-"))
        return names


def build_wheel(project: Path, out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(out), str(project)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two projects' files as a clean clone has them: both pyproject files and operator/ (both packages)."""
    copy = tmp_path_factory.mktemp("sources")
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "dev").mkdir()
    shutil.copy2(ROOT / "dev" / "pyproject.toml", copy / "dev" / "pyproject.toml")
    shutil.copytree(ROOT / "operator", copy / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert (copy / "operator" / "llama_operator_dev" / "controlplane.py").is_file(), "the harness sits beside"
    return copy


@pytest.fixture(scope="module")
def operator_wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    return Wheel.read(build_wheel(sources, tmp_path_factory.mktemp("operator-wheel")))


@pytest.fixture(scope="module")
def dev_wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    return Wheel.read(build_wheel(sources / "dev", tmp_path_factory.mktemp("dev-wheel")))


def test_the_operator_wheel_holds_the_operator_and_nothing_of_the_dev_harness(operator_wheel: Wheel) -> None:
    packages = {name.split("/")[0] for name in operator_wheel.files if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"llama_operator"}
    modules = {name.removeprefix("llama_operator/") for name in operator_wheel.files}
    assert modules >= OPERATOR_MODULES | {"py.typed"}
    assert not [name for name in operator_wheel.files if "devcluster" in name or "llama_operator_dev" in name]
    assert not [name for name in operator_wheel.files if name.endswith(".yaml")], "no harness data (pools, KWOK stages)"


def test_the_operator_wheel_needs_none_of_the_harness_dependencies(operator_wheel: Wheel) -> None:
    assert operator_wheel.metadata["Name"] == "llama-operator"
    requirements = operator_wheel.requirement_names()
    assert {"kopf", "kubernetes", "httpx"} <= requirements
    assert not requirements & HARNESS_ONLY_REQUIREMENTS
    assert "llama-operator = llama_operator.cli:main" in operator_wheel.entry_points
    assert "llama-operator-dev" not in operator_wheel.entry_points


def test_the_dev_wheel_holds_the_harness_its_data_and_its_command(dev_wheel: Wheel) -> None:
    assert dev_wheel.metadata["Name"] == "llama-operator-dev"
    packages = {name.split("/")[0] for name in dev_wheel.files if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"llama_operator_dev"}
    modules = {name.removeprefix("llama_operator_dev/") for name in dev_wheel.files}
    assert modules >= DEV_MODULES | DEV_DATA
    assert {"llama-operator", *HARNESS_ONLY_REQUIREMENTS} <= dev_wheel.requirement_names()
    assert "llama-operator-dev = llama_operator_dev.cli:main" in dev_wheel.entry_points
