"""The Helm chart against helm and a real control plane: schema, rendering, install, and least-privilege RBAC.

The chart tests run on a control plane of their own: the chart owns cluster-scoped objects (the
CRD, ClusterRoles, a ServiceMonitor CRD for the monitoring tests) that the shared plane's fixtures
and other tests must not see.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator.cli import build_parser
from llama_operator.engines.base import EngineImages
from llama_operator.operator_config import OperatorConfig
from llama_operator_dev import ControlPlane
from llama_operator_dev.binaries import expected_bin_dir
from llama_operator_dev.upstream import upstream_crds
from tests.integration.cluster_setup import poll_until, skip_without_binaries
from tests.integration.operator_process import OperatorProcess
from tests.integration.test_operator import condition, example, wait_condition

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llama-operator"
CRD_FILE = ROOT / "crds" / "llamadeployments.llamaops.io.yaml"
GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
RELEASE = NAMESPACE = "llama-operator"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:llama-operator"
SCOPED_RELEASE, SCOPED_NAMESPACE = "scoped", "llama-operator-scoped"
WATCHED = ["team-a", "team-b"]

CUSTOM_VALUES: dict[str, Any] = {
    "watchNamespaces": WATCHED,
    "logLevel": "debug",
    "logFormat": "text",
    "gpuClasses": [
        {"name": "a100-40gb", "minMemoryMib": 39000, "maxMemoryMib": 42000, "memoryMib": 40960,
         "costPerGpu": 3.5, "gpusPerNode": 8, "product": "NVIDIA-A100-SXM4-40GB"},
        {"name": "rtx-4090", "minMemoryMib": 23000, "maxMemoryMib": 25000, "memoryMib": 24564, "costPerGpu": 0.6},
    ],
    "cpuCostPerReplica": 0.1,
    "engineImages": {
        "vllm": "registry.example.com/vllm/vllm-openai:v0.11.0",
        "tgi": "registry.example.com/tgi:3.3.6",
        "llamacppCpu": "registry.example.com/llama.cpp:server",
        "llamacppCuda": "registry.example.com/llama.cpp:server-cuda",
        "downloader": "registry.example.com/curl:8",
        "s3Downloader": "registry.example.com/aws-cli:2",
    },
    "prometheusUrl": "http://prometheus-operated.monitoring:9090",
    "prometheusAllowedUrls": ["http://prometheus.team-a.svc:9090", "https://thanos.example.com/team-b"],
    "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}},
    "leaderWorkerSet": {"enabled": True},
    "inferencePool": {"enabled": True},
    "dra": {"enabled": True, "default": True},
    "keda": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "crds": {"keep": False},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "serviceAccount": {"annotations": {"example.com/role": "llama-operator"}},
}  # fmt: skip


# With them installed, ServiceMonitors pass `kubectl apply --dry-run=server` under the Prometheus Operator's
# own schema (its ServiceMonitor and PodMonitor CRDs, from the pinned module), LeaderWorkerSets under LWS's
# (the CRDs of the pinned sigs.k8s.io/lws; `create`, as they are too large for `apply`'s annotation), the
# operator applies one ServiceMonitor per LlamaDeployment, and `kubectl auth can-i` resolves every resource.


def binary(name: str) -> str:
    skip_without_binaries()
    return str(expected_bin_dir() / name)


def run(command: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=120)


def helm(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    config = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return run([binary("helm"), *config, *args])


def kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([binary("kubectl"), "--kubeconfig", str(plane.kubeconfig_path), *args], stdin=stdin)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{' '.join(result.args[:4])} ...: {result.stderr or result.stdout}"
    return result.stdout


def values_file(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(tmp_path: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if values:
        args += ["--values", str(values_file(tmp_path, values))]
    return [doc for doc in yaml.safe_load_all(ok(helm(*args))) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, resourceName, verb) for every combination a list of rules grants."""
    return {
        (group, resource, name, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for name in rule.get("resourceNames") or ["*"]
        for verb in rule["verbs"]
    }


# -- helm alone ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["default", "custom"])
def test_helm_lint_strict(tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["--values", str(values_file(tmp_path, values))]
    assert "0 chart(s) failed" in ok(helm(*args))


def test_default_render_runs_the_operator_cluster_wide_with_the_operator_defaults(tmp_path: Path) -> None:
    docs = render(tmp_path)
    (deployment,) = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])  # the operator's own CLI accepts them
    assert (args.command, args.namespace, args.log_format) == ("run", [], "json")
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert str(args.config) == "/etc/llama-operator/config.yaml"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["limits"]["memory"] == "512Mi"

    (config_map,) = find(docs, "ConfigMap", RELEASE)
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert config == OperatorConfig()

    (crd,) = find(docs, "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert [r["metadata"]["name"] for r in find(docs, "ClusterRole")] == ["llama-operator-cluster", "llama-operator"]
    assert not find(docs, "Role")
    assert not find(docs, "ServiceMonitor")
    (service,) = find(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090


def test_custom_values_render_namespaced_rbac_monitoring_and_the_operator_config(tmp_path: Path) -> None:
    docs = render(tmp_path, CUSTOM_VALUES)
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert (args.namespace, args.log_format, args.log_level) == (WATCHED, "text", "debug")
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}

    (config_map,) = find(docs, "ConfigMap", RELEASE)
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert [c.name for c in config.gpu_classes] == ["a100-40gb", "rtx-4090"]
    assert config.gpu_classes[1].gpus_per_node == 8  # the operator's default fills what the values leave out
    assert config.cpu_cost_per_replica == 0.1
    assert config.prometheus_url == CUSTOM_VALUES["prometheusUrl"]
    assert config.prometheus_allowed_urls == CUSTOM_VALUES["prometheusAllowedUrls"]
    assert config.device_allocation == "DRA"  # dra.default
    images = config.engine_images()
    assert set(vars(images).values()) == set(CUSTOM_VALUES["engineImages"].values())
    assert images != EngineImages()

    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == WATCHED
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == WATCHED
    assert [r["metadata"]["name"] for r in find(docs, "ClusterRole")] == ["llama-operator-cluster"]
    assert ("leaderworkerset.x-k8s.io", "leaderworkersets", "*", "create") in rule_set(roles[0]["rules"])
    for verb in ("watch", "create", "patch", "delete"):
        assert ("inference.networking.k8s.io", "inferencepools", "*", verb) in rule_set(roles[0]["rules"])
        assert ("resource.k8s.io", "resourceclaimtemplates", "*", verb) in rule_set(roles[0]["rules"])
        for plural in ("scaledobjects", "triggerauthentications"):
            assert ("keda.sh", plural, "*", verb) in rule_set(roles[0]["rules"])
    (cluster_role,) = find(docs, "ClusterRole")
    assert ("", "namespaces", "*", "list") in rule_set(cluster_role["rules"])
    assert ("resource.k8s.io", "resourceslices", "*", "watch") in rule_set(cluster_role["rules"])

    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    (dashboard,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["llama-operator.json"]) == json.loads(
        (CHART / "dashboards" / "llama-operator.json").read_text()
    )
    (crd,) = find(docs, "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]  # crds.keep: false


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"gpuClases": []}, "gpuClases"),
        ({"metrics": {"serviceMonitor": {"intervall": "10s"}}}, "intervall"),
        (
            {"gpuClasses": [{"name": "x", "minMemoryMib": 1, "maxMemoryMib": 2, "memoryMib": 1, "costPerGPU": 1}]},
            "costPerGPU",
        ),
        ({"securityContext": {"readOnlyRootFileSystem": True}}, "readOnlyRootFileSystem"),
    ],
    ids=["replicaCont", "gpuClases", "nested", "gpu-class-field", "security-context"],
)
def test_a_misspelled_value_fails_with_an_error_naming_the_key(
    tmp_path: Path, values: dict[str, Any], key: str
) -> None:
    result = helm("template", RELEASE, str(CHART), "--values", str(values_file(tmp_path, values)))
    assert result.returncode != 0
    assert key in result.stderr
    assert "schema" in result.stderr


