"""The dev cluster's Prometheus: pod discovery targets and the scrape config, as pure data."""

from __future__ import annotations

from typing import Any

from llama_operator_dev.pod_discovery import pod_target_groups, sanitize_label_name
from llama_operator_dev.prometheus import JOB_NAME, scrape_config


def rendered_pod(pod_ip: str | None = "127.0.1.3") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if pod_ip:
        status["podIP"] = pod_ip
    return {
        "metadata": {
            "name": "tiny-cpu-abc",
            "namespace": "demo",
            "uid": "u-1",
            "labels": {"llamaops.io/deployment": "tiny-cpu", "app.kubernetes.io/name": "llamacpp"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "8080",
                "prometheus.io/path": "/metrics",
            },
            "ownerReferences": [{"kind": "ReplicaSet", "name": "tiny-cpu-5d", "controller": True}],
        },
        "spec": {
            "nodeName": "kwok-cpu-real-0",
            "initContainers": [{"name": "fetch-model", "image": "curl"}],
            "containers": [{"name": "engine", "image": "llama", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": status,
    }


def test_label_names_are_sanitised_as_prometheus_does() -> None:
    assert sanitize_label_name("llamaops.io/deployment") == "llamaops_io_deployment"
    assert sanitize_label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"


def test_one_target_per_container_port_with_kubernetes_sd_meta_labels() -> None:
    init, engine = pod_target_groups([rendered_pod()])
    assert init["targets"] == ["127.0.1.3"]
    assert init["labels"]["__meta_kubernetes_pod_container_init"] == "true"
    assert engine["targets"] == ["127.0.1.3:8080"]
    labels = engine["labels"]
    assert labels["__meta_kubernetes_namespace"] == "demo"
    assert labels["__meta_kubernetes_pod_name"] == "tiny-cpu-abc"
    assert labels["__meta_kubernetes_pod_ip"] == "127.0.1.3"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert labels["__meta_kubernetes_pod_label_llamaops_io_deployment"] == "tiny-cpu"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_pod_annotationpresent_prometheus_io_port"] == "true"
    assert labels["__meta_kubernetes_pod_container_init"] == "false"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8080"
    assert labels["__meta_kubernetes_pod_controller_kind"] == "ReplicaSet"


def test_pods_without_an_address_are_not_targets() -> None:
    assert pod_target_groups([rendered_pod(pod_ip=None)]) == []


def test_scrape_config_keeps_annotated_pods_and_maps_their_labels() -> None:
    config = scrape_config("http://127.0.0.1:9999/pods", scrape_interval_seconds=0.5)
    assert config["global"] == {"scrape_interval": "500ms", "scrape_timeout": "500ms", "evaluation_interval": "500ms"}
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB_NAME
    assert job["http_sd_configs"] == [{"url": "http://127.0.0.1:9999/pods", "refresh_interval": "500ms"}]
    rules = job["relabel_configs"]
    assert rules[0] == {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
        "regex": "true",
        "action": "keep",
    }
    assert {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"} in rules
    targets = {rule.get("target_label") for rule in rules}
    assert {"__address__", "__metrics_path__", "namespace", "pod"} <= targets
    assert scrape_config("http://x/pods", 2.0)["global"]["scrape_interval"] == "2s"
