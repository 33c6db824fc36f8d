"""The upstream projects whose CRDs the dev cluster and the tests install: pinned once, in
``hack/upstream-versions.env``, taken from their Go modules by ``hack/fetch-upstream-crds.sh`` into
``$LLAMA_OPERATOR_CACHE/crds/<project>-<version>/`` (nothing copied into this repository).
"""

from __future__ import annotations

import http
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from kubernetes.client import ApiClient, V1CustomResourceDefinition
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.binaries import REPOSITORY_ROOT, cache_root, parse_versions_env
from llama_operator_dev.errors import ReadinessTimeoutError
from llama_operator_dev.processes import POLL_INTERVAL_SECONDS

UPSTREAM_VERSIONS_FILE = REPOSITORY_ROOT / "hack" / "upstream-versions.env"
FETCH_SCRIPT = "hack/fetch-upstream-crds.sh"
COMPLETE_MARKER = ".complete"
FETCH_TIMEOUT_SECONDS = 600
# libyaml's safe loader when PyYAML has it: the LeaderWorkerSet CRD (1.3 MB) parses in 0.2 s instead of 2 s.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class UpstreamProject:
    """One pinned upstream project: its Go module, version, and the CRD files taken from it."""

    key: str  # the prefix of its lines in the versions file, e.g. GIE
    module: str
    version: str
    crd_paths: tuple[str, ...]

    @property
    def folder(self) -> Path:
        slug = self.key.lower().replace("_", "-")
        return cache_root() / "crds" / f"{slug}-{self.version}"

    @property
    def crd_files(self) -> list[Path]:
        return [self.folder / Path(path).name for path in self.crd_paths]


def read_upstream(key: str, versions_file: Path = UPSTREAM_VERSIONS_FILE) -> UpstreamProject:
    """The project pinned under `key` (GIE, PROMETHEUS_OPERATOR)."""
    values = parse_versions_env(versions_file.read_text(encoding="utf-8"))
    wanted = [f"{key}_MODULE", f"{key}_VERSION", f"{key}_CRDS"]
    missing = [name for name in wanted if not values.get(name)]
    if missing:
        raise ValueError(f"{versions_file}: missing {', '.join(missing)}")
    paths = tuple(p.strip() for p in values[f"{key}_CRDS"].split(",") if p.strip())
    return UpstreamProject(key, values[f"{key}_MODULE"], values[f"{key}_VERSION"], paths)


def upstream_crds(key: str) -> list[dict[str, object]]:
    """The CRD manifests of the pinned project, fetched now when the cache lacks them (seconds, once)."""
    project = read_upstream(key)
    if not (project.folder / COMPLETE_MARKER).is_file():
        result = subprocess.run(
            ["bash", str(REPOSITORY_ROOT / FETCH_SCRIPT), key],
            capture_output=True,
            text=True,
            timeout=FETCH_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{FETCH_SCRIPT} {key} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    manifests: list[dict[str, object]] = []
    for path in project.crd_files:
        manifests.extend(doc for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER) if doc)
    return manifests


def module_folder(key: str) -> Path:
    """The pinned project's module as the Go module cache holds it (read-only, checksummed by the proxy), for
    files read at run time other than CRDs; `go mod download` fetches it when the cache lacks it."""
    project = read_upstream(key)
    with tempfile.TemporaryDirectory() as scratch:  # outside any module: no go.mod needed
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{project.module}@{project.version}"],
            capture_output=True,
            text=True,
            timeout=FETCH_TIMEOUT_SECONDS,
            check=False,
            cwd=scratch,
            env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        )
    if result.returncode != 0:
        raise RuntimeError(f"go mod download {project.module}@{project.version} failed:\n{result.stderr[-4000:]}")
    folder = Path(json.loads(result.stdout)["Dir"])
    if not (folder / "go.mod").is_file():
        raise RuntimeError(f"go mod download {project.module}@{project.version} gave no module folder ({folder})")
    return folder


def install_upstream_crds(api_client: ApiClient, key: str, timeout_seconds: float = 60.0) -> list[str]:
    """Create the pinned project's CRDs (created, not applied: some are too large for a client-side apply's
    annotation) and wait until they are Established; an existing CRD is left as it is. Returns their names."""
    ext = kube_client.ApiextensionsV1Api(api_client)
    names = []
    for crd in upstream_crds(key):
        metadata: dict[str, Any] = crd["metadata"]  # type: ignore[assignment]
        names.append(str(metadata["name"]))
        try:
            ext.create_custom_resource_definition(V1CustomResourceDefinition.model_validate(crd))
        except ApiException as error:
            if error.status != http.HTTPStatus.CONFLICT:
                raise
    deadline = time.monotonic() + timeout_seconds
    for name in names:
        while True:
            status = ext.read_custom_resource_definition(name).status
            conditions = (status.conditions if status is not None else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() >= deadline:
                raise ReadinessTimeoutError(f"CRD {name} not Established after {timeout_seconds:.0f}s")
            time.sleep(POLL_INTERVAL_SECONDS)
    return names
