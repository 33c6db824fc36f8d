"""Pod discovery for Debian's Prometheus: the apiserver's pods as HTTP service-discovery targets.

Debian builds its ``prometheus`` package without Kubernetes service discovery (its NEWS file:
"Kubernetes support has been completely removed"), so ``kubernetes_sd_configs`` does not parse
there. This bridge serves the pods of our apiserver on loopback in Prometheus' HTTP SD format,
one target per container port, with the meta labels Prometheus' own ``role: pod`` discovery sets
(``__meta_kubernetes_namespace``, ``__meta_kubernetes_pod_name``, ``__meta_kubernetes_pod_ip``,
``__meta_kubernetes_pod_label_<name>``, ``__meta_kubernetes_pod_annotation_<name>``,
``__meta_kubernetes_pod_container_*`` ...). The relabelling rules in ``prometheus.py`` are
therefore the ones a real cluster's ``kubernetes_sd_configs`` job uses, unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes.client import ApiClient

from llama_operator_dev.process_kubelet_api import API_ERRORS, KubeletApi
from llama_operator_dev.processes import free_loopback_port

LOGGER = logging.getLogger(__name__)

Manifest = dict[str, Any]
META = "__meta_kubernetes_"
TARGETS_PATH = "/pods"


def sanitize_label_name(name: str) -> str:
    """Prometheus' rule for a Kubernetes label or annotation name: anything but ``[a-zA-Z0-9_]`` -> ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _pod_labels(pod: Manifest) -> dict[str, str]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "unknown")
    labels = {
        f"{META}namespace": str(meta.get("namespace", "")),
        f"{META}pod_name": str(meta.get("name", "")),
        f"{META}pod_ip": str(status.get("podIP", "")),
        f"{META}pod_uid": str(meta.get("uid", "")),
        f"{META}pod_node_name": str((pod.get("spec") or {}).get("nodeName", "")),
        f"{META}pod_host_ip": str(status.get("hostIP", "")),
        f"{META}pod_phase": str(status.get("phase", "")),
        f"{META}pod_ready": str(ready).lower(),
    }
    for key, value in (meta.get("labels") or {}).items():
        labels[f"{META}pod_label_{sanitize_label_name(key)}"] = str(value)
        labels[f"{META}pod_labelpresent_{sanitize_label_name(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        labels[f"{META}pod_annotation_{sanitize_label_name(key)}"] = str(value)
        labels[f"{META}pod_annotationpresent_{sanitize_label_name(key)}"] = "true"
    controller = next((ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")), None)
    if controller is not None:
        labels[f"{META}pod_controller_kind"] = str(controller.get("kind", ""))
        labels[f"{META}pod_controller_name"] = str(controller.get("name", ""))
    return labels


def pod_target_groups(pods: Iterable[Manifest]) -> list[Manifest]:
    """HTTP SD target groups: one per container port (one per container without ports), pods with an IP only."""
    groups: list[Manifest] = []
    for pod in pods:
        pod_ip = (pod.get("status") or {}).get("podIP")
        if not pod_ip:
            continue
        spec = pod.get("spec") or {}
        base = _pod_labels(pod)
        containers = [(c, "true") for c in spec.get("initContainers") or []] + [
            (c, "false") for c in spec.get("containers") or []
        ]
        for container, init in containers:
            container_labels = {
                **base,
                f"{META}pod_container_name": str(container.get("name", "")),
                f"{META}pod_container_image": str(container.get("image", "")),
                f"{META}pod_container_init": init,
            }
            ports = container.get("ports") or []
            if not ports:
                groups.append({"targets": [str(pod_ip)], "labels": container_labels})
            for port in ports:
                number = int(port["containerPort"])
                labels = {
                    **container_labels,
                    f"{META}pod_container_port_name": str(port.get("name", "")),
                    f"{META}pod_container_port_number": str(number),
                    f"{META}pod_container_port_protocol": str(port.get("protocol", "TCP")),
                }
                groups.append({"targets": [f"{pod_ip}:{number}"], "labels": labels})
    return groups


class PodDiscoveryBridge:
    """Serves ``GET /pods`` on 127.0.0.1 (a free port) from a fresh list of the apiserver's pods."""

    def __init__(self, new_api_client: Callable[[], ApiClient]) -> None:
        self._api_client = new_api_client()
        self._api = KubeletApi(self._api_client)
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}{TARGETS_PATH}"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != TARGETS_PATH:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                try:
                    body = json.dumps(pod_target_groups(bridge._api.list_all_pods())).encode()
                except API_ERRORS as error:
                    LOGGER.warning("pod discovery: listing pods failed: %s", error)
                    self.send_error(HTTPStatus.BAD_GATEWAY, str(error))
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # Prometheus stopped while it asked
                    LOGGER.debug("pod discovery: the client went away before the answer")

            def log_message(self, format: str, *args: Any) -> None:
                LOGGER.debug("pod discovery: %s %s", format, args)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="pod discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._api_client.close()  # type: ignore[no-untyped-call]
