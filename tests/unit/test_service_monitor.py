"""The ServiceMonitor the operator renders yields the labels the autoscaler's PromQL selects by.

The Prometheus Operator (v0.94.1, pkg/prometheus/promcfg.go) turns a ServiceMonitor into a scrape job
whose relabelling always sets `namespace` (from __meta_kubernetes_namespace) and `pod` (from
__meta_kubernetes_pod_name), and, for each `podTargetLabels` entry, copies
`__meta_kubernetes_pod_label_<name>` into the target label `<name>`, where <name> has every character
outside [a-zA-Z0-9_] replaced by `_` (its sanitizeLabelName). The model here follows those rules; the real
CRD's acceptance of the rendered object is in tests/integration/test_chart.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from llama_operator.api.parse import parse_spec
from llama_operator.autoscale.queries import DEPLOYMENT_LABEL, engine_queries
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from tests.unit.render_cases import EXAMPLES, INVENTORY

ALWAYS_SET = frozenset({"namespace", "pod", "service", "container", "endpoint"})


def sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def target_labels(monitor: dict[str, Any], pod_labels: dict[str, str]) -> set[str]:
    """The labels a scraped series carries, as the Prometheus Operator's relabelling sets them."""
    copied = {sanitized(label) for label in monitor["spec"].get("podTargetLabels", []) if label in pod_labels}
    return set(ALWAYS_SET) | copied


def selected_labels(query: str) -> set[str]:
    return set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', query))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_label_the_autoscaler_selects_by_is_set_by_the_rendered_monitor(path: Any) -> None:
    manifest = yaml.safe_load(path.read_text())
    name, spec = manifest["metadata"]["name"], parse_spec(manifest["spec"])
    decision = plan(spec, name, INVENTORY)
    found = render(name, "team-a", spec, decision, options=RenderOptions(service_monitor=True), owner=Owner(name, "u"))
    (monitor,) = [c for c in found if c["kind"] == "ServiceMonitor"]
    workload = found[0]
    template = (workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"] if workload["kind"] == "LeaderWorkerSet"
                else workload["spec"]["template"])  # fmt: skip
    carried = target_labels(monitor, template["metadata"]["labels"])
    assert DEPLOYMENT_LABEL in carried
    for kind in ("queue", "inFlight"):
        queries = engine_queries(decision.request.engine, kind, "team-a", name)
        for query in (queries.values, queries.timestamps):
            assert selected_labels(query) <= carried, query
            assert f'{DEPLOYMENT_LABEL}="{name}"' in query


def test_the_model_of_the_relabelling_would_miss_a_label_the_pods_lack() -> None:
    monitor = {"spec": {"podTargetLabels": ["llamaops.io/deployment"]}}
    assert DEPLOYMENT_LABEL not in target_labels(monitor, {})
    assert DEPLOYMENT_LABEL in target_labels(monitor, {"llamaops.io/deployment": "x"})
    assert selected_labels('m{namespace="a",llamaops_io_deployment="b"}') == {"namespace", DEPLOYMENT_LABEL}
