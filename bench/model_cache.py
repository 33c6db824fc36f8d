"""Downloads, bytes served and time to Ready for a scale-up 1 -> 4 and a pod restart, with and without the
shared model cache (`model.cache`), on real llama-server pods of the process-backed pool.

The local hub sends each download at `--hub-mib-per-second` (default 1 MiB/s, so the 4.7 MiB tiny model
takes about as long to fetch as its pods take to start: the share a large model's download has over a
real link). Each run publishes the model under a repository of its own, so the hub's counts are the run's.

    .venv/bin/python -m bench.model_cache [--runs 3] [--hub-mib-per-second 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from tests.integration.cluster_setup import create_namespace, wait_until_collected_with_llamadeployments
from tests.integration.operator_process import running_operator
from tests.integration.serving_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    ServingAssets,
    get_llamadeployment,
    make_serving_assets,
    serving_control_plane,
)
from tests.integration.test_model_cache import (
    SCALED_REPLICAS,
    cached_deployment,
    claims,
    model_key,
    publish_model,
    ready_with,
    scale,
    serving_pods,
)

from bench.report import BENCH_DIR, RESULTS, replace_section, svg_frame

READY_SECONDS = 300.0
MIB = 1 << 20


@dataclass(frozen=True)
class Run:
    cache: bool
    downloads: int
    bytes_served: int
    first_ready: float  # create -> Ready with one replica
    pod_scheduled: float | None  # create -> the download pod scheduled (its claim bound), whole seconds
    job_done: float | None  # create -> the Job complete, whole seconds
    scale_up: float  # replicas 1 -> 4 -> Ready with four
    restart: float  # one pod deleted -> its replacement Ready


def wait(check: Callable[[], Any], what: str, timeout: float = READY_SECONDS) -> float:
    """Seconds until `check` holds, printing the wait every 10 s."""
    started = time.monotonic()
    shown = started
    while not check():
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        if now - shown >= 10:
            print(f"  ... {what}: {now - started:.0f} s", flush=True)
            shown = now
        time.sleep(0.1)
    return time.monotonic() - started


def job_timeline(api: Any, namespace: str, name: str) -> tuple[float | None, float | None]:
    """Seconds from the object's creation to its download pod's scheduling and to the Job's completion, from
    the API's timestamps (whole seconds)."""
    created = get_llamadeployment(api, namespace, name)["metadata"]["creationTimestamp"]
    start = datetime.fromisoformat(created.replace("Z", "+00:00"))
    (job,) = kube_client.BatchV1Api(api).list_namespaced_job(namespace).items
    pods = kube_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}")
    scheduled = [c.last_transition_time for p in pods.items for c in p.status.conditions or []
                 if c.type == "PodScheduled" and c.status == "True"]  # fmt: skip
    done = job.status.completion_time
    return (
        (min(scheduled) - start).total_seconds() if scheduled else None,
        (done - start).total_seconds() if done else None,
    )


