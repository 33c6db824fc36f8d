"""Every Kubernetes API call of the operator. Errors leave this module as our own `KubeError`s."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportError

from llama_operator.api.spec import GROUP, PLURAL, VERSION

FIELD_MANAGER = "llama-operator"
USER_AGENT = "llama-operator/0.1.0"  # how the apiserver's audit log tells our requests apart
# (connect, read) seconds: no call may hang a pass; a watch is kopf's, not ours.
REQUEST_TIMEOUT_SECONDS = (5.0, 30.0)
CONNECTIONS = 16
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"

Manifest = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")

# (apiVersion, kind) -> plural, for the kinds the operator applies or reads.
PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Node"): "nodes",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    (f"{GROUP}/{VERSION}", "LlamaDeployment"): PLURAL,
    ("v1", "Namespace"): "namespaces",
    ("v1", "Secret"): "secrets",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(KubeError):
    pass


class ConflictError(KubeError):
    pass


def _message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return str(error.body or error.reason)
    return str(body.get("message", error.reason))


def mapped(func: Callable[P, T]) -> Callable[P, T]:
    """Map the client's ApiException to our errors, so callers never import the client."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except ApiException as error:
            kind = {404: NotFoundError, 409: ConflictError}.get(error.status or 0, KubeError)
            raise kind(error.status or 0, str(error.reason), _message(error)) from error
        except (TransportError, OSError) as error:  # refused, reset, timed out: the server was not reached
            raise KubeError(0, "Unreachable", f"{error.__class__.__name__}: {error}") from error

    return wrapper


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{plural}" + (f"/{name}" if name else "")


class Kube:
    """A thin synchronous API client; async handlers call it through `asyncio.to_thread`."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client
        self._api.user_agent = USER_AGENT

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        configuration = client.Configuration.get_default_copy()
        configuration.retries = 1  # fail fast: the pass is retried, not the request
        configuration.connection_pool_maxsize = CONNECTIONS  # one per API thread: no call waits for a socket
        return cls(client.ApiClient(configuration))

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: object | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        method, url, headers, serialized, _ = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=headers, body=serialized, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise ApiException(http_resp=response)
        result: Manifest = json.loads(data) if data else {}
        return result

    @mapped
    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under our one field manager; conflicts with other managers are forced."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        return self._call(
            "PATCH",
            path,
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    @mapped
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            return self._call("GET", resource_path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    @mapped
    def list(self, api_version: str, kind: str, namespace: str | None, label_selector: str = "") -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[Manifest] = self._call("GET", resource_path(api_version, kind, namespace), query=query)["items"]
        return items

    @mapped
    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; None when the Secret or the key is missing."""
        secret = self.get("v1", "Secret", namespace, name)
        value = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value is not None else None

    @mapped
    def can_watch(self, group: str, plural: str) -> bool:
        """Whether this identity may list and watch `plural` cluster-wide (SelfSubjectAccessReview)."""
        for verb in ("list", "watch"):
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"group": group, "resource": plural, "verb": verb}},
            }
            answer = self._call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
            if not (answer.get("status") or {}).get("allowed"):
                return False
        return True

    @mapped
    def set_pod_conditions(self, namespace: str, name: str, conditions: Sequence[Manifest]) -> Manifest:
        """Set conditions of a pod (readiness gates) in one write; conditions merge by type."""
        path = resource_path("v1", "Pod", namespace, name) + "/status"
        body = {"status": {"conditions": [*conditions]}}
        return self._call("PATCH", path, body=body, content_type="application/strategic-merge-patch+json")

    @mapped
    def scale_llamadeployment(self, namespace: str, name: str, replicas: int) -> Manifest:
        """Write replicas through the scale subresource, as `kubectl scale` and an HPA would."""
        path = resource_path(f"{GROUP}/{VERSION}", "LlamaDeployment", namespace, name) + "/scale"
        return self._call(
            "PATCH", path, body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json"
        )

    @mapped
    def patch_llamadeployment_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        path = resource_path(f"{GROUP}/{VERSION}", "LlamaDeployment", namespace, name) + "/status"
        return self._call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
