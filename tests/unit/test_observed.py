"""The comparison that decides whether a child is applied: what the server adds is fine, what we set must hold."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from llama_operator.observed import child_record, contains, needs_apply, slim_pod

DESIRED_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "1"}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "engine",
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "0.5Gi"}, "requests": {"cpu": 0.5}},
                    }
                ],
                "securityContext": {},
            }
        },
    },
}


def _as_served() -> dict[str, object]:
    """The desired Deployment as the apiserver returns it: defaults added, quantities canonical."""
    served = json.loads(json.dumps(DESIRED_DEPLOYMENT))
    served["metadata"].update(resourceVersion="42", uid="u", generation=1, managedFields=[{"manager": "x"}])
    container = served["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["protocol"] = "TCP"
    container["terminationMessagePath"] = "/dev/termination-log"
    container["resources"] = {"limits": {"nvidia.com/gpu": "1", "memory": "512Mi"}, "requests": {"cpu": "500m"}}
    del served["spec"]["template"]["spec"]["securityContext"]
    served["spec"]["progressDeadlineSeconds"] = 600
    served["status"] = {"replicas": 2}
    return served


def test_a_child_as_the_server_returns_it_is_not_applied_again() -> None:
    assert not needs_apply(DESIRED_DEPLOYMENT, child_record(_as_served()))


def test_a_hand_edit_of_a_field_we_set_is_applied_back() -> None:
    served = _as_served()
    served["spec"]["replicas"] = 5  # type: ignore[index]
    assert needs_apply(DESIRED_DEPLOYMENT, child_record(served))


def test_a_removed_container_port_is_applied_back() -> None:
    served = _as_served()
    served["spec"]["template"]["spec"]["containers"][0]["ports"] = []  # type: ignore[index]
    assert needs_apply(DESIRED_DEPLOYMENT, child_record(served))


def test_a_missing_child_is_applied() -> None:
    assert needs_apply(DESIRED_DEPLOYMENT, None)


def test_the_cached_child_drops_managed_fields_and_keeps_the_workload_status() -> None:
    record = child_record(_as_served())
    assert "managedFields" not in record.body["metadata"]
    assert "status" not in record.body
    assert record.as_workload() == {"metadata": {"name": "m", "generation": 1}, "status": {"replicas": 2}}
    assert record.resource_version == 42


def test_quantities_compare_by_value_not_by_spelling() -> None:
    assert contains("1k", 1000)
    assert contains("2Gi", "2048Mi")
    assert not contains("2Gi", "2G")
    assert not contains("true", True)


def test_a_pod_keeps_only_what_status_and_rollouts_read() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"llamaops.io/deployment": "m", "x": "y"},
                     "annotations": {"llamaops.io/adapters": "a@v1", "big": "z" * 1000}, "resourceVersion": "7"},
        "spec": {"nodeName": "n1", "containers": [{"name": "engine", "image": "i", "ports": [{"containerPort": 1}]}],
                 "volumes": [{"name": "v"}]},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}], "qosClass": "Burstable"},
    }  # fmt: skip
    slim = slim_pod(pod)
    assert slim["metadata"]["annotations"] == {"llamaops.io/adapters": "a@v1"}
    assert slim["spec"] == {"nodeName": "n1", "containers": [{"name": "engine", "ports": [{"containerPort": 1}]}]}
    assert slim["status"] == {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=12,
)


@given(json_value)
def test_every_value_contains_itself(value: object) -> None:
    assert contains(value, value)


@given(st.dictionaries(st.text(max_size=3), json_value, max_size=4), st.text(max_size=3), json_value)
def test_extra_server_fields_never_force_an_apply(desired: dict[str, object], key: str, extra: object) -> None:
    observed = {**desired}
    if key not in observed:
        observed[key] = extra
    assert contains(observed, desired)
