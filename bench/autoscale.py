"""Autoscaler reaction time: from the first queued request to the scale write, over repeated runs.

A tiny-model LlamaDeployment with one slot (`--parallel 1`) runs as a real llama-server pod on the
local control plane's process-backed pool; a real Prometheus scrapes it every second and the
operator evaluates every second. Each run starts idle at one replica, starts two clients at once
(the second request waits in llama-server's queue: `llamacpp:requests_deferred` = 1), and times
how long until `spec.replicas` changes. Then the load stops and the deployment scales back.

    .venv/bin/python -m bench.autoscale [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from tests.integration.cluster_setup import create_namespace, install_crd
from tests.integration.load import Load
from tests.integration.operator_process import OperatorProcess
from tests.integration.serving_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    make_serving_assets,
    serving_control_plane,
    tiny_llama_deployment,
)

from bench.report import BENCH_DIR, bar_chart_svg, replace_section

NAME = "bench-scale"
SCRAPE_SECONDS = 1.0
EVALUATION_SECONDS = 1
POLL_SECONDS = 0.02


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def manifest(assets: ServingAssets) -> dict[str, Any]:
    body = tiny_llama_deployment(
        NAME, assets, adapters=False, extra_args=["--chat-template", "vicuna"], max_sequences=1
    )
    body["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "metric": "queue",
        "targetPerReplica": 0.5,  # any waiting request asks for another replica
        "evaluationIntervalSeconds": EVALUATION_SECONDS,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 1, "cooldownSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 3, "maxStep": 1, "cooldownSeconds": 1},
    }
    return body


def one_run(api_client: Any, namespace: str) -> float:
    custom = kube_client.CustomObjectsApi(api_client)

    def replicas() -> int:
        return int(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)["spec"]["replicas"])

    def idle_at_one() -> bool:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        return obj["spec"]["replicas"] == 1 and (obj.get("status") or {}).get("ready") == "1/1"

    wait(idle_at_one, 120, "one idle ready replica")
    body = {"model": NAME, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 64}
    with Load(api_client, namespace, NAME, lambda: body, clients=2, max_seconds=60) as load:
        wait(lambda: load.result.first_sent is not None, 10, "the first request")
        queued_at = load.result.first_sent
        wait(lambda: replicas() >= 2, 60, "the scale write")
        scaled_at = time.time()
        load.stop()
    assert queued_at is not None
    return scaled_at - queued_at


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-autoscale-"))
    assets = make_serving_assets(root / "assets")
    reactions: list[float] = []
    with serving_control_plane(assets, root / "plane") as plane, plane.new_api_client() as api_client:
        assert plane.prometheus is not None
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({"prometheusUrl": plane.prometheus.url, "hubEndpoint": assets.hub.url}))
        install_crd(api_client)
        operator = OperatorProcess(plane.kubeconfig_path, root, extra_args=["--config", str(config)])
        operator.start()
        try:
            namespace = create_namespace(api_client)
            kube_client.CustomObjectsApi(api_client).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, manifest(assets)
            )
            for run in range(args.runs):
                seconds = one_run(api_client, namespace)
                reactions.append(seconds)
                print(f"run {run + 1}/{args.runs}: {seconds:.2f}s from the first queued request to the scale write")
        finally:
            operator.stop()
    limit = SCRAPE_SECONDS + EVALUATION_SECONDS + 1
    median = statistics.median(reactions)
    labels = [str(i + 1) for i in range(len(reactions))]
    (BENCH_DIR / "autoscale.svg").write_text(
        bar_chart_svg("Autoscaler reaction time per run", labels, reactions, unit="seconds", limit=limit)
    )
    rows = "\n".join(f"| {i + 1} | {s:.2f} |" for i, s in enumerate(reactions))
    replace_section(
        "autoscale",
        f"""## bench/autoscale.py — autoscaler reaction time

From the first queued request to the operator's write of `spec.replicas` (scale subresource), on a
real llama-server pod (`--parallel 1`) scraped by a real Prometheus. Scrape interval {SCRAPE_SECONDS:g} s,
evaluation interval {EVALUATION_SECONDS} s, so the bound is scrape + evaluation + 1 s = {limit:g} s.
Command: `.venv/bin/python -m bench.autoscale --runs {args.runs}` (2-core machine).

| run | seconds |
|---|---|
{rows}

Median **{median:.2f} s** (min {min(reactions):.2f}, max {max(reactions):.2f}); bound {limit:g} s:
{"within" if median <= limit else "OVER"} the bound. Plot: [autoscale.svg](autoscale.svg).
""",
    )
    print(f"median {median:.2f}s (bound {limit:g}s)")
    return 0 if median <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
