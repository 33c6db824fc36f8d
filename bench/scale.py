"""API traffic and convergence of the unmodified operator with N LlamaDeployments (issue "quiet reconcile core").

A real control plane (etcd on tmpfs, kube-apiserver with an audit log, controller-manager,
scheduler, KWOK GPU pools sized for N one-GPU replicas) and `llama-operator run` as a child
process with its own client certificate, so the apiserver's audit log tells its requests apart.
Phases:

1. converge: apply N copies of manifests/examples/llama-3.1-8b-vllm-24gb.yaml (16 creates in
   flight) and wait until every one is Ready=True for its generation;
2. settle (10 s, reported apart), then idle for --idle-seconds: nothing changes;
3. restart: SIGTERM the operator, start it again, watch --restart-seconds: nothing to do.

Per phase it counts the operator's reads (get/list) and writes (create/update/patch/delete) from
the audit log (watches excluded), samples the operator's CPU time and RSS every second, and
writes the results to bench/RESULTS.md and bench/scale.svg (one line per N, kept across runs).

    .venv/bin/python -m bench.scale --n 100 [--idle-seconds 600] [--restart-seconds 120]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from kubernetes import client as kube_client
from tests.integration.cluster_setup import create_namespace, install_crd
from tests.integration.operator_process import OperatorProcess

from bench.audit import AuditRequest, RequestCounts, by_user, count_by_client, read_audit_log
from bench.recorder import (
    BENCH_USER_AGENT,
    GROUP,
    PLURAL,
    VERSION,
    ObjectTimeline,
    ProcessSampler,
    ReadinessRecorder,
    ReadyCounts,
)
from bench.report import BENCH_DIR
from bench.scale_report import write_results
from llama_operator_dev import ControlPlane
from llama_operator_dev.binaries import find_binaries
from llama_operator_dev.components import ScaleSettings

ROOT = BENCH_DIR.parent
EXAMPLE = ROOT / "manifests" / "examples" / "llama-3.1-8b-vllm-24gb.yaml"
SCALE_POOLS_FILE = BENCH_DIR / "scale-pools.yaml"
GPU_HEADROOM = 1.04  # GPUs per replica registered, so the last pods never wait for a free GPU
OPERATOR_USER = "llama-operator"  # CN of the operator's client certificate: its requests in the audit log
PROGRESS_SECONDS = 10.0
SETTLE_SECONDS = 10.0
CURVE_POINTS = 120
SECONDS_PER_HOUR = 3600.0
MIB = 1024 * 1024


# -- the cluster and the load -----------------------------------------------------------------


def scale_pools(n: int, template: Path = SCALE_POOLS_FILE) -> dict[str, Any]:
    """The pools of `template`, trimmed to ceil(N x headroom) GPUs, filling the first pool first."""
    document: dict[str, Any] = yaml.safe_load(template.read_text())
    gpus_left = math.ceil(n * GPU_HEADROOM)
    for pool in document["pools"]:
        per_node = int(pool["capacity"]["nvidia.com/gpu"])
        pool["nodeCount"] = min(int(pool["nodeCount"]), math.ceil(gpus_left / per_node))
        gpus_left -= pool["nodeCount"] * per_node
    if gpus_left > 0:
        raise ValueError(f"{template} has too few GPUs for {n} replicas ({gpus_left} short)")
    document["pools"] = [pool for pool in document["pools"] if pool["nodeCount"] > 0]
    return document


def llama_deployment(name: str) -> dict[str, Any]:
    """The 8B-on-vLLM example (one 24 GB GPU) under another name."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"] = {"name": name}
    return manifest


def object_names(n: int) -> list[str]:
    return [f"llama-8b-{index:04d}" for index in range(n)]


def apply_all(
    new_api_client: Callable[[], Any],
    namespace: str,
    names: Iterable[str],
    concurrency: int,
    on_applied: Callable[[str, float], None],
) -> None:
    """Create one LlamaDeployment per name, `concurrency` requests in flight (a client per thread);
    `on_applied(name, time)` after each."""
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()

    def create(name: str) -> None:
        if not hasattr(local, "custom"):
            api_client = new_api_client()
            with lock:
                clients.append(api_client)
            local.custom = kube_client.CustomObjectsApi(api_client)
        local.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, llama_deployment(name))
        on_applied(name, time.time())

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="apply") as pool:
            for future in [pool.submit(create, name) for name in names]:
                future.result()
    finally:
        for api_client in clients:
            api_client.close()