def test_install_yaml_is_the_default_render(tmp_path: Path) -> None:
    result = run(["bash", str(ROOT / "hack" / "render-install.sh"), "--stdout"])
    expected = ok(result)
    assert (ROOT / "manifests" / "install.yaml").read_text() == expected, (
        "manifests/install.yaml is stale: run hack/render-install.sh"
    )


# -- against a real control plane ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    skip_without_binaries()
    control_plane = ControlPlane(tmp_path_factory.mktemp("chart-controlplane"))
    control_plane.start()
    try:
        crds = [*upstream_crds("PROMETHEUS_OPERATOR"), *upstream_crds("LWS")]
        for crd in crds:
            ok(kubectl(control_plane, "create", "-f", "-", stdin=json.dumps(crd)))
        for namespace in [*WATCHED, SCOPED_NAMESPACE]:
            ok(kubectl(control_plane, "create", "namespace", namespace))
        # The operator's namespace enforces the "restricted" Pod Security Standard, as install.yaml's does.
        install = yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text())
        ok(kubectl(control_plane, "apply", "-f", "-", stdin=json.dumps(next(doc for doc in install if doc))))
        names = [f"crd/{crd['metadata']['name']}" for crd in crds]  # type: ignore[index]
        ok(kubectl(control_plane, "wait", "--for=condition=Established", *names))
        yield control_plane
    finally:
        control_plane.stop()


