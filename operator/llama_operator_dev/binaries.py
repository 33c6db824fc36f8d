"""Where the control-plane binaries live: one cache folder per set of pinned versions.

The versions are pinned once, in ``hack/controlplane-versions.env``, which the build script
``hack/build-controlplane.sh`` reads too. The binaries are built into
``$LLAMA_OPERATOR_CACHE/bin/<versions>/`` (``~/.cache/llama-operator`` by default);
``LLAMA_OPERATOR_BIN_DIR`` points at a prebuilt folder directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llama_operator_dev.errors import BinariesMissingError

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPOSITORY_ROOT / "hack" / "controlplane-versions.env"
BUILD_SCRIPT = "hack/build-controlplane.sh"

CACHE_ENV = "LLAMA_OPERATOR_CACHE"
BIN_DIR_ENV = "LLAMA_OPERATOR_BIN_DIR"
DEFAULT_CACHE = Path("~/.cache/llama-operator")

BINARY_NAMES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)


@dataclass(frozen=True)
class ControlPlaneVersions:
    """The pinned versions of every binary of the local control plane."""

    kubernetes: str
    etcd: str
    kwok: str
    helm: str

    @property
    def bin_dir_name(self) -> str:
        """The cache folder name; it carries every version so upgrades never mix binaries."""
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}_helm-{self.helm}"


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Absolute paths of the built binaries."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        """Path of one binary, e.g. ``path("kube-apiserver")``."""
        if name not in BINARY_NAMES:
            raise KeyError(f"unknown control-plane binary {name!r}; known: {', '.join(BINARY_NAMES)}")
        return self.bin_dir / name


def parse_versions_env(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines; blank lines and ``#`` comments are skipped."""
    values: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"line {number}: expected KEY=VALUE, got {raw_line!r}")
        values[key.strip()] = value.strip()
    return values


def read_versions(versions_file: Path = VERSIONS_FILE) -> ControlPlaneVersions:
    """Read the pinned versions shared with the build script."""
    values = parse_versions_env(versions_file.read_text(encoding="utf-8"))
    keys = ("KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION")
    missing = [key for key in keys if not values.get(key)]
    if missing:
        raise ValueError(f"{versions_file}: missing {', '.join(missing)}")
    return ControlPlaneVersions(
        kubernetes=values["KUBERNETES_VERSION"],
        etcd=values["ETCD_VERSION"],
        kwok=values["KWOK_VERSION"],
        helm=values["HELM_VERSION"],
    )


def cache_root() -> Path:
    """``$LLAMA_OPERATOR_CACHE`` or ``~/.cache/llama-operator``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE.expanduser()


def expected_bin_dir(versions: ControlPlaneVersions | None = None) -> Path:
    """The folder the build script fills for the pinned versions (or ``$LLAMA_OPERATOR_BIN_DIR``)."""
    configured = os.environ.get(BIN_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    pinned = versions if versions is not None else read_versions()
    return cache_root() / "bin" / pinned.bin_dir_name


def missing_binaries(bin_dir: Path) -> list[str]:
    """Names of the binaries that are absent from ``bin_dir`` or not executable."""
    return [name for name in BINARY_NAMES if not os.access(bin_dir / name, os.X_OK)]


def find_binaries(versions: ControlPlaneVersions | None = None) -> ControlPlaneBinaries:
    """Locate the built binaries, or say how to build them."""
    bin_dir = expected_bin_dir(versions)
    missing = missing_binaries(bin_dir)
    if missing:
        raise BinariesMissingError(
            f"control-plane binaries missing from {bin_dir}: {', '.join(missing)}; "
            f"build them with `{BUILD_SCRIPT}` (set {CACHE_ENV} to use another cache folder)"
        )
    return ControlPlaneBinaries(bin_dir=bin_dir)