class BenchCluster:
    """A control plane with the audit log and scale settings on, KWOK GPUs for N replicas, the CRD, one
    namespace, and a kubeconfig for the operator's own identity (`OPERATOR_USER`)."""

    def __init__(self, workdir: Path, n: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        pools_file = workdir / "pools.yaml"
        pools_file.write_text(yaml.safe_dump(scale_pools(n), sort_keys=False))
        self.workdir = workdir
        self.plane = ControlPlane(workdir / "plane", pools_file, scale=ScaleSettings(), audit_log=True)
        self.namespace = ""
        self.operator_kubeconfig = workdir / "unset"

    @property
    def audit_log(self) -> Path:
        assert self.plane.audit_log_path is not None
        return self.plane.audit_log_path

    def new_api_client(self) -> Any:
        api_client = self.plane.new_api_client()
        api_client.user_agent = BENCH_USER_AGENT
        return api_client

    def __enter__(self) -> Self:
        self.plane.start()
        try:
            with self.new_api_client() as api_client:
                install_crd(api_client)
                self.namespace = create_namespace(api_client)
            self.operator_kubeconfig = self.plane.client_kubeconfig(OPERATOR_USER)
        except BaseException:
            self.plane.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.plane.stop()

    def start_operator(self, log_dir: Path) -> OperatorProcess:
        """`llama-operator run` as its own user, logging at info (debug logging would dominate its CPU time)."""
        operator = OperatorProcess(self.operator_kubeconfig, log_dir, extra_args=["--log-level", "info"])
        operator.start()
        return operator


# -- one run ----------------------------------------------------------------------------------


class Progress:
    """Progress lines with the seconds since the run started, and the recorder's counts."""

    def __init__(self, recorder: ReadinessRecorder, started: float) -> None:
        self.recorder = recorder
        self.started = started

    def say(self, phase: str, message: str) -> None:
        print(f"[{time.time() - self.started:7.1f}s] {phase}: {message}", flush=True)

    def watch(
        self,
        phase: str,
        sampler: ProcessSampler,
        seconds: float,
        until: Callable[[ReadyCounts], bool] | None = None,
    ) -> ReadyCounts:
        """A line every PROGRESS_SECONDS for `seconds`, or until `until(counts)` holds; the last counts."""
        deadline = time.time() + seconds
        while True:
            left = deadline - time.time()
            counts = self.recorder.wait(until or (lambda _: False), max(0.0, min(PROGRESS_SECONDS, left)))
            sample = sampler.sample()
            usage = (
                "" if sample is None else f"; operator {sample.cpu_seconds:.1f} CPU s, {sample.rss_bytes / MIB:.0f} MiB"
            )
            self.say(phase, counts.line() + usage)
            if (until is not None and until(counts)) or time.time() >= deadline:
                return counts


@dataclass
class Observation:
    """Phase boundaries (seconds since the epoch) and what the recorders saw."""

    operator_started: float = 0.0
    first_apply: float = 0.0
    last_apply: float = 0.0
    converged: bool = False
    converged_at: float = 0.0
    idle_start: float = 0.0
    idle_end: float = 0.0
    restart_start: float = 0.0
    restart_end: float = 0.0
    ready: int = 0
    ready_at_end: int = 0
    timelines: dict[str, ObjectTimeline] = field(default_factory=dict)
    samplers: list[ProcessSampler] = field(default_factory=list)

    def phases(self) -> dict[str, tuple[float, float]]:
        return {
            "startup": (self.operator_started, self.first_apply),
            "converge": (self.first_apply, self.converged_at),
            "settle": (self.converged_at, self.idle_start),
            "idle": (self.idle_start, self.idle_end),
            "restart": (self.restart_start, self.restart_end),
        }


def converge(args: argparse.Namespace, cluster: BenchCluster, progress: Progress, seen: Observation) -> None:
    """Apply N objects in the background and watch until every one is Ready (or the timeout)."""
    n, sampler = args.n, seen.samplers[-1]
    seen.first_apply = time.time()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="applier") as background:
        applying = background.submit(
            apply_all, cluster.new_api_client, cluster.namespace, object_names(n), args.concurrency,
            progress.recorder.applied,
        )  # fmt: skip
        counts = progress.watch("converge", sampler, args.converge_timeout, lambda c: c.applied == n and c.ready == n)
        applying.result()
    timelines = progress.recorder.timelines()
    seen.last_apply = max(t.applied_at for t in timelines.values() if t.applied_at is not None)
    seen.ready, seen.converged = counts.ready, counts.ready == n
    seen.converged_at = (
        max(t.ready_at for t in timelines.values() if t.ready_at is not None) if seen.converged else time.time()
    )
    outcome = (
        f"every object Ready {seen.converged_at - seen.last_apply:.1f}s after the last apply"
        if seen.converged
        else f"NOT converged: {counts.ready}/{n} Ready after {args.converge_timeout:.0f}s"
    )
    progress.say("converge", f"last apply {seen.last_apply - seen.first_apply:.1f}s after the first; {outcome}")