@pytest.fixture(scope="module")
def release(plane: ControlPlane) -> str:
    """The chart installed with its default values, as a user would."""
    ok(helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, kubeconfig=plane.kubeconfig_path))
    return RELEASE


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES], ids=["install.yaml", "custom"])
def test_the_apiserver_accepts_every_rendered_object(
    plane: ControlPlane, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    if values is None:
        manifest = (ROOT / "manifests" / "install.yaml").read_text()
    else:
        manifest = yaml.safe_dump_all(render(tmp_path, values))
    output = ok(kubectl(plane, "apply", "--dry-run=server", "-f", "-", stdin=manifest))
    kinds = {line.split("/")[0] for line in output.splitlines()}
    assert "deployment.apps" in kinds
    assert "customresourcedefinition.apiextensions.k8s.io" in kinds
    if values is not None:
        assert "servicemonitor.monitoring.coreos.com" in kinds
        assert "role.rbac.authorization.k8s.io" in kinds


def test_helm_install_refuses_a_misspelled_value(plane: ControlPlane, tmp_path: Path) -> None:
    values = values_file(tmp_path, {"replicaCont": 2})
    result = helm("install", "typo", str(CHART), "--namespace", NAMESPACE, "--values", str(values),
                  kubeconfig=plane.kubeconfig_path)  # fmt: skip
    assert result.returncode != 0
    assert "replicaCont" in result.stderr
    assert "typo" not in ok(
        helm("list", "--all", "--namespace", NAMESPACE, "--short", kubeconfig=plane.kubeconfig_path)
    )


def test_helm_install_creates_the_crd_rbac_and_a_restricted_operator_pod(
    plane: ControlPlane, api_client: Any, release: str
) -> None:
    ext = kube_client.ApiextensionsV1Api(api_client)

    def established() -> Any:
        crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return crd if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []) else None

    crd = poll_until(established, 30, "the chart's CRD to be established")
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == release
    rbac = kube_client.RbacAuthorizationV1Api(api_client)
    for name in ("llama-operator", "llama-operator-cluster"):
        assert rbac.read_cluster_role(name).rules
        binding = rbac.read_cluster_role_binding(name)
        assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [
            ("ServiceAccount", NAMESPACE, "llama-operator")
        ]
    kube_client.CoreV1Api(api_client).read_namespaced_service_account("llama-operator", NAMESPACE)

    # The namespace enforces "restricted": the ReplicaSet can only create the pod if it passes.
    def operator_pod() -> Any:
        pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
            NAMESPACE, label_selector="app.kubernetes.io/name=llama-operator"
        )
        return pods.items[0] if pods.items else None

    pod = poll_until(operator_pod, 30, "the operator pod (refused if it breaks the restricted policy)")
    assert pod.spec.security_context.run_as_non_root is True


