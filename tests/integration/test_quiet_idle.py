"""Quiet when nothing changes: Ready LlamaDeployments cost the apiserver no writes while idle.

50 copies of the 8B-on-vLLM example on KWOK GPU nodes, the operator unmodified as a child process
with its own client certificate, and the apiserver's audit log counting its requests server-side
(the same harness as bench/scale.py). Once every object is Ready=True for its generation and a
short settle has passed, a minute of idle must bring no create/update/patch/delete from the operator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.audit import by_user, count_requests, read_audit_log
from bench.recorder import ReadinessRecorder
from bench.scale import OPERATOR_USER, SETTLE_SECONDS, BenchCluster, apply_all, object_names

from tests.integration.cluster_setup import skip_without_binaries

N = 50
CONCURRENCY = 16
CONVERGE_TIMEOUT_SECONDS = 120.0
IDLE_SECONDS = 60.0


@pytest.fixture(scope="module")
def bench_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchCluster]:
    """A control plane of its own: audit log on, scale settings, GPUs for N replicas."""
    skip_without_binaries()
    with BenchCluster(tmp_path_factory.mktemp("quiet-idle"), N) as cluster:
        yield cluster


def test_ready_objects_cause_no_operator_writes_while_idle(bench_cluster: BenchCluster, tmp_path: Path) -> None:
    recorder = ReadinessRecorder(bench_cluster.new_api_client, bench_cluster.namespace)
    recorder.start()
    operator = bench_cluster.start_operator(tmp_path)
    try:
        apply_all(bench_cluster.new_api_client, bench_cluster.namespace, object_names(N), CONCURRENCY, recorder.applied)
        converged = recorder.wait(lambda c: c.ready == N, CONVERGE_TIMEOUT_SECONDS)
        assert converged.ready == N, f"{converged.line()} after {CONVERGE_TIMEOUT_SECONDS:.0f}s\n{operator.log_tail()}"
        # Settle, then idle: each wait ends early only if an object leaves Ready=True.
        recorder.wait(lambda c: c.ready_now < N, SETTLE_SECONDS)
        idle_start = time.time()
        idle = recorder.wait(lambda c: c.ready_now < N, IDLE_SECONDS)
        idle_end = time.time()
    finally:
        operator.stop()
        recorder.stop()

    requests = count_requests(read_audit_log(bench_cluster.audit_log), idle_start, idle_end, by_user(OPERATOR_USER))
    report = f"operator requests in {idle_end - idle_start:.0f}s idle with {N} Ready objects: {requests.summary(8)}"
    print(report)  # shown with -rA or -s, and by pytest when the test fails
    assert idle.ready_now == N, f"an object left Ready=True while idle: {idle.line()}"
    assert requests.writes == 0, report
