"""The process-backed kubelet's HTTPS server: ``containerLogs``, which the apiserver proxies pods/log to.

One server on 127.0.0.1 answers for every process-backed node (they all have InternalIP
127.0.0.1); each node's status carries its port in ``daemonEndpoints.kubeletEndpoint.Port``.
TLS with the ``kubelet-serving`` certificate of the cluster CA (the apiserver checks it with
``--kubelet-certificate-authority``); a client must show a certificate of the same CA, and its
common name must be one of ``allowed_clients`` (the apiserver's ``kube-apiserver-kubelet-client``
and the admin), else 403. No client certificate: the TLS handshake fails.

Answers, as a kubelet's: 200 with the log (``text/plain``), 400 when the container has no log
yet or there is no previous run, 404 (a plain message) for an unknown pod or container, or any
other path. ``follow=true`` keeps sending what the running container writes until it exits or
the client goes. Request rules are in ``process_pod_logs.py``.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llama_operator_dev.certs import CertificateFiles
from llama_operator_dev.process_pod_logs import (
    BadLogRequestError,
    LogRequest,
    chosen_log_file,
    log_excerpt,
    missing_log_message,
    parse_log_request,
)

LOGGER = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.2
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class PodLogSource:
    """What the server needs of one pod the kubelet runs."""

    pod_dir: Path
    containers: tuple[str, ...]  # init containers and containers
    waiting_reasons: dict[str, str]  # container -> why it waits ("" when it runs or ran)
    is_running: Callable[[str], bool]  # does this container's process run now


@dataclass(frozen=True)
class KubeletServerFiles:
    """The server's certificate, and the CA its clients' certificates must come from."""

    serving: CertificateFiles
    client_ca: Path
    allowed_clients: frozenset[str]


def server_tls_context(files: KubeletServerFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.serving.cert), str(files.serving.key))
    context.load_verify_locations(str(files.client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_common_name(peer_certificate: dict[str, Any] | None) -> str:
    """The CN of a client certificate as ``SSLSocket.getpeercert()`` gives it ("" when none)."""
    for rdn in (peer_certificate or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class KubeletLogServer:
    """Serves containerLogs for the pods ``find_pod(namespace, name)`` knows, until ``stop()``."""

    def __init__(
        self,
        files: KubeletServerFiles,
        find_pod: Callable[[str, str], PodLogSource | None],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._files = files
        self._find_pod = find_pod
        self._stop = threading.Event()
        handler = _handler_class(self)
        self._server = _QuietServer((host, port), handler)
        self._server.daemon_threads = True
        # The handshake happens on the first read, in the request's own thread.
        self._server.socket = server_tls_context(files).wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="process-kubelet logs", daemon=True)
        self._thread.start()
        LOGGER.info("process-backed kubelet serves containerLogs on https://127.0.0.1:%d", self.port)

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    # -- answers -----------------------------------------------------------------------------

    def allowed(self, common_name: str) -> bool:
        return common_name in self._files.allowed_clients

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        if url.path == "/healthz":
            _send_text(handler, HTTPStatus.OK, "ok")
            return
        try:
            request = parse_log_request(url.path, url.query)
        except BadLogRequestError as error:
            _send_text(handler, HTTPStatus.BAD_REQUEST, str(error))
            return
        if request is None:
            _send_text(handler, HTTPStatus.NOT_FOUND, f"404 page not found: {url.path}")
            return
        source = self._find_pod(request.namespace, request.pod)
        if source is None:
            _send_text(handler, HTTPStatus.NOT_FOUND, f'pod "{request.namespace}/{request.pod}" not found on this node')
            return
        if request.container not in source.containers:
            _send_text(
                handler, HTTPStatus.NOT_FOUND, f'container "{request.container}" not found in pod "{request.pod}"'
            )
            return
        names = [path.name for path in source.pod_dir.glob(f"{request.container}.*.log")]
        chosen = chosen_log_file(names, request.container, previous=request.previous)
        if chosen is None:
            reason = source.waiting_reasons.get(request.container, "")
            _send_text(handler, HTTPStatus.BAD_REQUEST, missing_log_message(request, reason))
            return
        self._send_log(handler, request, source, source.pod_dir / chosen)

    def _send_log(self, handler: BaseHTTPRequestHandler, request: LogRequest, source: PodLogSource, path: Path) -> None:
        data = path.read_bytes()
        body = log_excerpt(data, request.tail_lines, request.limit_bytes)
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", "text/plain")
        if not request.follow:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        if not request.follow:
            return
        # Follow: send what the current run appends while it runs (and the budget lasts).
        budget = None if request.limit_bytes is None else request.limit_bytes - len(body)
        offset = len(data)
        with path.open("rb") as log_file:
            while not self._stop.is_set() and (budget is None or budget > 0):
                log_file.seek(offset)
                chunk = log_file.read(CHUNK_BYTES if budget is None else min(CHUNK_BYTES, budget))
                if chunk:
                    offset += len(chunk)
                    budget = None if budget is None else budget - len(chunk)
                    handler.wfile.write(chunk)
                    handler.wfile.flush()
                    continue
                if request.previous or not source.is_running(request.container):
                    return
                time.sleep(FOLLOW_POLL_SECONDS)


def _send_text(handler: BaseHTTPRequestHandler, status: HTTPStatus, text: str) -> None:
    body = (text + "\n").encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _handler_class(server: KubeletLogServer) -> type[BaseHTTPRequestHandler]:
    class ContainerLogsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            connection: Any = self.connection
            common_name = peer_common_name(connection.getpeercert())
            if not server.allowed(common_name):
                _send_text(self, HTTPStatus.FORBIDDEN, f"user {common_name!r} may not read container logs here")
                return
            try:
                server.answer(self)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away (a follow ended)

        def log_message(self, format: str, *args: Any) -> None:
            LOGGER.debug("containerLogs %s: %s", self.address_string(), format % args)

    return ContainerLogsHandler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A refused handshake (no or a foreign client certificate) or a dropped client: one debug line."""
        error = sys.exc_info()[1]
        LOGGER.debug("containerLogs connection from %s ended: %r", client_address, error)
