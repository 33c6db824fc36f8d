"""Failed requests during adapter swaps: real engine pods under constant load while the adapter version
alternates v1 -> v2 -> v1 ...

- ``--engine llamacpp``: real llama-server pods; each swap is a canary-gated surge rollout (new pods).
- ``--engine vllm``: real `vllm serve` pods; each swap loads the new version through vLLM's runtime
  adapter API, pod by pod (unready while it loads, then verified by the smoke request), no new pods.

    .venv/bin/python -m bench.adapter_swap [--engine llamacpp|vllm] [--swaps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from tests.integration.cluster_setup import create_namespace
from tests.integration.load import Load
from tests.integration.operator_process import running_operator
from tests.integration.serving_fixtures import (
    ADAPTER_NAME,
    GROUP,
    PLURAL,
    VERSION,
    make_serving_assets,
    serving_control_plane,
    tiny_llama_deployment,
)
from tests.integration.vllm_fixtures import (
    POD_READY_SECONDS,
    make_vllm_assets,
    support_adapter,
    vllm_control_plane,
    vllm_llama_deployment,
)

from bench.report import BENCH_DIR, bar_chart_svg, replace_section
from llama_operator_dev import ControlPlane

NAME = "bench-swap"
REPLICAS = 2


@dataclass(frozen=True)
class Setup:
    """What differs between the engines: the deployment, its adapter at a version, a request through it."""

    title: str
    how: str
    manifest: dict[str, Any]
    adapter: Callable[[str], dict[str, str]]
    chat: dict[str, Any]
    ready_seconds: float


@contextmanager
def engine_setup(engine: str, root: Path) -> Iterator[tuple[ControlPlane, str, Setup]]:
    """The engine's plane, its hub URL and its setup."""
    with ExitStack() as stack:
        if engine == "vllm":
            vllm = make_vllm_assets(root / "assets")
            plane = stack.enter_context(vllm_control_plane(vllm, root / "plane"))
            manifest = vllm_llama_deployment(NAME, adapters=[support_adapter("v1")], replicas=REPLICAS)
            setup = Setup(
                title="real vLLM pods",
                how=(
                    f"{REPLICAS} real `vllm serve` pods (vLLM 0.32.0 on CPU, the tiny HF Llama, process-backed GPU pool)\n"
                    'under two constant clients that send `"model": "support"`, while the adapter alternates\n'
                    "between v1 and v2 (hub adapters that vLLM downloads itself). Each swap loads the new version\n"
                    "through vLLM's runtime adapter API pod by pod: the pod leaves the endpoints, drains, loads,\n"
                    "answers the smoke request, and returns; no pod is replaced."
                ),
                manifest=manifest,
                adapter=support_adapter,
                chat={"model": "support", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4},
                ready_seconds=POD_READY_SECONDS,
            )
            yield plane, vllm.hub.url, setup
            return
        assets = make_serving_assets(root / "assets")
        plane = stack.enter_context(serving_control_plane(assets, root / "plane"))
        manifest = tiny_llama_deployment(NAME, assets, adapters=True, extra_args=["--chat-template", "vicuna"])
        manifest["spec"]["replicas"] = REPLICAS
        manifest["spec"]["serving"]["maxConcurrentSequences"] = 2
        setup = Setup(
            title="real llama-server pods",
            how=(
                f"{REPLICAS} real llama-server pods (tiny model, process-backed pool) under two constant clients that\n"
                "select the adapter on every request, while the adapter alternates between v1 and v2. Each swap is a\n"
                "canary rollout gated by the smoke request (readiness gate), with `maxUnavailable: 0`."
            ),
            manifest=manifest,
            adapter=lambda v: {"name": ADAPTER_NAME, "version": v, "source": assets.adapter_source(v)},
            chat={
                "model": NAME,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 4,
                "lora": [{"id": 0, "scale": 1.0}],
            },
            ready_seconds=120,
        )
        yield plane, assets.hub.url, setup


def serves(rollout: dict[str, Any], target: str) -> bool:
    """One read of the status: rolled out to ``target`` (two reads could mix the old phase and the new target)."""
    return rollout.get("phase") == "Succeeded" and target in rollout.get("target", [])


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("llamacpp", "vllm"), default="llamacpp")
    parser.add_argument("--swaps", type=int, default=4)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    rows: list[tuple[str, int, int, float]] = []
    with engine_setup(args.engine, root) as (plane, hub_url, setup), plane.new_api_client() as api_client:
        custom = kube_client.CustomObjectsApi(api_client)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({"hubEndpoint": hub_url}))
        with running_operator(plane, api_client, root, ["--config", str(config)]):
            namespace = create_namespace(api_client)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, setup.manifest)

            def rollout() -> dict[str, Any]:
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
                return dict((obj.get("status") or {}).get("adapterRollout") or {})

            wait(lambda: rollout().get("phase") == "Succeeded", setup.ready_seconds * 2, "v1 to serve")
            for swap in range(args.swaps):
                version = "v2" if swap % 2 == 0 else "v1"
                with Load(api_client, namespace, NAME, lambda: setup.chat, clients=2, max_seconds=300) as load:
                    wait(lambda: load.result.total >= 5, 30, "the load")
                    started = time.monotonic()
                    adapter = setup.adapter(version)
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": [adapter]}}
                    )
                    target = f"{adapter['name']}@{version}"
                    wait(lambda t=target: serves(rollout(), t), setup.ready_seconds, f"{target} everywhere")
                    seconds = time.monotonic() - started
                    result = load.stop()
                rows.append((f"-> {version}", result.total, len(result.failures), seconds))
                print(
                    f"swap {swap + 1}: -> {version} in {seconds:.1f}s, {result.total} requests, {len(result.failures)} failed"
                )
                for failure in result.failures[:5]:
                    print(f"  failed: {failure}")
    total = sum(r[1] for r in rows)
    failed = sum(r[2] for r in rows)
    section = "adapter_swap" if args.engine == "llamacpp" else f"adapter_swap_{args.engine}"
    (BENCH_DIR / f"{section}.svg").write_text(
        bar_chart_svg(
            f"{setup.title}: seconds until every pod serves the new adapter ({failed} of {total} requests failed)",
            [r[0] for r in rows],
            [r[3] for r in rows],
            unit="seconds",
        )
    )
    table = "\n".join(f"| {i + 1} | {r[0]} | {r[3]:.1f} | {r[1]} | {r[2]} |" for i, r in enumerate(rows))
    median = statistics.median(r[3] for r in rows) if rows else 0.0
    replace_section(
        section,
        f"""## bench/adapter_swap.py --engine {args.engine} — failed requests during adapter swaps on {setup.title}

{setup.how}
Command: `.venv/bin/python -m bench.adapter_swap --engine {args.engine} --swaps {args.swaps}` (2-core machine).

| swap | to | seconds until every pod serves it | requests during the swap | failed |
|---|---|---|---|---|
{table}

**{failed} failed of {total} requests**; median {median:.1f} s per swap. Plot: [{section}.svg]({section}.svg).
""",
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
