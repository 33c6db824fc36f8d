"""A bounded loopback load on a LlamaDeployment's ready pods, counting every failed request.

Clients pick among the pods a Service would route to: Ready (readiness gates included) and not
terminating, re-read from the API every 0.2 s. Every request is bounded in time, and the whole
load stops by itself after `max_seconds`.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client as kube_client

REFRESH_SECONDS = 0.2


def routable_pods(api_client: Any, namespace: str, name: str) -> list[str]:
    """`podIP:port` of the pods a Service would send traffic to."""
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={name}"
    )
    urls = []
    for pod in pods.items:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready and pod.metadata.deletion_timestamp is None and pod.status.pod_ip:
            port = next(p.container_port for p in pod.spec.containers[0].ports if p.name == "http")
            urls.append(f"http://{pod.status.pod_ip}:{port}")
    return urls


def generated(reply: dict[str, Any]) -> bool:
    """A chat completion with generated tokens: text, or (a tiny random model often emits whitespace or an
    end token at once) the engine's own count of completion tokens."""
    text = reply["choices"][0]["message"]["content"]
    return bool(text) or int((reply.get("usage") or {}).get("completion_tokens") or 0) >= 1


@dataclass
class LoadResult:
    succeeded: Counter[str] = field(default_factory=Counter)  # per pod URL
    failures: list[str] = field(default_factory=list)
    first_sent: float | None = None

    @property
    def total(self) -> int:
        return sum(self.succeeded.values()) + len(self.failures)


class Load:
    """`clients` threads sending chat requests until stopped or `max_seconds` have passed."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        body: Callable[[], dict[str, Any]],
        *,
        clients: int,
        max_seconds: float,
        request_timeout_seconds: float = 60.0,
    ) -> None:
        self.api_client, self.namespace, self.name = api_client, namespace, name
        self.body = body
        self.clients = clients
        self.deadline = time.monotonic() + max_seconds
        self.timeout = request_timeout_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._urls: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._refresh, daemon=True)] + [
            threading.Thread(target=self._client, daemon=True) for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        self._urls = routable_pods(self.api_client, self.namespace, self.name)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return self.result

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _refresh(self) -> None:
        while self._running():
            urls = routable_pods(self.api_client, self.namespace, self.name)
            with self._lock:
                self._urls = urls
            self._stop.wait(REFRESH_SECONDS)

    def _client(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while self._running():
                with self._lock:
                    urls = list(self._urls)
                if not urls:
                    self._stop.wait(0.05)
                    continue
                url = random.choice(urls)  # noqa: S311 - load spreading, not security
                with self._lock:
                    if self.result.first_sent is None:
                        self.result.first_sent = time.time()
                try:
                    response = http.post(f"{url}/v1/chat/completions", json=self.body())
                    ok = response.status_code == 200 and generated(response.json())
                    detail = f"{url}: HTTP {response.status_code} {response.text[:120]}"
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
                    ok, detail = False, f"{url}: {error.__class__.__name__}: {error}"
                with self._lock:
                    if ok:
                        self.result.succeeded[url] += 1
                    else:
                        self.result.failures.append(detail)