def service_account_kubeconfig(plane: ControlPlane, directory: Path, namespace: str, name: str) -> Path:
    """A kubeconfig holding a token of the ServiceAccount, so a client has exactly its RBAC."""
    token = ok(kubectl(plane, "create", "token", name, "--namespace", namespace, "--duration=1h")).strip()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "chart-test", "cluster": {
            "server": plane.server_url, "certificate-authority-data": base64.b64encode(plane.ca_path.read_bytes()).decode()}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "chart-test", "context": {"cluster": "chart-test", "user": name}}],
        "current-context": "chart-test",
    }  # fmt: skip
    path = directory / f"{namespace}-{name}.kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_operator_with_only_the_charts_rbac_reconciles_an_example_to_ready(
    plane: ControlPlane, api_client: Any, release: str, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(plane, tmp_path, NAMESPACE, "llama-operator")
    namespace = f"apps-{uuid.uuid4().hex[:8]}"
    ok(kubectl(plane, "create", "namespace", namespace))
    operator = OperatorProcess(kubeconfig, tmp_path)
    operator.start()
    try:
        custom = kube_client.CustomObjectsApi(api_client)
        manifest = example("llama-3.1-8b-tgi")
        name = manifest["metadata"]["name"]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        ready = wait_condition(api_client, namespace, name, operator, type_="Ready", status="True", timeout=60)
        assert ready["status"]["phase"] == "Ready"
        # Every child was applied (the Prometheus Operator's CRD exists here: a ServiceMonitor too).
        kube_client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
        kube_client.CoreV1Api(api_client).read_namespaced_service(name, namespace)
        kube_client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(name, namespace)
        custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", namespace, "servicemonitors", name)

        too_big = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LlamaDeployment", "metadata": {"name": "too-big"},
                   "spec": {"model": {"catalogName": "llama-3.1-405b", "source": "hf://meta-llama/Llama-3.1-405B-Instruct"}}}  # fmt: skip
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, too_big)
        refused = wait_condition(api_client, namespace, "too-big", operator, type_="Fits", status="False", timeout=30)
        assert condition(refused, "Fits") is not None

        def posted_event() -> bool | None:
            events = kube_client.CoreV1Api(api_client).list_namespaced_event(namespace).items
            return True if any(e.reason == "DoesNotFit" for e in events) else None

        poll_until(posted_event, 30, "the operator's DoesNotFit event")
    finally:
        operator.stop()
    log = (tmp_path / f"operator-{operator.starts}.log").read_text()
    forbidden = [line for line in log.splitlines() if "Forbidden" in line or " 403 " in line]
    assert forbidden == [], "the operator met a permission it lacks:\n" + "\n".join(forbidden[:5])


def can_i(plane: ControlPlane, subject: str, check: str) -> bool:
    """`kubectl auth can-i VERB RESOURCE [-n NS | -A] [--subresource X]` as the subject."""
    result = kubectl(plane, "auth", "can-i", *check.split(), f"--as={subject}")
    if result.returncode not in (0, 1):
        pytest.fail(f"kubectl auth can-i {check}: {result.stderr}")
    return result.returncode == 0


def permission_mismatches(plane: ControlPlane, subject: str, expected: dict[str, bool]) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(zip(expected, pool.map(lambda check: can_i(plane, subject, check), expected), strict=True))
    return [
        f"can-i {check}: {answers[check]}, expected {want}"
        for check, want in expected.items()
        if answers[check] != want
    ]


CLUSTER_WIDE_PERMISSIONS = {
    # what the operator and kopf use
    "list llamadeployments.llamaops.io -A": True,
    "watch llamadeployments.llamaops.io -A": True,
    "patch llamadeployments.llamaops.io -n default": True,
    "patch llamadeployments.llamaops.io --subresource=status -n default": True,
    "patch llamadeployments.llamaops.io --subresource=scale -n default": True,
    "patch pods --subresource=status -n default": True,
    "create deployments.apps -n default": True,
    "patch deployments.apps -n default": True,
    "watch deployments.apps -A": True,
    "create services -n default": True,
    "patch poddisruptionbudgets.policy -n default": True,
    "create servicemonitors.monitoring.coreos.com -n default": True,
    "watch pods -A": True,
    "list nodes": True,
    "watch nodes": True,  # the GPU inventory comes from a watch-fed cache
    "watch services -A": True,
    "watch poddisruptionbudgets.policy -A": True,
    "watch servicemonitors.monitoring.coreos.com -A": True,
    "create events -n default": True,
    "watch customresourcedefinitions.apiextensions.k8s.io": True,
    "get deployments.apps -n default": False,  # children are read from the cache, never per pass
    "get llamadeployments.llamaops.io -n default": False,
    # and nothing more
    "* *": False,
    "list secrets -A": False,
    "get secrets -n default": False,
    "get secrets -n llama-operator": False,
    "create pods --subresource=exec -n default": False,
    "create pods -n default": False,
    "patch pods -n default": False,
    "delete pods -n default": False,
    "delete nodes": False,
    "patch nodes": False,
    "create clusterroles.rbac.authorization.k8s.io": False,
    "patch clusterroles.rbac.authorization.k8s.io": False,
    "create clusterrolebindings.rbac.authorization.k8s.io": False,
    "create rolebindings.rbac.authorization.k8s.io -n default": False,
    "create customresourcedefinitions.apiextensions.k8s.io": False,
    "get customresourcedefinitions.apiextensions.k8s.io/llamadeployments.llamaops.io": False,
    "delete llamadeployments.llamaops.io -n default": False,
    "delete deployments.apps -n default": False,
    "update deployments.apps -n default": False,
    "list namespaces": False,
    "get configmaps -n llama-operator": False,
    "create serviceaccounts --subresource=token -n llama-operator": False,
    "create leaderworkersets.leaderworkerset.x-k8s.io -n default": False,
    "impersonate users": False,
}


