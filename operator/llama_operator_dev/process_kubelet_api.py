"""The few API calls the process-backed kubelet (and the pod discovery bridge) make, on plain dicts.

Each call is one HTTP request through the official client's transport (its TLS settings and
connection pool); bodies and answers are JSON dicts, errors are the client's ``ApiException``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

Manifest = dict[str, Any]
LOGGER = logging.getLogger(__name__)

FIELD_MANAGER = "process-backed-kubelet"
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
# Errors that mean "the API did not answer this time": callers log them and try again later.
API_ERRORS = (ApiException, HTTPError, OSError)


class KubeletApi:
    """Nodes, leases and pods, as a kubelet sees them."""

    def __init__(self, api_client: ApiClient) -> None:
        self._api = api_client
        self._streams: set[Any] = set()
        self._streams_lock = threading.Lock()

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: object | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout_seconds: float = 30.0,
    ) -> Any:
        method, url, headers, serialized, _ = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self._api.call_api(method, url, header_params=headers, body=serialized, _request_timeout=timeout_seconds)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: object | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        response = self._send(method, path, body=body, query=query, content_type=content_type)
        data = response.read()
        if response.status >= 400:
            raise ApiException(http_resp=response)
        result: Manifest = json.loads(data) if data else {}
        return result

    # -- nodes --------------------------------------------------------------------------------

    def list_nodes(self, label_selector: str) -> list[Manifest]:
        items: list[Manifest] = self._call("GET", "/api/v1/nodes", query=[("labelSelector", label_selector)])["items"]
        return items

    def patch_node(self, name: str, patch: Manifest) -> None:
        self._call("PATCH", f"/api/v1/nodes/{quote(name)}", body=patch, content_type="application/merge-patch+json")

    def patch_node_status(self, name: str, patch: Manifest) -> None:
        self._call(
            "PATCH", f"/api/v1/nodes/{quote(name)}/status", body=patch, content_type="application/merge-patch+json"
        )

    def apply_lease(self, lease: Manifest) -> None:
        """Create or renew a node Lease (server-side apply)."""
        meta = lease["metadata"]
        path = f"/apis/coordination.k8s.io/v1/namespaces/{meta['namespace']}/leases/{quote(meta['name'])}"
        self._call(
            "PATCH",
            path,
            body=lease,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    # -- pods ---------------------------------------------------------------------------------

    def list_all_pods(self) -> list[Manifest]:
        items: list[Manifest] = self._call("GET", "/api/v1/pods")["items"]
        return items

    def list_pods_on(self, node_name: str) -> list[Manifest]:
        query = [("fieldSelector", f"spec.nodeName={node_name}")]
        items: list[Manifest] = self._call("GET", "/api/v1/pods", query=query)["items"]
        return items

    def watch_pods_on(self, node_name: str, timeout_seconds: int) -> Iterator[Manifest]:
        """Watch events of the pods bound to one node; ends after ``timeout_seconds`` (server side)."""
        return self.watch_pods(f"spec.nodeName={node_name}", timeout_seconds)

    def watch_pods(self, field_selector: str, timeout_seconds: int) -> Iterator[Manifest]:
        """Watch events of the pods ``field_selector`` selects, in every namespace; starts with an ADDED
        event per pod selected now and ends after ``timeout_seconds`` (server side)."""
        query = [
            ("fieldSelector", field_selector),
            ("watch", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        response = self._send("GET", "/api/v1/pods", query=query, timeout_seconds=timeout_seconds + 5)
        with self._streams_lock:
            self._streams.add(response.response)
        try:
            if response.status >= 400:
                response.read()
                raise ApiException(http_resp=response)
            buffer = b""
            for chunk in response.response.stream(amt=None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event: Manifest = json.loads(line)
                        yield event
        finally:
            with self._streams_lock:
                self._streams.discard(response.response)
            response.response.release_conn()

    def interrupt_watches(self) -> None:
        """Make every watch of this client end now (instead of at its timeout)."""
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            shutdown = getattr(stream, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                try:
                    shutdown()
                except OSError:  # the watch closed its socket itself meanwhile (EBADF): it has ended
                    LOGGER.debug("a watch stream was already closed")

    def read(self, path: str) -> Manifest | None:
        """Any object by its API path (``/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME``); None when it is gone."""
        try:
            return self._call("GET", path)
        except ApiException as error:
            if error.status == HTTP_NOT_FOUND:
                return None
            raise

    def patch_pod_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/status"
        # Strategic merge: conditions merge by type, so conditions others own (PodScheduled, readiness
        # gates) stay as they are; container statuses are replaced whole.
        return self._call("PATCH", path, body={"status": status}, content_type="application/strategic-merge-patch+json")

    def create_event(self, event: Manifest) -> None:
        namespace = event["metadata"]["namespace"]
        self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=event)

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's final delete: grace 0, only this incarnation of the pod (uid precondition)."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self._call("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", body=body)
        except ApiException as error:
            if error.status not in (HTTP_NOT_FOUND, HTTP_CONFLICT):  # already gone, or a new pod of that name
                raise
