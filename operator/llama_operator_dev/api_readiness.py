"""Polls of the API until the dev cluster's objects reach the state callers need."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kubernetes.client import ApiClient, CoreV1Api, V1Node
from kubernetes.client.exceptions import ApiException

from llama_operator_dev.errors import ReadinessTimeoutError
from llama_operator_dev.pools import KWOK_MANAGED_SELECTOR

POLL_INTERVAL_SECONDS = 0.5
HTTP_NOT_FOUND = 404


def is_node_ready(node: V1Node) -> bool:
    conditions = (node.status.conditions if node.status is not None else None) or []
    return any(condition.type == "Ready" and condition.status == "True" for condition in conditions)


def not_ready_nodes(api_client: ApiClient, names: Iterable[str]) -> list[str]:
    """Which of ``names`` do not (yet) report Ready=True."""
    nodes = CoreV1Api(api_client).list_node(label_selector=KWOK_MANAGED_SELECTOR).items
    ready = {node.metadata.name for node in nodes if node.metadata is not None and is_node_ready(node)}
    return sorted(set(names) - ready)


def wait_for_nodes_ready(api_client: ApiClient, names: Iterable[str], timeout_seconds: float) -> float:
    """Poll until every named node is Ready; returns the seconds it took."""
    wanted = list(names)
    started = time.monotonic()
    deadline = started + timeout_seconds
    while True:
        waiting = not_ready_nodes(api_client, wanted)
        if not waiting:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ReadinessTimeoutError(
                f"nodes not Ready after {timeout_seconds:.0f}s: {', '.join(waiting)}; "
                "look at the kwok and kube-controller-manager logs in the work dir"
            )
        time.sleep(POLL_INTERVAL_SECONDS)


def service_account_exists(api_client: ApiClient, namespace: str, name: str) -> bool:
    try:
        CoreV1Api(api_client).read_namespaced_service_account(name, namespace)
    except ApiException as error:
        if error.status == HTTP_NOT_FOUND:
            return False
        raise
    return True


def wait_for_service_account(api_client: ApiClient, namespace: str, name: str, timeout_seconds: float) -> float:
    """Poll until the controller-manager has created the service account; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_seconds
    while not service_account_exists(api_client, namespace, name):
        if time.monotonic() >= deadline:
            raise ReadinessTimeoutError(
                f"service account {namespace}/{name} missing after {timeout_seconds:.0f}s; "
                "look at the kube-controller-manager log in the work dir"
            )
        time.sleep(POLL_INTERVAL_SECONDS)
    return time.monotonic() - started
