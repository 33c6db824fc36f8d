"""Control-plane outages under a running operator, on a plane of this module's own: the apiserver stopped
for 30 s and started again, the apiserver frozen (SIGSTOP) for 30 s, etcd stopped and started again.

Each outage begins right after a spec change (replicas 1 -> 2), so a reconcile is in flight or due. While
it lasts, the liveness endpoint tells the truth: 500 once the API has not answered for the limit (no
condition can be written while the apiserver or its store is gone; liveness and the log are what
report it). After it, the same operator process, never restarted, converges the change made before the
outage and a new object made after it (so its watches work again), liveness is 200 again, and the log
holds no traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes.client.exceptions import ApiException

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, poll_until, skip_without_binaries
from tests.integration.operator_process import OperatorProcess, running_operator
from tests.reliability import Recorder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "llamaops.io", "v1alpha1", "llamadeployments"
API_DOWN_SECONDS = 10  # the operator's liveness limit here (60 s by default)
OUTAGE_SECONDS = 30
RECOVERY_SECONDS = 120


@pytest.fixture(scope="module")
def outage_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A plane whose components the tests stop and freeze: never the shared one."""
    skip_without_binaries()
    with ControlPlane(tmp_path_factory.mktemp("outage-plane")) as plane:
        yield plane


@pytest.fixture(scope="module")
def outage_api(outage_plane: ControlPlane) -> Iterator[Any]:
    with outage_plane.new_api_client() as api_client:
        yield api_client


@pytest.fixture(scope="module")
def live_operator(
    outage_plane: ControlPlane, outage_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMA_OPERATOR_API_DOWN_SECONDS", str(API_DOWN_SECONDS))
        with running_operator(outage_plane, outage_api, tmp_path_factory.mktemp("outage-operator")) as operator:
            yield operator


def manifest(name: str) -> dict[str, Any]:
    """An example placed on the plane's KWOK GPU nodes (their pods turn Ready without an engine)."""
    body: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "examples" / "llama-3.1-8b-vllm-24gb.yaml").read_text())
    body["metadata"] = {"name": name}
    body["spec"].pop("hubTokenSecretRef", None)
    body["spec"]["replicas"] = 1
    return body


def ready(api_client: Any, namespace: str, name: str, replicas: int) -> bool | None:
    """The object observed at its generation with `replicas` ready, as the Deployment has them."""
    try:
        obj = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    except ApiException as error:
        if error.status in (404, 500, 503, 504):
            return None
        raise
    status = obj.get("status") or {}
    if (
        status.get("observedGeneration") != obj["metadata"]["generation"]
        or status.get("ready") != f"{replicas}/{replicas}"
    ):
        return None
    return True if (deployment.status.ready_replicas or 0) == replicas == deployment.spec.replicas else None


@dataclass(frozen=True)
class Outage:
    kind: str
    begin: Callable[[ControlPlane], None]
    end: Callable[[ControlPlane], object]
    seconds: float
    liveness_fails: bool  # whether the operator's calls stop being answered (not so for etcd alone)


OUTAGES = [
    Outage(
        "apiserver stopped for 30 s and started again",
        lambda p: p.stop_component("kube-apiserver"),
        lambda p: p.restart_component("kube-apiserver"),
        OUTAGE_SECONDS,
        liveness_fails=True,
    ),
    Outage(
        "apiserver frozen (SIGSTOP) for 30 s",
        lambda p: p.freeze_component("kube-apiserver"),
        lambda p: p.thaw_component("kube-apiserver"),
        OUTAGE_SECONDS,
        liveness_fails=True,
    ),
    Outage(
        "etcd stopped for 15 s and started again",
        lambda p: p.stop_component("etcd"),
        lambda p: p.restart_component("etcd"),
        15,
        liveness_fails=False,
    ),
]


@pytest.mark.parametrize("outage", OUTAGES, ids=["apiserver-stopped", "apiserver-frozen", "etcd-restarted"])
def test_the_operator_rides_out_the_outage_and_converges_by_itself(
    outage_plane: ControlPlane, outage_api: Any, live_operator: OperatorProcess, outage: Outage, ledger: Recorder
) -> None:
    assert live_operator.process is not None
    pid = live_operator.process.pid
    namespace = create_namespace(outage_api, prefix="outage")
    objects = kube_client.CustomObjectsApi(outage_api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest("before"))
    poll_until(lambda: ready(outage_api, namespace, "before", 1), RECOVERY_SECONDS, "the first object ready")
    assert live_operator.liveness() == 200
    log_offset = len(live_operator.log())

    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "before", {"spec": {"replicas": 2}})
    started = time.monotonic()
    outage.begin(outage_plane)
    answers: list[tuple[float, int]] = []
    try:
        while time.monotonic() - started < outage.seconds:
            answers.append((round(time.monotonic() - started, 1), live_operator.liveness()))
            time.sleep(1)
    finally:
        outage.end(outage_plane)
    back = time.monotonic()
    failing = [at for at, code in answers if code == 500]
    if outage.liveness_fails:
        assert failing, f"liveness never failed while {outage.kind}: {answers}"
        assert failing[0] >= API_DOWN_SECONDS - 1, f"liveness failed before the limit: {answers}"
    else:
        assert not failing, f"liveness failed while the apiserver still answered: {answers}"

    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest("after"))
    poll_until(lambda: ready(outage_api, namespace, "before", 2), RECOVERY_SECONDS, "the change made before")
    poll_until(lambda: ready(outage_api, namespace, "after", 1), RECOVERY_SECONDS, "the object made after")
    converged = time.monotonic() - back
    poll_until(lambda: True if live_operator.liveness() == 200 else None, RECOVERY_SECONDS, "liveness 200 again")
    assert live_operator.process.pid == pid
    assert live_operator.process.poll() is None, "the operator exited"
    outage_log = live_operator.log()[log_offset:]
    assert "Traceback" not in outage_log, outage_log[-3000:]
    said = f"liveness 500 from {failing[0]:.0f} s" if failing else "liveness stayed 200 (the apiserver answered)"
    ledger.outage(
        outage.kind,
        f"{said}; afterwards the same operator process converged the change made before and an object made "
        f"after in {converged:.0f} s, no traceback in its log",
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "before")
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "after")
