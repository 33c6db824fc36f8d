"""Pod Security admission of the real apiserver (its PodSecurity plugin is on by default) on what the operator renders.

In a namespace that enforces `restricted` (latest), every example is applied through the operator and its
pods are created on the KWOK pools: the ReplicaSet controller gets no refusal. The one documented
exception, TGI, is refused for exactly the control it names (`runAsNonRoot`) and nothing else, and its
pods are admitted where `baseline` is enforced. A server-side dry run of every rendered pod template
(examples and the unit tests' variants: adapters from every source, tensor parallel, a LeaderWorkerSet
leader and worker) checks the same directly, and checks that the unit tests' checker agrees with the
apiserver on every one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator.engines.pod import RESTRICTED_EXCEPTION_ANNOTATION
from tests.integration.cluster_setup import create_namespace, poll_until
from tests.integration.operator_process import OperatorProcess
from tests.reliability import Recorder
from tests.unit.render_cases import EXAMPLES
from tests.unit.test_pod_security import TEMPLATES, pod_security_violations

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
REFUSED = 'violates PodSecurity "restricted:latest"'
TIMEOUT = 90


def enforce(api_client: Any, namespace: str, level: str) -> None:
    labels = {"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/enforce-version": "latest"}
    kube_client.CoreV1Api(api_client).patch_namespace(namespace, {"metadata": {"labels": labels}})


@pytest.fixture
def baseline_namespace(api_client: Any) -> Iterator[str]:
    name = create_namespace(api_client, prefix="baseline")
    enforce(api_client, name, "baseline")
    yield name
    kube_client.CoreV1Api(api_client).delete_namespace(name)


def as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    metadata = {"name": name, **{k: v for k, v in template["metadata"].items() if k in ("labels", "annotations")}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def dry_run_refusal(api_client: Any, namespace: str, template: dict[str, Any], name: str) -> str | None:
    """The apiserver's refusal of the template as a Pod (dry run: nothing is stored), or None when admitted."""
    try:
        kube_client.CoreV1Api(api_client).create_namespaced_pod(namespace, as_pod(template, name), dry_run="All")
    except ApiException as error:
        if error.status != 403:
            raise
        return str(json.loads(str(error.body))["message"])
    return None


def refused_controls(message: str) -> list[str]:
    """'... violates PodSecurity "restricted:latest": runAsNonRoot != true (pod or ...), unrestricted
    capabilities (...)' -> ['runAsNonRoot != true', 'unrestricted capabilities']."""
    details = re.sub(r"\s*\([^)]*\)", "", message.split(REFUSED + ": ", 1)[1])
    return [part.strip() for part in details.split(",")]


def test_every_rendered_pod_template_is_admitted_or_refused_for_its_named_exception(
    api_client: Any, namespace: str, baseline_namespace: str, ledger: Recorder
) -> None:
    enforce(api_client, namespace, "restricted")
    for index, (key, (_, template)) in enumerate(sorted(TEMPLATES.items())):
        name = f"dry-run-{index}"
        refusal = dry_run_refusal(api_client, namespace, template, name)
        checker = pod_security_violations(template, "restricted")
        assert (refusal is None) == (checker == []), f"{key}: apiserver {refusal!r}, checker {checker}"
        if RESTRICTED_EXCEPTION_ANNOTATION in template["metadata"]["annotations"]:
            assert refusal is not None, key
            assert REFUSED in refusal, refusal
            assert refused_controls(refusal) == ["runAsNonRoot != true"], refusal
        else:
            assert refusal is None, f"{key}: {refusal}"
            ledger.admitted(f"rendered pod template {key}", "restricted")
        assert dry_run_refusal(api_client, baseline_namespace, template, name) is None, key
        ledger.admitted(f"rendered pod template {key}", "baseline")


def test_every_example_gets_its_pods_under_restricted(
    api_client: Any, namespace: str, operator: OperatorProcess, ledger: Recorder
) -> None:
    enforce(api_client, namespace, "restricted")
    core, apps = kube_client.CoreV1Api(api_client), kube_client.AppsV1Api(api_client)
    manifests = [yaml.safe_load(path.read_text()) for path in EXAMPLES]
    for manifest in manifests:
        kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest
        )

    def template_of(name: str) -> dict[str, Any] | None:
        try:
            deployment = apps.read_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        template: dict[str, Any] = api_client.sanitize_for_serialization(deployment.spec.template)
        return template

    def pods(name: str) -> list[Any]:
        return list(core.list_namespaced_pod(namespace, label_selector=f"llamaops.io/deployment={name}").items)

    def refusals(name: str) -> list[str]:
        """The ReplicaSet controller's FailedCreate events for the example's ReplicaSets."""
        events = core.list_namespaced_event(namespace).items
        return [
            str(e.message)
            for e in events
            if e.reason == "FailedCreate" and str(e.involved_object.name).startswith(f"{name}-")
        ]

    def check(name: str, replicas: int) -> None:
        template = poll_until(lambda: template_of(name), TIMEOUT, f"the operator's Deployment {name}")
        if RESTRICTED_EXCEPTION_ANNOTATION in template["metadata"]["annotations"]:
            message = poll_until(lambda: next(iter(refusals(name)), None), TIMEOUT, f"{name}: FailedCreate")
            assert REFUSED in message, message
            assert refused_controls(message) == ["runAsNonRoot != true"], message
            assert pods(name) == []
            return
        poll_until(lambda: True if len(pods(name)) >= replicas else None, TIMEOUT, f"{name}: {replicas} pods")
        assert refusals(name) == [], refusals(name)
        for pod in pods(name):
            assert pod.spec.security_context.run_as_non_root is True
            assert pod.spec.automount_service_account_token is False
            ledger.admitted(f"example {name}: pod {pod.metadata.name}", "restricted")

    for manifest in manifests:
        check(manifest["metadata"]["name"], manifest["spec"].get("replicas", 1))
