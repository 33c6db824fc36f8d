"""The real apiserver refuses every invalid manifest through the generated CRD, and names the bad field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.invalid_manifests import (
    INVALID_MANIFESTS,
    VALID_MANIFESTS,
    InvalidManifest,
    ValidManifest,
    resource,
)
from tests.reliability import Recorder

GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"


def create(api_client: Any, namespace: str, body: dict[str, Any]) -> Any:
    return kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
    )


@pytest.mark.parametrize("case", INVALID_MANIFESTS, ids=[c.id for c in INVALID_MANIFESTS])
def test_invalid_manifest_is_refused_naming_the_field(
    api_client: Any, crd: None, namespace: str, case: InvalidManifest, ledger: Recorder
) -> None:
    with pytest.raises(ApiException) as refused:
        create(api_client, namespace, resource(case.spec, case.id))
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert case.message in message, message
    assert case.field in message, message  # the dotted path, as parse_spec names it too
    ledger.hostile(f"manifest {case.id}", f"refused at admission (422): {message}")


@pytest.mark.parametrize("case", VALID_MANIFESTS, ids=[c.id for c in VALID_MANIFESTS])
def test_near_miss_is_admitted(api_client: Any, crd: None, namespace: str, case: ValidManifest) -> None:
    created = create(api_client, namespace, resource(case.spec, case.id))
    assert created["metadata"]["name"] == case.id


def test_defaults_are_applied_by_the_apiserver(api_client: Any, crd: None, namespace: str) -> None:
    spec = {"model": {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}
    created = create(api_client, namespace, resource(spec, "defaults"))["spec"]
    assert created["engine"]["type"] == "auto"
    assert created["placement"] == {"gpuClass": "auto", "gpuCount": "auto", "cpuOnly": False, "maxNodesPerReplica": 1}
    assert created["serving"]["maxConcurrentSequences"] == 8
    assert created["replicas"] == 1
