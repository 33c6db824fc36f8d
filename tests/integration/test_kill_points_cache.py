"""The operator SIGKILLed at every step of the shared model cache (`cache.*` kill points) converges: one
claim, filled once by one Job, joined and left by its users, deleted with its Job by the last one.

On the process-backed pool with real llama-server pods and the local hub: `first` creates the cache (claim,
Job, download), `second` joins it, `first` turns its cache off (it leaves: the claim keeps one owner),
`second` turns its cache off (the last user deletes the claim, which takes its Job along). The machinery
is `kill_trials`; only the `cache.` points get trials here (the other steps have their own scenarios).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from llama_operator.cache_names import cache_claim_name
from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import install_crd
from tests.integration.kill_trials import Scenario, check_quiet, converging_step, survive_every_point
from tests.integration.serving_fixtures import GROUP, PLURAL, VERSION, ServingAssets, get_llamadeployment
from tests.integration.test_model_cache import cached_deployment, claims, ready_with
from tests.reliability import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.own_plane("llamacpp")]

FULL = os.environ.get("LLAMA_OPERATOR_RELIABILITY_FULL") == "1"
MAX_OCCURRENCE = 1  # each write happens once in this scenario
# Each trial's pods (two objects and a surge, 4 CPUs each) fill the process-backed pool: one trial at a time
# (about a minute each). `.ci/run` tries the point after each write (the write done, the pass not finished);
# `make reliability` the points before them too.
AFTER_WRITES = ("cache.claim:create:after", "cache.job:create:after", "cache.claim:join:after",
                "cache.claim:leave:after", "cache.claim:delete:after", "cache.job:delete:after")  # fmt: skip
POINT_PREFIX: str | tuple[str, ...] = "cache." if FULL else AFTER_WRITES
MIN_POINTS = 12 if FULL else len(AFTER_WRITES)
FIRST, SECOND = "first", "second"


def custom(api_client: Any) -> Any:
    return kube_client.CustomObjectsApi(api_client)


def owners(api_client: Any, namespace: str) -> list[list[str]] | None:
    """The LlamaDeployment owners of each cache claim in the namespace (None while one is being deleted)."""
    found = []
    for claim in claims(api_client, namespace):
        if claim.metadata.deletion_timestamp is not None:
            return None
        found.append(sorted(r.name for r in claim.metadata.owner_references or [] if r.kind == "LlamaDeployment"))
    return found


def jobs(api_client: Any, namespace: str) -> list[Any]:
    return list(kube_client.BatchV1Api(api_client).list_namespaced_job(namespace).items)


def ready(api_client: Any, namespace: str, name: str, *, cached: bool) -> bool:
    obj = get_llamadeployment(api_client, namespace, name)
    cache = (obj.get("status") or {}).get("modelCache")
    pods = kube_client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/deployment={name}"
    )
    uses_claim = [any(v.persistent_volume_claim is not None for v in p.spec.volumes or []) for p in pods.items]
    settled = bool(uses_claim) and all(u == cached for u in uses_claim)  # the rollout off (or onto) the cache is over
    return ready_with(1)(obj) and settled and ((cache or {}).get("phase") == "Ready" if cached else cache is None)


def scenario(config: Path, assets: ServingAssets) -> Scenario:
    source = assets.model_source()

    def create(name: str) -> Callable[[Any, str], None]:
        return lambda api, ns: custom(api).create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, cached_deployment(name, assets, source, cache=True)
        )

    def cache_off(name: str) -> Callable[[Any, str], None]:
        return lambda api, ns: custom(api).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, {"spec": {"model": {"cache": None}}}
        )

    def state(api: Any, ns: str, *, cached: dict[str, bool], users: list[list[str]]) -> bool | None:
        if any(not ready(api, ns, name, cached=on) for name, on in cached.items()):
            return None
        return True if owners(api, ns) == users and len(jobs(api, ns)) == len(users) else None

    return Scenario(
        name="model cache scenario",
        object_name=SECOND,
        steps=(
            converging_step("create first with a cache", create(FIRST), state, cached={FIRST: True}, users=[[FIRST]]),
            converging_step(
                "create second of the same source",
                create(SECOND),
                state,
                cached={FIRST: True, SECOND: True},
                users=[[FIRST, SECOND]],
            ),
            converging_step(
                "first turns its cache off",
                cache_off(FIRST),
                state,
                cached={FIRST: False, SECOND: True},
                users=[[SECOND]],
            ),
            converging_step(
                "second turns its cache off", cache_off(SECOND), state, cached={FIRST: False, SECOND: False}, users=[]
            ),
        ),
        check_result=lambda api, ns: check_result(api, ns, source),
        held="one claim and one Job at a time, joined, left and deleted with its Job; then quiet",
        config=config,
        step_timeout_seconds=120.0,
        point_prefix=POINT_PREFIX,
        trials_at_once=1,
    )


def check_result(api_client: Any, namespace: str, source: str) -> None:
    """No claim, Job or download pod left; each object's children owned by it alone; then quiet."""
    assert claims(api_client, namespace) == []
    assert jobs(api_client, namespace) == []
    core = kube_client.CoreV1Api(api_client)
    leftover = core.list_namespaced_pod(
        namespace, label_selector=f"llamaops.io/model-cache={cache_claim_name(source, 'gguf')}"
    )
    assert [p.metadata.name for p in leftover.items if p.metadata.deletion_timestamp is None] == []
    for name in (FIRST, SECOND):
        uid = get_llamadeployment(api_client, namespace, name)["metadata"]["uid"]
        deployment = kube_client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
        assert [(o.uid, o.controller) for o in deployment.metadata.owner_references] == [(uid, True)]
    for name in (FIRST, SECOND):
        check_quiet(api_client, namespace, name)


def test_operator_killed_at_every_cache_step_converges(
    plane: ControlPlane, assets: ServingAssets, tmp_path: Path, evidence: Callable[[str], None], ledger: Recorder
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"hubEndpoint": assets.hub.url}))
    with plane.new_api_client() as api_client:
        install_crd(api_client)
        survive_every_point(plane, api_client, scenario(config, assets), tmp_path, max_occurrence=MAX_OCCURRENCE,
                            min_points=MIN_POINTS, must_reach=AFTER_WRITES, evidence=evidence, ledger=ledger)  # fmt: skip
