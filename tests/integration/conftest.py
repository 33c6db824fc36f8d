"""The integration suites' fixtures, defined once.

`control_plane`: one real control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK
pools) per test run. Each module works on `plane`: that shared plane, or a plane of its own when the
module is marked `pytest.mark.own_plane(KIND)`, whose process-backed pool runs the operator's pods for
real: "llamacpp" (llama-server on the CPU pool, and Prometheus; `serving_fixtures`), "vllm" (real `vllm
serve` on the GPU pool, and Prometheus; `vllm_fixtures`) or "vllm-standin" (the vLLM stand-in there).
`assets` are what such a pool's pods see, with the local hub their init containers download from;
`api_client`, `crd`, `operator` and `namespace` act on the module's plane, and the operator's
`hubEndpoint` is the module's hub. A module changes what differs only: `operator_settings` (more of
the operator's config file).

Build the binaries first with `hack/build-controlplane.sh`; without them these tests skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client

from llama_operator_dev import ControlPlane
from tests.integration.cluster_setup import create_namespace, install_crd, skip_without_binaries
from tests.integration.operator_process import OperatorProcess, running_operator
from tests.integration.serving_fixtures import ServingAssets, make_serving_assets, serving_control_plane
from tests.integration.vllm_fixtures import VllmAssets, make_vllm_assets, vllm_control_plane

OWN_PLANE_KINDS = ("llamacpp", "vllm", "vllm-standin")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"own_plane(kind): the module's own control plane with a process-backed pool, kind in {OWN_PLANE_KINDS}",
    )


def own_plane_kind(request: pytest.FixtureRequest) -> str | None:
    marker = request.node.get_closest_marker("own_plane")
    if marker is None:
        return None
    (kind,) = marker.args
    if kind not in OWN_PLANE_KINDS:
        pytest.fail(f"own_plane({kind!r}): the kinds are {', '.join(OWN_PLANE_KINDS)}")
    return str(kind)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    skip_without_binaries()
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ServingAssets | VllmAssets:
    """What the pods of the module's process-backed pool see (skips when this machine cannot run them)."""
    kind = own_plane_kind(request)
    if kind == "llamacpp":
        return make_serving_assets(tmp_path_factory.mktemp("serving-assets"))
    if kind in ("vllm", "vllm-standin"):
        return make_vllm_assets(tmp_path_factory.mktemp("vllm-assets"))
    pytest.fail("assets belong to a plane of the module's own: mark the module with pytest.mark.own_plane(KIND)")


@pytest.fixture(scope="module")
def plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The run's shared plane, or the module's own (see the module docstring)."""
    kind = own_plane_kind(request)
    if kind is None:
        yield request.getfixturevalue("control_plane")
        return
    started_assets = request.getfixturevalue("assets")
    workdir = tmp_path_factory.mktemp(f"{kind}-plane")
    with (
        serving_control_plane(started_assets, workdir)
        if kind == "llamacpp"
        else vllm_control_plane(started_assets, workdir, standin=kind == "vllm-standin")
    ) as started:
        yield started


@pytest.fixture(scope="module")
def api_client(plane: ControlPlane) -> Iterator[Any]:
    """The official client, authenticated as the plane's admin."""
    with plane.new_api_client() as client:
        yield client


@pytest.fixture(scope="module")
def crd(api_client: Any) -> None:
    install_crd(api_client)


@pytest.fixture(scope="module")
def operator_settings() -> dict[str, Any]:
    """Settings of the operator's config file beyond the hub; a module overrides this fixture to add its own."""
    return {}


@pytest.fixture(scope="module")
def operator(
    request: pytest.FixtureRequest,
    plane: ControlPlane,
    api_client: Any,
    operator_settings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The CRD installed and `llama-operator run` against the module's plane, for the whole module,
    with a config file: ``operator_settings``, and `hubEndpoint` at the module's hub when it has one."""
    settings = dict(operator_settings)
    if own_plane_kind(request) is not None:
        settings.setdefault("hubEndpoint", request.getfixturevalue("assets").hub.url)
    log_dir = tmp_path_factory.mktemp("operator")
    config = log_dir / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    with running_operator(plane, api_client, log_dir, ["--config", str(config)]) as process:
        yield process


@pytest.fixture
def namespace(api_client: Any) -> Iterator[str]:
    """A fresh namespace whose default service account exists, deleted after the test."""
    name = create_namespace(api_client)
    yield name
    kube_client.CoreV1Api(api_client).delete_namespace(name)