def test_the_charts_service_account_has_what_it_needs_and_nothing_more(plane: ControlPlane, release: str) -> None:
    assert permission_mismatches(plane, SERVICE_ACCOUNT, CLUSTER_WIDE_PERMISSIONS) == []


def test_a_namespaced_release_grants_the_workload_rules_only_in_its_namespaces(plane: ControlPlane) -> None:
    values = ["--set", "crds.enabled=false", "--set", "leaderWorkerSet.enabled=true",
              "--set", f"watchNamespaces={{{','.join(WATCHED)}}}", "--set", "rbac.prometheusAuthSecrets={prom-token}"]  # fmt: skip
    ok(helm("install", SCOPED_RELEASE, str(CHART), "--namespace", SCOPED_NAMESPACE, *values,
            kubeconfig=plane.kubeconfig_path))  # fmt: skip
    subject = f"system:serviceaccount:{SCOPED_NAMESPACE}:{SCOPED_RELEASE}-llama-operator"
    expected = {
        **{f"create deployments.apps -n {ns}": True for ns in WATCHED},
        **{f"watch llamadeployments.llamaops.io -n {ns}": True for ns in WATCHED},
        "create leaderworkersets.leaderworkerset.x-k8s.io -n team-a": True,
        "list nodes": True,
        "list namespaces": True,  # kopf checks which of the watched namespaces exist
        "create deployments.apps -n default": False,
        "list llamadeployments.llamaops.io -A": False,
        "get secrets/prom-token -n team-a": True,  # named in rbac.prometheusAuthSecrets
        "get secrets/hf-token -n team-a": False,
        "list secrets -n team-a": False,
        "get secrets/prom-token -n default": False,
        "create pods --subresource=exec -n team-a": False,
    }
    assert permission_mismatches(plane, subject, expected) == []


def test_server_side_apply_of_a_new_object_needs_create_as_well_as_patch(plane: ControlPlane, tmp_path: Path) -> None:
    """Why every kind the operator applies is granted `create`: an apply that creates is authorized as create."""
    namespace = SCOPED_NAMESPACE
    ok(kubectl(plane, "create", "serviceaccount", "applier", "-n", namespace))
    ok(kubectl(plane, "create", "role", "apply-configmaps", "--verb=patch", "--resource=configmaps", "-n", namespace))
    ok(kubectl(plane, "create", "rolebinding", "applier", "--role=apply-configmaps",
               f"--serviceaccount={namespace}:applier", "-n", namespace))  # fmt: skip
    kubeconfig = service_account_kubeconfig(plane, tmp_path, namespace, "applier")
    config_map = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "b"}}
    )

    def apply() -> subprocess.CompletedProcess[str]:
        return run([binary("kubectl"), "--kubeconfig", str(kubeconfig), "apply", "--server-side",
                    "--field-manager=llama-operator", "-n", namespace, "-f", "-"], stdin=config_map)  # fmt: skip

    refused = apply()
    assert refused.returncode != 0
    assert 'cannot create resource "configmaps"' in refused.stderr
    ok(kubectl(plane, "patch", "role", "apply-configmaps", "-n", namespace, "--type=json",
               "-p", '[{"op": "add", "path": "/rules/0/verbs/-", "value": "create"}]'))  # fmt: skip

    def applied() -> bool | None:
        return True if apply().returncode == 0 else None

    poll_until(applied, 10, "server-side apply to succeed with create and patch")
    try:
        kube_client.CoreV1Api(plane.new_api_client()).read_namespaced_config_map("applied", namespace)
    except ApiException as error:
        pytest.fail(f"the applied ConfigMap is missing: {error.reason}")
