"""Failed requests during adapter swaps: real llama-server pods under constant load while the
adapter version alternates v1 -> v2 -> v1 ..., each swap a canary-gated surge rollout.

    .venv/bin/python -m bench.adapter_swap [--swaps 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

from bench.report import BENCH_DIR, bar_chart_svg, replace_section

NAME = "bench-swap"
REPLICAS = 2


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
    parser.add_argument("--swaps", type=int, default=4)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    assets = make_serving_assets(root / "assets")
    (assets.adapters_dir / ADAPTER_NAME / "v2.gguf").symlink_to(assets.models.lora_v2)
    rows: list[tuple[str, int, int, float]] = []
    with serving_control_plane(assets, root / "plane") as plane, plane.new_api_client() as api_client:
        custom = kube_client.CustomObjectsApi(api_client)
        with running_operator(plane, api_client, root):
            namespace = create_namespace(api_client)
            body = tiny_llama_deployment(NAME, assets.models, adapters=True, extra_args=["--chat-template", "vicuna"])
            body["spec"]["replicas"] = REPLICAS
            body["spec"]["serving"]["maxConcurrentSequences"] = 2
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

            def rollout() -> dict[str, Any]:
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
                return dict((obj.get("status") or {}).get("adapterRollout") or {})

            wait(lambda: rollout().get("phase") == "Succeeded", 120, "v1 to serve")
            chat = {"model": NAME, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
                    "lora": [{"id": 0, "scale": 1.0}]}  # fmt: skip
            for swap in range(args.swaps):
                version = "v2" if swap % 2 == 0 else "v1"
                with Load(api_client, namespace, NAME, lambda: chat, clients=2, max_seconds=180) as load:
                    wait(lambda: load.result.total >= 5, 30, "the load")
                    started = time.monotonic()
                    adapters = [{"name": ADAPTER_NAME, "version": version,
                                 "source": f"https://models.example.invalid/{ADAPTER_NAME}-{version}.gguf"}]  # fmt: skip
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"adapters": adapters}}
                    )
                    target = f"{ADAPTER_NAME}@{version}"
                    wait(lambda t=target: rollout().get("phase") == "Succeeded" and t in rollout().get("target", []),
                         150, f"{target} everywhere")  # fmt: skip
                    seconds = time.monotonic() - started
                    result = load.stop()
                rows.append((f"-> {version}", result.total, len(result.failures), seconds))
                print(
                    f"swap {swap + 1}: -> {version} in {seconds:.1f}s, {result.total} requests, {len(result.failures)} failed"
                )
    total = sum(r[1] for r in rows)
    failed = sum(r[2] for r in rows)
    (BENCH_DIR / "adapter_swap.svg").write_text(
        bar_chart_svg(
            f"Seconds until every pod serves the new adapter ({failed} of {total} requests failed)",
            [r[0] for r in rows],
            [r[3] for r in rows],
            unit="seconds",
        )
    )
    table = "\n".join(f"| {i + 1} | {r[0]} | {r[3]:.1f} | {r[1]} | {r[2]} |" for i, r in enumerate(rows))
    replace_section(
        "adapter_swap",
        f"""## bench/adapter_swap.py — failed requests during adapter swaps

{REPLICAS} real llama-server pods (tiny model, process-backed pool) under two constant clients that
select the adapter on every request, while the adapter alternates between v1 and v2. Each swap is a
canary rollout gated by the smoke request (readiness gate), with `maxUnavailable: 0`.
Command: `.venv/bin/python -m bench.adapter_swap --swaps {args.swaps}` (2-core machine).

| swap | to | seconds until every pod serves it | requests during the swap | failed |
|---|---|---|---|---|
{table}

**{failed} failed of {total} requests.** Plot: [adapter_swap.svg](adapter_swap.svg).
""",
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
