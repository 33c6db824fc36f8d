"""`Kube` against a local HTTP server that answers as the apiserver does: paths, Secrets, and errors that
leave the module as our own, one line each."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from llama_operator.kube import Kube, RejectedError, UnreachableError, plural_of, resource_path

Answer = tuple[int, dict[str, Any]]
TOKEN = "s3cr3t-bearer-value"


class FakeApiserver(ThreadingHTTPServer):
    """Answers GETs and PATCHes from `answers` (path -> status, JSON body); 404 for any other path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), AnswerFromTable)
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []


class AnswerFromTable(BaseHTTPRequestHandler):
    server: FakeApiserver

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        self.server.requests.append(f"{self.command} {path}")
        status, body = self.server.answers.get(path, (404, {"kind": "Status", "message": "not found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _answer  # noqa: N815 - http.server's names
    do_PATCH = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    server = FakeApiserver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def kube_at(host: str) -> Kube:
    configuration = client.Configuration()
    configuration.host = host
    configuration.retries = 0
    return Kube(client.ApiClient(configuration))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_every_kind_resolves_to_its_resource_path() -> None:
    assert resource_path("v1", "Secret", "ns", "prom") == "/api/v1/namespaces/ns/secrets/prom"
    assert resource_path("apps/v1", "Deployment", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert plural_of("v1", "ConfigMap") == "configmaps"  # not in the table: the apiserver's regular plural
    assert plural_of("networking.k8s.io/v1", "NetworkPolicy") == "networkpolicies"
    assert plural_of("networking.k8s.io/v1", "Ingress") == "ingresses"
    assert plural_of("gateway.networking.k8s.io/v1", "Gateway") == "gateways"


def test_a_prometheus_token_is_read_from_its_secret_and_never_logged(
    apiserver: FakeApiserver, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = base64.b64encode(f"{TOKEN}\n".encode()).decode()
    apiserver.answers["/api/v1/namespaces/team/secrets/prometheus-reader"] = (
        200, {"apiVersion": "v1", "kind": "Secret", "data": {"token": encoded}},
    )  # fmt: skip
    kube = kube_at(f"http://127.0.0.1:{apiserver.server_address[1]}")
    with caplog.at_level(logging.DEBUG):
        assert kube.read_secret_key("team", "prometheus-reader", "token") == f"{TOKEN}\n"
        assert kube.read_secret_key("team", "prometheus-reader", "other") is None
        assert kube.read_secret_key("team", "missing", "token") is None  # 404: no Secret
    assert apiserver.requests[0] == "GET /api/v1/namespaces/team/secrets/prometheus-reader"
    assert TOKEN not in caplog.text
    assert encoded not in caplog.text


def test_an_invalid_child_is_rejected_with_the_apiservers_own_message(apiserver: FakeApiserver) -> None:
    message = ('Deployment.apps "chat" is invalid: spec.template.spec.tolerations[0].operator: Unsupported value: '
               '"Equals": supported values: "Equal", "Exists"')  # fmt: skip
    apiserver.answers["/apis/apps/v1/namespaces/ns/deployments/chat"] = (
        422, {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422, "message": message},
    )  # fmt: skip
    kube = kube_at(f"http://127.0.0.1:{apiserver.server_address[1]}")
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": "ns"}}
    with pytest.raises(RejectedError) as refused:
        kube.apply(deployment)
    assert refused.value.status == 422
    assert refused.value.message == message
    assert kube.reachability.contact().failing_since is None, "a refusal is an answer: the apiserver is reachable"


def test_no_answer_is_one_line_of_our_own_error_and_counts_against_liveness() -> None:
    kube = kube_at(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(UnreachableError) as unreachable:
        kube.get("v1", "Secret", "team", "prometheus-reader")
    text = str(unreachable.value)
    assert "\n" not in text
    assert text.startswith("0 Unreachable: ConnectionRefusedError"), text
    assert "HTTPConnectionPool" not in text  # the innermost cause, not urllib3's nesting of it
    contact = kube.reachability.contact()
    assert contact.failing_since is not None
    assert contact.last_answer is None
    with pytest.raises(UnreachableError):
        kube.ping()
    assert kube.reachability.contact().failing_since == contact.failing_since, "the first failure counts"


def test_an_answer_ends_a_run_of_failures(apiserver: FakeApiserver) -> None:
    apiserver.answers["/version"] = (200, {"gitVersion": "v1.36.3"})
    kube = kube_at(f"http://127.0.0.1:{apiserver.server_address[1]}")
    kube.reachability.failed("ConnectionRefusedError: [Errno 111] Connection refused")
    assert kube.ping() == "v1.36.3"
    contact = kube.reachability.contact()
    assert contact.failing_since is None
    assert contact.last_answer is not None


def test_every_call_of_kube_maps_its_errors() -> None:
    """A method that reaches the API and is not `mapped` lets urllib3's exceptions (and their tracebacks)
    out of this module."""
    calls = {name: fn for name, fn in vars(Kube).items() if callable(fn) and not name.startswith("_")}
    assert {"apply", "get", "list", "ping", "read_secret_key", "patch_llamadeployment_status"} <= set(calls)
    unmapped = [name for name, fn in calls.items() if not hasattr(fn, "__wrapped__")]
    assert unmapped == []
