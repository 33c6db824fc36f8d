"""Every Kubernetes API call of the operator. Errors leave this module as our own `KubeError`s, one line
each: an answer the apiserver gave (`RejectedError` for a refused object), or `UnreachableError` when no
answer came (refused, reset, timed out). Every call records whether the apiserver answered, for the
liveness probe (`Reachability`, `liveness_problem`)."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportError

from llama_operator.api.spec import GROUP, PLURAL, VERSION
from llama_operator.render import INFERENCE_POOL_API

FIELD_MANAGER = "llama-operator"
USER_AGENT = "llama-operator/0.1.0"  # how the apiserver's audit log tells our requests apart
# (connect, read) seconds: no call may hang a pass; a watch is kopf's, not ours.
REQUEST_TIMEOUT_SECONDS = (5.0, 30.0)
PING_TIMEOUT_SECONDS = (2.0, 3.0)  # the liveness probe's own call answers within the kubelet's 5 s
CONNECTIONS = 16
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"

Manifest = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")

# (apiVersion, kind) -> plural, for the kinds the operator applies or reads; other kinds get the
# apiserver's own regular plural (`plural_of`).
PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("batch/v1", "Job"): "jobs",
    ("v1", "Node"): "nodes",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
    (INFERENCE_POOL_API, "InferencePool"): "inferencepools",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "resourceclaimtemplates",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentications",
    ("resource.k8s.io/v1", "ResourceSlice"): "resourceslices",
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


class RejectedError(KubeError):
    """The apiserver refused the object itself (400 Bad Request, 422 Invalid: a field, a name, an admission
    check): the same body will be refused again, whatever the retry."""


class UnreachableError(KubeError):
    """No answer from the apiserver: connection refused or reset, TLS failure, timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "Unreachable", message)


ERROR_KINDS: dict[int, type[KubeError]] = {400: RejectedError, 404: NotFoundError, 409: ConflictError,
                                           422: RejectedError}  # fmt: skip
MAX_ERROR_MESSAGE = 600


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_ERROR_MESSAGE else flat[: MAX_ERROR_MESSAGE - 3] + "..."


def _message(error: ApiException) -> str:
    """The apiserver's own message (for 422: the object, then each field path and why)."""
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        return _one_line(str(error.body or error.reason))
    return _one_line(str(body.get("message", error.reason)) if isinstance(body, dict) else str(body))


def transport_message(error: BaseException) -> str:
    """One line for an error of the connection, not of the API: its innermost cause (urllib3 nests a
    `ConnectionRefusedError` in a `NewConnectionError` in a `MaxRetryError`), without the pool's repr."""
    cause: BaseException = error
    seen = {id(cause)}
    while True:
        reason = getattr(cause, "reason", None)
        inner = reason if isinstance(reason, BaseException) else cause.__cause__ or cause.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        cause = inner
    return _one_line(f"{type(cause).__name__}: {cause}")


def mapped(func: Callable[P, T]) -> Callable[P, T]:
    """Map the client's ApiException and the transport's errors to ours, so callers never import the
    client and a failed call is one line in the log, never a urllib3 traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except ApiException as error:
            if not error.status:  # the client's own wrapper of a TLS failure: no answer came
                raise UnreachableError(_one_line(str(error.reason))) from error
            kind = ERROR_KINDS.get(error.status, KubeError)
            raise kind(error.status, str(error.reason), _message(error)) from error
        except (TransportError, OSError) as error:  # refused, reset, timed out: the server was not reached
            raise UnreachableError(transport_message(error)) from error

    return wrapper


def plural_of(api_version: str, kind: str) -> str:
    """The resource name of a kind: ours from the table, others by the apiserver's regular rule
    (lower case; -s, -es after s/x/z/ch/sh, -ies after a consonant and y)."""
    known = PLURALS.get((api_version, kind))
    if known is not None:
        return known
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = plural_of(api_version, kind)
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{plural}" + (f"/{name}" if name else "")


@dataclass(frozen=True)
class ApiContact:
    """What the operator's own calls saw of the apiserver, in monotonic seconds."""

    last_answer: float | None = None  # the last call that got an HTTP answer, whatever its status
    failing_since: float | None = None  # when the first call that ended without an answer since then was sent
    last_failure: float | None = None
    last_error: str = ""
    waiting_since: float | None = None  # when the oldest call still waiting for its answer was sent

    @property
    def last_attempt(self) -> float | None:
        times = [t for t in (self.last_answer, self.last_failure) if t is not None]
        return max(times) if times else None