def observe(args: argparse.Namespace, cluster: BenchCluster, progress: Progress) -> Observation:
    """Every phase against a started cluster."""
    seen = Observation()
    recorder = progress.recorder
    recorder.start()
    seen.operator_started = time.time()
    operator = cluster.start_operator(cluster.workdir)
    try:
        assert operator.process is not None
        seen.samplers.append(ProcessSampler(operator.process.pid))
        seen.samplers[-1].start()
        progress.say("setup", f"operator running (pid {operator.process.pid})")
        converge(args, cluster, progress, seen)
        settle_seconds = seen.converged_at + SETTLE_SECONDS - time.time()
        progress.watch("settle", seen.samplers[-1], max(0.0, settle_seconds))
        seen.idle_start = time.time()
        progress.watch("idle", seen.samplers[-1], args.idle_seconds)
        seen.idle_end = time.time()
        operator.stop()
        seen.samplers[-1].stop()
        seen.restart_start = time.time()
        operator.start()
        assert operator.process is not None
        seen.samplers.append(ProcessSampler(operator.process.pid))
        seen.samplers[-1].start()
        progress.say("restart", f"operator restarted with nothing changed (pid {operator.process.pid})")
        seen.ready_at_end = progress.watch("restart", seen.samplers[-1], args.restart_seconds).ready_now
        seen.restart_end = time.time()
    finally:
        operator.stop()
        for sampler in seen.samplers:
            sampler.stop()
        recorder.stop()
    seen.timelines = recorder.timelines()
    return seen


def percentiles(values: list[float]) -> list[float]:
    """[p50, p90, p99, max], rounded to 0.01 s ([] without values)."""
    if not values:
        return []
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]

    return [round(v, 2) for v in (at(0.5), at(0.9), at(0.99), ordered[-1])]


def latencies(timelines: Iterable[ObjectTimeline], milestone: str) -> list[float]:
    return [
        getattr(t, milestone) - t.applied_at
        for t in timelines
        if t.applied_at is not None and getattr(t, milestone) is not None
    ]