def one_run(api: Any, assets: ServingAssets, namespace: str, *, cache: bool, index: int) -> Run:
    mode = "cache" if cache else "per-pod"
    name = f"bench-{mode}-{index}"
    source = publish_model(assets, f"llama-operator/bench-{mode}-{index}")
    served_before = assets.hub.bytes_served()
    custom = kube_client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, cached_deployment(name, assets, source,
                                                                                                cache=cache))  # fmt: skip

    def ready(replicas: int) -> Callable[[], bool]:
        return lambda: ready_with(replicas)(get_llamadeployment(api, namespace, name))

    first = wait(ready(1), f"{name} Ready with 1 replica")
    scheduled, done = job_timeline(api, namespace, name) if cache else (None, None)
    scale(api, namespace, name, SCALED_REPLICAS)
    scaled = wait(ready(SCALED_REPLICAS), f"{name} Ready with {SCALED_REPLICAS} replicas")
    victim = serving_pods(api, namespace, name)[0].metadata.name
    kube_client.CoreV1Api(api).delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

    def replaced() -> bool:
        pods = serving_pods(api, namespace, name)
        ready_pods = [
            p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return victim not in {p.metadata.name for p in pods} and len(ready_pods) == SCALED_REPLICAS

    restarted = wait(replaced, f"{name}: pod {victim} replaced and Ready")
    run = Run(cache, assets.hub.downloads().get(model_key(source), 0), assets.hub.bytes_served() - served_before,
              first, scheduled, done, scaled, restarted)  # fmt: skip
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait(lambda: not serving_pods(api, namespace, name) and not claims(api, namespace), f"{name} and its cache gone")
    print(f"{mode} run {index + 1}: {run.downloads} downloads, {run.bytes_served / MIB:.1f} MiB, Ready in "
          f"{run.first_ready:.1f} s, 1 -> {SCALED_REPLICAS} in {run.scale_up:.1f} s, restart in {run.restart:.1f} s",
          flush=True)  # fmt: skip
    return run


def grouped_bars_svg(title: str, groups: list[str], series: dict[str, list[float]], *, unit: str) -> str:
    """Bars per group (one per series, side by side) with a legend."""
    width, height, left, bottom, top = 640, 320, 60, 50, 40
    top_value = max(v for values in series.values() for v in values) * 1.15 or 1.0
    plot_w, plot_h = width - left - 20, height - top - bottom
    colours = ["#4a7ab7", "#e08e2b"]
    parts = svg_frame(width, height, title, left=left, top=top, plot_w=plot_w, plot_h=plot_h)
    for tick in range(5):
        value = top_value * tick / 4
        y = top + plot_h * (1 - value / top_value)
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.1f}</text>')
    parts.append(f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
                 f'text-anchor="middle">{unit}</text>')  # fmt: skip
    step = plot_w / len(groups)
    bar = step * 0.35
    for g, group in enumerate(groups):
        for s, values in enumerate(series.values()):
            value = values[g]
            x = left + g * step + step * 0.15 + s * bar
            h = plot_h * value / top_value
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colours[s % 2]}"/>')  # fmt: skip
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h - h - 4:.1f}" text-anchor="middle">'
                         f"{value:.1f}</text>")  # fmt: skip
        parts.append(f'<text x="{left + g * step + step / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                     f"{group}</text>")  # fmt: skip
    for s, label in enumerate(series):
        x = left + 10 + s * 160
        parts.append(f'<rect x="{x}" y="{height - 18}" width="12" height="12" fill="{colours[s % 2]}"/>')
        parts.append(f'<text x="{x + 18}" y="{height - 8}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def median(runs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hub-mib-per-second", type=float, default=1.0)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    started = time.monotonic()
    print("starting the control plane and the hub ...", flush=True)
    assets = make_serving_assets(root / "assets")
    runs: list[Run] = []
    with serving_control_plane(assets, root / "plane") as plane, plane.new_api_client() as api:
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump({"hubEndpoint": assets.hub.url}))
        with running_operator(plane, api, root, ["--config", str(config)]):
            print(f"plane up in {time.monotonic() - started:.0f} s; waiting for the garbage collector", flush=True)
            wait_until_collected_with_llamadeployments(api)
            assets.hub.throttle(args.hub_mib_per_second * MIB)
            namespace = create_namespace(api)
            for index in range(args.runs):
                for cache in (True, False):
                    runs.append(one_run(api, assets, namespace, cache=cache, index=index))
    size = assets.models.model.path.stat().st_size
    with_cache = [r for r in runs if r.cache]
    without = [r for r in runs if not r.cache]
    fields = (("first_ready", "first Ready (1 replica)"), ("scale_up", f"1 -> {SCALED_REPLICAS} Ready"),
              ("restart", "restarted pod Ready"))  # fmt: skip
    (BENCH_DIR / "model_cache.svg").write_text(
        grouped_bars_svg(
            f"Median seconds to Ready, hub at {args.hub_mib_per_second:g} MiB/s per download",
            [label for _, label in fields],
            {"with model.cache": [median(with_cache, f) for f, _ in fields],
             "without (init container per pod)": [median(without, f) for f, _ in fields]},
            unit="seconds",
        )
    )  # fmt: skip

    def seconds(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "-"

    rows = "\n".join(
        f"| {'cache' if r.cache else 'per pod'} | {r.downloads} | {r.bytes_served / MIB:.1f} | {r.first_ready:.1f} | "
        f"{seconds(r.pod_scheduled)} | {seconds(r.job_done)} | {r.scale_up:.1f} | {r.restart:.1f} |"
        for r in runs
    )

    def summary(group: list[Run]) -> str:
        return (f"{statistics.median(r.downloads for r in group):.0f} download(s), "
                f"{median(group, 'bytes_served') / MIB:.1f} MiB served, first Ready in "
                f"{median(group, 'first_ready'):.1f} s, 1 -> {SCALED_REPLICAS} in "
                f"{median(group, 'scale_up'):.1f} s, restart in {median(group, 'restart'):.1f} s")  # fmt: skip

    replace_section(
        "model_cache",
        f"""## bench/model_cache.py — downloads and time to Ready with and without the shared model cache

Real llama-server pods (the tiny GGUF model, {size / MIB:.1f} MiB, process-backed pool): create with 1 replica,
scale to {SCALED_REPLICAS}, then delete one pod; the local hub counts downloads and bytes and sends each download
at {args.hub_mib_per_second:g} MiB/s. With `model.cache: {{}}` a Job fills one claim (host-path volume provisioned
by the controller-manager) and the pods mount it read-only; without it every pod start downloads in an init
container. Command: `.venv/bin/python -m bench.model_cache --runs {args.runs} --hub-mib-per-second
{args.hub_mib_per_second:g}` (2-core machine).

| mode | downloads | MiB served | first Ready (s) | download pod scheduled (s) | Job complete (s) | 1 -> {SCALED_REPLICAS} Ready (s) | restart Ready (s) |
|---|---|---|---|---|---|---|---|
{rows}

Medians: **with the cache** {summary(with_cache)}; **without** {summary(without)}.
Scale-up ratio (without / with): {median(without, "scale_up") / max(median(with_cache, "scale_up"), 1e-9):.2f};
restart ratio: {median(without, "restart") / max(median(with_cache, "restart"), 1e-9):.2f}. The first Ready costs more
with the cache: the Job fills the claim first and only then is the Deployment applied, whose pods then start
and load the model as they would without it, one after the other; the two timeline columns (from the API's
whole-second timestamps, counted from the object's creation) show where that time goes.
Plot: [model_cache.svg](model_cache.svg).
""",
        RESULTS,
    )
    print(f"done in {time.monotonic() - started:.0f} s; wrote bench/RESULTS.md and bench/model_cache.svg")
    return 0 if all(r.downloads == 1 for r in with_cache) else 1


if __name__ == "__main__":
    sys.exit(main())