class Reachability:
    """Whether calls reach the apiserver: every call of `Kube` reports here (from its API threads) when it is
    sent and when it ends, so a call that hangs (a frozen apiserver accepts connections and never answers)
    counts as unanswered while it waits, not only once its timeout ends it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._contact = ApiContact()
        self._waiting: Counter[float] = Counter()  # send times of the calls in flight

    def now(self) -> float:
        return self._clock()

    def sent(self) -> float:
        """A call goes out now; its send time is what `answered`/`failed` take back."""
        now = self._clock()
        with self._lock:
            self._waiting[now] += 1
        return now

    def _ended(self, sent_at: float | None) -> None:
        if sent_at is not None and self._waiting[sent_at] > 0:
            self._waiting[sent_at] -= 1
            if not self._waiting[sent_at]:
                del self._waiting[sent_at]

    def answered(self, sent_at: float | None = None) -> None:
        with self._lock:
            self._ended(sent_at)
            self._contact = ApiContact(last_answer=self._clock())

    def failed(self, error: str, sent_at: float | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._ended(sent_at)
            was = self._contact
            start = now if sent_at is None else max(sent_at, was.last_answer or sent_at)
            since = start if was.failing_since is None else min(was.failing_since, start)
            self._contact = ApiContact(was.last_answer, since, now, error)

    def ended(self, sent_at: float) -> None:
        """A call that ended neither answered nor failed by the API (an error of our own): it waits no more."""
        with self._lock:
            self._ended(sent_at)

    def contact(self) -> ApiContact:
        with self._lock:
            waiting = min(self._waiting) if self._waiting else None
            return replace(self._contact, waiting_since=waiting)


def liveness_problem(contact: ApiContact, *, now: float, limit_seconds: float, recent_seconds: float) -> str | None:
    """Why the operator is not live, or None: no call sent for `limit_seconds` has been answered — one failed
    then and none answered since (the latest failure within `recent_seconds`: an idle operator whose one call
    failed long ago proves nothing, the probe's own ping decides), or one still waits for its answer."""
    starts = [t for t in (contact.failing_since, contact.waiting_since) if t is not None]
    if not starts:
        return None
    waiting = contact.waiting_since is not None and (contact.last_answer is None
                                                     or contact.waiting_since >= contact.last_answer)  # fmt: skip
    failing_now = contact.last_failure is not None and now - contact.last_failure <= recent_seconds
    if not (waiting or (contact.failing_since is not None and failing_now)):
        return None
    since = min(starts) if contact.last_answer is None else max(min(starts), contact.last_answer)
    down = now - since
    if down < limit_seconds:
        return None
    last = contact.last_error if contact.failing_since is not None else ""
    detail = f"last error: {last}" if last else f"a call sent {now - (contact.waiting_since or since):.0f} s ago waits"
    return f"no answer from the Kubernetes API for {down:.0f} s; {detail}"


class Kube:
    """A thin synchronous API client; async handlers call it through `asyncio.to_thread`."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client
        self._api.user_agent = USER_AGENT
        self.reachability = Reachability()

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
        timeout: tuple[float, float] = REQUEST_TIMEOUT_SECONDS,
    ) -> Manifest:
        method, url, headers, serialized, _ = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        sent = self.reachability.sent()
        answered, failure = False, None
        try:
            response = self._api.call_api(method, url, header_params=headers, body=serialized, _request_timeout=timeout)
            data = response.read()  # type: ignore[no-untyped-call]
            answered = True
        except ApiException as error:  # a 429 the client raised itself, or its wrapper of a TLS failure
            answered = bool(error.status)
            failure = None if answered else _one_line(str(error.reason))
            raise
        except (TransportError, OSError) as error:
            failure = transport_message(error)
            raise
        finally:
            if answered:
                self.reachability.answered(sent)
            elif failure is not None:
                self.reachability.failed(failure, sent)
            else:
                self.reachability.ended(sent)  # ended by something else than the API (cancelled, our own bug)
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
    def create(self, manifest: Manifest) -> Manifest:
        """POST a new object (a 409 says it exists already)."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        return self._call("POST", path, body=manifest, query=[("fieldManager", FIELD_MANAGER)])

    @mapped
    def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str, body: Manifest) -> Manifest:
        """A JSON merge patch; a `metadata.resourceVersion` in `body` makes it conditional (409 when stale)."""
        return self._call(
            "PATCH",
            resource_path(api_version, kind, namespace, name),
            body=body,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    @mapped
    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str,
               resource_version: str | None) -> None:  # fmt: skip
        """Delete exactly the object we read (409 when it changed since; without a resource version, any
        version of that object); a missing one is already gone."""
        preconditions = {"uid": uid} if resource_version is None else {"uid": uid, "resourceVersion": resource_version}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                "preconditions": preconditions}  # fmt: skip
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except ApiException as error:
            if error.status != 404:
                raise

    @mapped
    def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int) -> str:
        """The last lines of a container's log (through the apiserver, from the node's kubelet)."""
        path = resource_path("v1", "Pod", namespace, name) + "/log"
        query = [("container", container), ("tailLines", str(tail_lines)), ("limitBytes", "65536")]
        method, url, headers, _, _ = self._api.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "*/*"}, auth_settings=["BearerToken"]
        )
        sent = self.reachability.sent()
        try:
            response = self._api.call_api(method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            data: bytes = response.read()  # type: ignore[no-untyped-call]
        except (TransportError, OSError) as error:
            self.reachability.failed(transport_message(error), sent)
            raise
        self.reachability.answered(sent)
        if response.status >= 400:
            raise ApiException(http_resp=response)
        return data.decode(errors="replace")

    @mapped
    def ping(self) -> str:
        """GET /version, which every identity may read: whether the apiserver answers (for liveness)."""
        return str(self._call("GET", "/version", timeout=PING_TIMEOUT_SECONDS).get("gitVersion", ""))

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