def ready_curve(timelines: Iterable[ObjectTimeline], first_apply: float) -> list[list[float]]:
    """(seconds since the first apply, objects Ready), thinned to about CURVE_POINTS points."""
    times = sorted(t.ready_at - first_apply for t in timelines if t.ready_at is not None)
    start = [[0.0, 0.0], [round(times[0], 2), 0.0]] if times else [[0.0, 0.0]]  # flat until the first one
    points = start + [[round(at, 2), float(index + 1)] for index, at in enumerate(times)]
    step = max(1, len(points) // CURVE_POINTS)
    thinned = points[::step]
    return thinned if thinned[-1] == points[-1] else [*thinned, points[-1]]


def tally(
    requests: list[AuditRequest], phases: dict[str, tuple[float, float]], selected: Callable[[AuditRequest], bool]
) -> dict[str, RequestCounts]:
    """Reads and writes of the `selected` requests per phase."""
    counts = {name: RequestCounts() for name in phases}
    for request in requests:
        if selected(request):
            for name, (start, end) in phases.items():
                if start <= request.received_at < end:
                    counts[name].add(request)
    return counts


def counts_json(counts: RequestCounts) -> dict[str, Any]:
    return {
        "reads": counts.reads,
        "writes": counts.writes,
        "throttled": counts.throttled,
        "top": counts.by_kind.most_common(6),
        "agents": dict(counts.by_agent),
    }


def make_record(args: argparse.Namespace, cluster: BenchCluster, seen: Observation) -> dict[str, Any]:
    """The run's record: what RESULTS.md and the plot are made from."""
    requests = list(read_audit_log(cluster.audit_log))
    operator = tally(requests, seen.phases(), by_user(OPERATOR_USER))
    idle, idle_seconds = operator["idle"], seen.idle_end - seen.idle_start
    first, restarted = seen.samplers[0], seen.samplers[-1]
    rss_max, rss_median = first.rss_between(seen.first_apply, seen.idle_end)
    timelines = seen.timelines.values()
    return {
        "n": args.n,
        "command": command_line(args),
        "date": time.strftime("%Y-%m-%d", time.gmtime(seen.first_apply)),
        "commit": git_commit(),
        "binaries": find_binaries().bin_dir.name,
        "nodes": len(cluster.plane.node_names),
        "gpu_headroom": GPU_HEADROOM,
        "concurrency": args.concurrency,
        "settle_seconds": SETTLE_SECONDS,
        "opt_in_flags": portable_flags(cluster.plane.opt_in_flags, cluster.workdir),
        "converged": seen.converged,
        "apply_seconds": round(seen.last_apply - seen.first_apply, 2),
        "ready_after_last_apply": round(seen.converged_at - seen.last_apply, 2) if seen.converged else None,
        "ready": seen.ready,
        "ready_at_end": seen.ready_at_end,
        "ready_lost": sum(t.ready_lost for t in timelines),
        "latency": {m: percentiles(latencies(timelines, m)) for m in ("children_at", "pods_ready_at", "ready_at")},
        "operator": {name: counts_json(counts) for name, counts in operator.items()},
        "idle_seconds": round(idle_seconds, 1),
        "restart_seconds": round(seen.restart_end - seen.restart_start, 1),
        "idle_per_object_hour": {
            "requests": round(idle.total / args.n / idle_seconds * SECONDS_PER_HOUR, 2),
            "writes": round(idle.writes / args.n / idle_seconds * SECONDS_PER_HOUR, 2),
        },
        "restart_writes": operator["restart"].writes,
        "rss_mib": {"max": round(rss_max / MIB, 1), "median": round(rss_median / MIB, 1)},
        "cpu_seconds": {
            "converge": round(first.cpu_seconds_between(seen.first_apply, seen.converged_at), 1),
            "idle": round(first.cpu_seconds_between(seen.idle_start, seen.idle_end), 1),
            "restart": round(restarted.cpu_seconds_between(seen.restart_start, seen.restart_end), 1),
        },
        "busiest_during_converge": count_by_client(requests, seen.first_apply, seen.converged_at).most_common(6),
        "curve": ready_curve(timelines, seen.first_apply),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the cluster, observe every phase at N = args.n, and count the requests."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench-scale-{args.n}-"))
    started = time.time()
    print(f"[{0.0:7.1f}s] setup: control plane for N={args.n} in {workdir}", flush=True)
    with BenchCluster(workdir, args.n) as cluster:
        progress = Progress(ReadinessRecorder(cluster.new_api_client, cluster.namespace), started)
        flags = json.dumps(portable_flags(cluster.plane.opt_in_flags, workdir))
        progress.say("setup", f"{len(cluster.plane.node_names)} KWOK nodes Ready; opt-in flags {flags}")
        seen = observe(args, cluster, progress)
    progress.say("report", f"reading {cluster.audit_log.stat().st_size / MIB:.0f} MiB of audit log")
    record = make_record(args, cluster, seen)
    for name, counts in record["operator"].items():
        top = ", ".join(f"{kind} {count}" for kind, count in counts["top"])
        print(
            f"operator requests, {name}: {counts['reads']} reads, {counts['writes']} writes ({top}); by agent {counts['agents']}"
        )
    print("busiest clients while converging:", ", ".join(f"{c} {k}" for c, k in record["busiest_during_converge"]))
    print(f"work dir (operator logs, component logs, audit log) kept: {workdir}")
    return record


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python -m bench.scale", f"--n {args.n}"]
    defaults = build_parser().parse_args([])
    for option in ("idle_seconds", "restart_seconds", "concurrency"):
        if getattr(args, option) != getattr(defaults, option):
            parts.append(f"--{option.replace('_', '-')} {getattr(args, option):g}")
    return " ".join(parts)


def git_commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() or "unknown"


def portable_flags(flags: dict[str, list[str]], workdir: Path) -> dict[str, list[str]]:
    """The opt-in flags with the run's work dir written as `<workdir>`."""
    return {
        name: [flag.replace(str(workdir.absolute()), "<workdir>") for flag in values] for name, values in flags.items()
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="LlamaDeployments to apply")
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="idle phase (the issue asks for 10+ min)")
    parser.add_argument("--restart-seconds", type=float, default=120.0, help="watch this long after the restart")
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight while applying")
    parser.add_argument("--converge-timeout", type=float, default=900.0, help="give up waiting for Ready after this")
    parser.add_argument("--workdir", type=Path, help="certificates, logs and the audit log (default: a temp dir)")
    parser.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md and the plot")
    parser.add_argument("--record", type=Path, help="also write the run's record (JSON) to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record = run(args)
    if args.record is not None:
        args.record.write_text(json.dumps(record, indent=1))
    if not args.no_results:
        write_results(record)
    summary = {key: record[key] for key in ("n", "ready_after_last_apply", "idle_per_object_hour", "restart_writes")}
    print(json.dumps(summary))
    return 0 if record["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
