"""A real Prometheus (Debian's ``prometheus`` package) scraping the dev cluster's pods.

It discovers the pods of our apiserver and scrapes those the operator marks, with the
relabelling a real cluster's "kubernetes-pods" job (``kubernetes_sd_configs``, role ``pod``)
uses. Debian builds Prometheus without Kubernetes discovery, so the pods come through
``http_sd_configs`` from ``pod_discovery.PodDiscoveryBridge``, which lists them with the admin
certificate and sets the same ``__meta_kubernetes_pod_*`` labels. The rules:

- ``prometheus.io/scrape: "true"`` keeps a pod (init containers are dropped);
- the address is the pod IP with the port of ``prometheus.io/port``;
- the path is ``prometheus.io/path`` (default ``/metrics``).

Series carry these labels (besides ``job="kubernetes-pods"`` and ``instance``):

- ``namespace``: the pod's namespace;
- ``pod``: the pod's name;
- every pod label, its name sanitised by Prometheus (anything but ``[a-zA-Z0-9_]`` becomes ``_``):
  ``llamaops.io/deployment`` -> ``llamaops_io_deployment``, ``llamaops.io/engine`` ->
  ``llamaops_io_engine``, ``app.kubernetes.io/name`` -> ``app_kubernetes_io_name``.

So one LlamaDeployment's llama.cpp queue is
``llamacpp:requests_deferred{namespace="<ns>", llamaops_io_deployment="<name>"}``.

The process listens on 127.0.0.1 (a free port) and keeps its data in a temporary folder that
``stop()`` removes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes.client import ApiClient

from llama_operator_dev.errors import DevClusterError
from llama_operator_dev.pod_discovery import PodDiscoveryBridge
from llama_operator_dev.processes import HealthEndpoint, ManagedProcess, free_loopback_port

LOGGER = logging.getLogger(__name__)

PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
JOB_NAME = "kubernetes-pods"
LABEL_NAMESPACE = "namespace"
LABEL_POD = "pod"
STOP_GRACE_SECONDS = 10.0
QUERY_TIMEOUT_SECONDS = 10.0


class PrometheusMissingError(DevClusterError):
    """The prometheus binary is not installed."""


class PrometheusQueryError(DevClusterError):
    """Prometheus refused a query or did not answer."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector."""

    labels: dict[str, str]
    value: float
    timestamp: float


def _seconds(value: float) -> str:
    """A Prometheus duration: whole seconds as ``2s``, anything else in milliseconds."""
    return f"{int(value)}s" if float(value).is_integer() else f"{round(value * 1000)}ms"


def scrape_config(pod_discovery_url: str, scrape_interval_seconds: float = 1.0) -> dict[str, Any]:
    """The ``prometheus.yml`` that scrapes the annotated pods the discovery URL lists."""
    interval = _seconds(scrape_interval_seconds)
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "http_sd_configs": [{"url": pod_discovery_url, "refresh_interval": interval}],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "regex": "true",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_container_init"], "regex": "true", "action": "drop"},
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_ip",
                            "__meta_kubernetes_pod_annotation_prometheus_io_port",
                        ],
                        "regex": r"(.+);(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": LABEL_NAMESPACE},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": LABEL_POD},
                ],
            }
        ],
    }


class Prometheus:
    """One Prometheus process, its config generated, on a free loopback port."""

    def __init__(
        self,
        new_api_client: Callable[[], ApiClient],
        logs_dir: Path,
        *,
        scrape_interval_seconds: float = 1.0,
        binary: Path = PROMETHEUS_BINARY,
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        self._discovery = PodDiscoveryBridge(new_api_client)
        self.logs_dir = logs_dir
        self.scrape_interval_seconds = scrape_interval_seconds
        self.binary = binary
        self.startup_timeout_seconds = startup_timeout_seconds
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._data_dir: Path | None = None
        self._process: ManagedProcess | None = None

    @staticmethod
    def available(binary: Path = PROMETHEUS_BINARY) -> bool:
        return binary.is_file()

    def start(self) -> None:
        if not self.available(self.binary):
            raise PrometheusMissingError(
                f"{self.binary} is missing; install Debian's package: apt-get install -y prometheus"
            )
        self._discovery.start()
        self._data_dir = Path(tempfile.mkdtemp(prefix="llama-operator-prometheus-"))
        config_file = self._data_dir / "prometheus.yml"
        config = scrape_config(self._discovery.url, self.scrape_interval_seconds)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        command = [
            str(self.binary),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self._data_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        self._process = ManagedProcess("prometheus", command, self.logs_dir / "prometheus.log")
        pid = self._process.start()
        waited = self._process.wait_until_healthy(HealthEndpoint(f"{self.url}/-/ready"), self.startup_timeout_seconds)
        LOGGER.info("prometheus (pid %d) ready at %s after %.1fs", pid, self.url, waited)

    def stop(self) -> None:
        if self._process is not None:
            exit_code = self._process.stop(STOP_GRACE_SECONDS)
            LOGGER.info("stopped prometheus (pid %s, exit status %s)", self._process.pid, exit_code)
        self._discovery.stop()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines) if self._process is not None else ""

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = httpx.get(f"{self.url}{path}", params=params, timeout=QUERY_TIMEOUT_SECONDS)
        except httpx.HTTPError as error:
            raise PrometheusQueryError(f"GET {path} at {self.url}: {error}") from error
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != httpx.codes.OK or body.get("status") != "success":
            raise PrometheusQueryError(
                f"GET {path} {params or ''}: HTTP {response.status_code}: {body.get('error') or response.text[:500]}"
            )
        return body["data"]

    def query(self, promql: str) -> list[Sample]:
        """Evaluate an instant PromQL query; a vector's samples, or one sample for a scalar."""
        data = self._get("/api/v1/query", {"query": promql})
        if data["resultType"] == "vector":
            return [
                Sample(labels=dict(item["metric"]), value=float(item["value"][1]), timestamp=float(item["value"][0]))
                for item in data["result"]
            ]
        if data["resultType"] == "scalar":
            timestamp, value = data["result"]
            return [Sample(labels={}, value=float(value), timestamp=float(timestamp))]
        raise PrometheusQueryError(f"query {promql!r} returned a {data['resultType']}, not a vector or scalar")

    def active_targets(self) -> list[dict[str, Any]]:
        """The scrape targets Prometheus discovered, with their health and last error."""
        targets: list[dict[str, Any]] = self._get("/api/v1/targets", {"state": "active"})["activeTargets"]
        return targets
