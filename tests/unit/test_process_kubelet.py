"""The process-backed kubelet's pure rules: commands from pod specs, restarts, addresses, probes, status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llama_operator_dev.pools import kwok_node_selector
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.process_pods import (
    ContainerView,
    LoopbackAllocator,
    Terminated,
    container_command,
    container_environment,
    crashes_after_exit,
    expand_references,
    kubelet_conditions,
    map_pod_path,
    node_lease,
    pod_phase,
    pod_status,
    restart_backoff_seconds,
    rewrite_args,
    should_restart,
    skipped_init_container,
    termination_message,
    unmet_readiness_gates,
)
from llama_operator_dev.process_probes import ContainerProbes, ProbeCounter, probe_target
from llama_operator_dev.real_cpu_pool import example_manifests, gguf_files, on_real_cpu_pool

PATH_MAP = {
    "/app/llama-server": Path("/cache/llama-server/bin/llama-server"),
    "/models": Path("/tmp/assets/models"),
    "/adapters/": Path("/tmp/assets/adapters"),
    "/models/special.gguf": Path("/elsewhere/special.gguf"),
}
POD_IP = "127.0.1.7"
WILDCARD = "0.0.0.0"  # noqa: S104 - the rendered --host, never bound here
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:01:00Z"


def rendered_container(**extra: Any) -> dict[str, Any]:
    """The shape the operator renders for llama.cpp (engines/llamacpp.py)."""
    health = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    return {
        "name": "engine",
        "image": "ghcr.io/ggml-org/llama.cpp:server-b6900",
        "command": ["/app/llama-server"],
        "args": ["--model", "/models/tiny.gguf", "--host", WILDCARD, "--port", "8080", "--metrics",
                 "--ctx-size", "1024", "--lora", "/adapters/tiny-lora/v1.gguf"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4},
        **extra,
    }  # fmt: skip


class TestCommandFromPodSpec:
    def test_paths_map_exactly_or_by_folder_longest_first(self) -> None:
        assert map_pod_path("/app/llama-server", PATH_MAP) == "/cache/llama-server/bin/llama-server"
        assert map_pod_path("/models/tiny.gguf", PATH_MAP) == "/tmp/assets/models/tiny.gguf"
        assert map_pod_path("/models/special.gguf", PATH_MAP) == "/elsewhere/special.gguf"
        assert map_pod_path("/adapters/a/v1.gguf", PATH_MAP) == "/tmp/assets/adapters/a/v1.gguf"
        assert map_pod_path("/modelsx/tiny.gguf", PATH_MAP) == "/modelsx/tiny.gguf"
        assert map_pod_path("tiny-cpu", PATH_MAP) == "tiny-cpu"

    def test_the_rendered_container_becomes_a_local_command_on_the_pod_address(self) -> None:
        assert container_command(rendered_container(), PATH_MAP, POD_IP) == [
            "/cache/llama-server/bin/llama-server",
            "--model", "/tmp/assets/models/tiny.gguf",
            "--host", POD_IP,
            "--port", "8080",
            "--metrics",
            "--ctx-size", "1024",
            "--lora", "/tmp/assets/adapters/tiny-lora/v1.gguf",
        ]  # fmt: skip

    def test_only_a_wildcard_host_is_rewritten(self) -> None:
        assert rewrite_args([f"--host={WILDCARD}", "--model=/models/a.gguf"], PATH_MAP, POD_IP) == [
            f"--host={POD_IP}",
            "--model=/tmp/assets/models/a.gguf",
        ]
        # A loopback bind would be unreachable from the kubelet in a real pod: kept, so it fails here too.
        assert rewrite_args(["--host", "127.0.0.1"], PATH_MAP, POD_IP) == ["--host", "127.0.0.1"]
        assert rewrite_args(["--alias", WILDCARD], PATH_MAP, POD_IP) == ["--alias", WILDCARD]

    def test_variable_references_expand_like_kubernetes(self) -> None:
        env = {"PORT": "8080", "NAME": "tiny"}
        assert expand_references("--port=$(PORT)", env) == "--port=8080"
        assert expand_references("$(MISSING)/$(NAME)", env) == "$(MISSING)/tiny"
        assert expand_references("$$(PORT) costs $$5", env) == "$(PORT) costs $5"

    def test_environment_resolves_values_and_pod_fields_but_not_secrets(self) -> None:
        container = {
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "$(A)2"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}},
            ]
        }
        values, unresolved = container_environment(container, {"status.podIP": POD_IP})
        assert values == {"A": "1", "B": "12", "IP": POD_IP}
        assert unresolved == ["HF_TOKEN"]

    def test_a_container_without_command_cannot_run(self) -> None:
        assert container_command({"name": "x", "args": ["--help"]}, PATH_MAP, POD_IP) == []


class TestRestarts:
    def test_back_off_doubles_from_10_seconds_to_the_cap(self) -> None:
        delays = [restart_backoff_seconds(crashes) for crashes in range(8)]
        assert delays == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
        assert restart_backoff_seconds(3, initial_seconds=1, max_seconds=3) == 3.0

    def test_a_long_run_resets_the_back_off(self) -> None:
        assert crashes_after_exit(4, ran_seconds=5) == 5
        assert crashes_after_exit(4, ran_seconds=600) == 1

    @pytest.mark.parametrize(
        ("policy", "exit_code", "restart"),
        [
            ("Always", 0, True),
            ("Always", 1, True),
            ("OnFailure", 0, False),
            ("OnFailure", 2, True),
            ("Never", 1, False),
        ],
    )
    def test_restart_policy(self, policy: str, exit_code: int, restart: bool) -> None:
        assert should_restart(policy, exit_code) is restart


class TestAddresses:
    def test_addresses_are_handed_out_round_robin_and_released(self) -> None:
        allocator = LoopbackAllocator("127.0.1.0/30")
        first, second = allocator.allocate(), allocator.allocate()
        assert (first, second) == ("127.0.1.1", "127.0.1.2")
        with pytest.raises(RuntimeError, match="in use"):
            allocator.allocate()
        allocator.release(first)
        assert allocator.allocate() == first

    def test_a_released_address_is_not_reused_at_once(self) -> None:
        allocator = LoopbackAllocator("127.0.1.0/24")
        first = allocator.allocate()
        allocator.release(first)
        assert allocator.allocate() != first

    def test_only_loopback_networks(self) -> None:
        with pytest.raises(ValueError, match="loopback"):
            LoopbackAllocator("10.0.0.0/24")


class TestProbes:
    def test_the_rendered_probes_resolve_the_named_port_and_can_be_shortened(self) -> None:
        container = rendered_container()
        startup = probe_target(container["startupProbe"], container, POD_IP)
        assert startup is not None
        assert (startup.url, startup.period_seconds, startup.failure_threshold) == (
            f"http://{POD_IP}:8080/health",
            10.0,
            180,
        )
        fast = probe_target(container["startupProbe"], container, POD_IP, max_period_seconds=0.5)
        assert fast is not None
        assert (fast.period_seconds, fast.failure_threshold, fast.timeout_seconds) == (0.5, 180, 5.0)
        assert probe_target(None, container, POD_IP) is None
        tcp = probe_target({"tcpSocket": {"port": 9000}}, container, POD_IP)
        assert tcp is not None
        assert (tcp.kind, tcp.port, tcp.period_seconds, tcp.timeout_seconds) == ("tcpSocket", 9000, 10.0, 1.0)

    def test_an_unknown_port_name_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no port named 'metrics'"):
            probe_target({"httpGet": {"port": "metrics"}}, rendered_container(), POD_IP)

    def test_counter_needs_the_thresholds_in_a_row(self) -> None:
        counter = ProbeCounter(success_threshold=2, failure_threshold=3)
        counter = counter.observe(True)
        assert not counter.passing
        counter = counter.observe(True)
        assert counter.passing
        counter = counter.observe(False).observe(False)
        assert counter.passing
        assert not counter.failed
        counter = counter.observe(False)
        assert (counter.passing, counter.failed) == (False, True)

    def test_readiness_waits_for_the_startup_probe_then_for_its_own(self) -> None:
        probes = ContainerProbes.for_container(rendered_container(), POD_IP, began=100.0, max_period_seconds=1.0)
        assert probes.due_now(100.0) == ["startup"]
        assert probes.observe("startup", False, 100.0) is None  # connection refused
        assert probes.observe("startup", False, 101.0) is None  # 503 while loading
        assert (probes.started, probes.ready) == (False, False)
        assert probes.due_now(101.5) == []
        assert probes.observe("startup", True, 102.0) is None
        assert (probes.started, probes.ready) == (True, False)
        assert probes.due_now(102.0) == ["readiness", "liveness"]
        probes.observe("readiness", True, 102.0)
        assert probes.ready
        assert probes.next_due() == 102.0  # liveness
        probes.observe("liveness", True, 102.0)
        assert probes.next_due() == 103.0

    def test_startup_and_liveness_give_up_at_their_threshold_readiness_does_not(self) -> None:
        container = rendered_container()
        container["startupProbe"]["failureThreshold"] = 2
        probes = ContainerProbes.for_container(container, POD_IP, began=0.0)
        assert probes.observe("startup", False, 0.0) is None
        assert probes.observe("startup", False, 10.0) == "startup probe failed 2 times"
        probes = ContainerProbes.for_container(rendered_container(), POD_IP, began=0.0)
        probes.observe("startup", True, 0.0)
        verdicts = [probes.observe("readiness", False, float(t)) for t in range(10)]
        assert verdicts == [None] * 10
        assert [probes.observe("liveness", False, float(t)) for t in range(4)][-1] == "liveness probe failed 4 times"

    def test_without_probes_a_container_is_ready_once_started(self) -> None:
        probes = ContainerProbes.for_container({"name": "plain"}, POD_IP, began=0.0)
        assert (probes.started, probes.ready, probes.next_due()) == (True, True, None)


class TestStatus:
    def test_termination_message_keeps_the_end_of_the_log(self) -> None:
        log = "loading...\n" * 500 + "error: invalid argument: --definitely-not-a-flag\n"
        message = termination_message(log, max_bytes=100)
        assert message.endswith("error: invalid argument: --definitely-not-a-flag")
        assert len(message.encode()) <= 100

    def test_a_crash_loop_reads_like_the_kubelet_reports_it(self) -> None:
        crashed = Terminated(1, "Error", "error: invalid argument: --x", NOW, LATER, "process://42")
        view = ContainerView(
            name="engine",
            image="img",
            state="waiting",
            reason="CrashLoopBackOff",
            message="back-off 10s restarting failed container=engine",
            last_terminated=crashed,
            restart_count=1,
        )
        status = view.manifest()
        assert status["state"] == {
            "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container=engine"}
        }
        assert status["lastState"]["terminated"]["exitCode"] == 1
        assert status["lastState"]["terminated"]["message"] == "error: invalid argument: --x"
        assert (status["ready"], status["started"], status["restartCount"]) == (False, False, 1)

    def test_a_running_container_has_its_process_as_container_id(self) -> None:
        status = ContainerView(name="engine", image="img", state="running", started_at=NOW, pid=42).manifest()
        assert status["state"] == {"running": {"startedAt": NOW}}
        assert status["containerID"] == "process://42"
        assert status["lastState"] == {}

    def test_skipped_downloads_are_completed_init_containers(self) -> None:
        status = skipped_init_container({"name": "fetch-model", "image": "curl"}, NOW).manifest()
        assert status["state"]["terminated"]["exitCode"] == 0
        assert status["state"]["terminated"]["reason"] == "Completed"

    def test_phase(self) -> None:
        waiting = ContainerView(name="c", image="i", state="waiting")
        running = ContainerView(name="c", image="i", state="running", started_at=NOW)
        done = ContainerView(
            name="c", image="i", state="terminated", terminated=Terminated(0, "Completed", "", NOW, LATER)
        )
        failed = ContainerView(
            name="c", image="i", state="terminated", terminated=Terminated(3, "Error", "", NOW, LATER)
        )
        assert pod_phase("Always", [waiting]) == "Pending"
        assert pod_phase("Always", [running]) == "Running"
        assert pod_phase("Always", [failed]) == "Running"  # it will restart
        assert pod_phase("Never", [done]) == "Succeeded"
        assert pod_phase("Never", [failed]) == "Failed"

    def test_conditions_keep_their_transition_time_while_unchanged(self) -> None:
        first = kubelet_conditions({"Ready": (False, "ContainersNotReady")}, [], NOW)
        assert first == [
            {"type": "Ready", "status": "False", "lastTransitionTime": NOW, "reason": "ContainersNotReady"}
        ]
        assert kubelet_conditions({"Ready": (False, "ContainersNotReady")}, first, LATER) == first
        assert kubelet_conditions({"Ready": (True, "")}, first, LATER) == [
            {"type": "Ready", "status": "True", "lastTransitionTime": LATER}
        ]

    def test_ready_needs_ready_containers_and_every_readiness_gate(self) -> None:
        pod = {
            "spec": {"readinessGates": [{"conditionType": "llamaops.io/adapters-verified"}]},
            "status": {"conditions": [{"type": "llamaops.io/adapters-verified", "status": "False"}]},
        }
        gates = unmet_readiness_gates(pod)
        assert gates == ["llamaops.io/adapters-verified"]
        ready = ContainerView(name="engine", image="i", state="running", started_at=NOW, started=True, ready=True)
        status = pod_status(
            pod_ip=POD_IP,
            host_ip="127.0.0.1",
            start_time=NOW,
            restart_policy="Always",
            init_containers=[],
            containers=[ready],
            unmet_gates=gates,
            previous_conditions=[],
            now=NOW,
        )
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["ContainersReady"]["status"] == "True"
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "ReadinessGatesNotReady")
        assert "PodScheduled" not in conditions  # the scheduler's, left alone by the strategic merge
        assert (status["podIP"], status["podIPs"], status["phase"]) == (POD_IP, [{"ip": POD_IP}], "Running")
        pod["status"]["conditions"][0]["status"] = "True"
        assert unmet_readiness_gates(pod) == []


class TestNodes:
    def test_kwok_leaves_the_process_backed_nodes_alone(self) -> None:
        config = ProcessBackedConfig(path_map={})
        assert config.node_selector == "llamaops.io/process-backed=true"
        assert kwok_node_selector() == "llamaops.io/kwok=true"
        assert kwok_node_selector(config.node_labels) == "llamaops.io/kwok=true,llamaops.io/process-backed!=true"

    def test_node_lease_is_owned_by_its_node(self) -> None:
        lease = node_lease("node-a", "uid-1", 40, "2026-01-01T00:00:00.000000Z")
        assert lease["metadata"]["namespace"] == "kube-node-lease"
        assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert lease["spec"] == {
            "holderIdentity": "node-a",
            "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T00:00:00.000000Z",
        }


class TestDevRealCpuPool:
    def test_every_example_gguf_file_is_mapped_by_name(self) -> None:
        examples = example_manifests(Path(__file__).resolve().parents[2] / "manifests" / "examples")
        assert gguf_files(examples) == ["Llama-3.2-3B-Instruct-Q4_K_M.gguf"]
        assert gguf_files([{"spec": {"model": {"format": "gguf", "source": "pvc://models/a.gguf"}}}]) == []

    def test_only_cpu_only_examples_move_to_the_process_backed_pool(self) -> None:
        cpu = {
            "spec": {
                "placement": {"cpuOnly": True},
                "scheduling": {"tolerations": [{"key": "a", "operator": "Exists"}]},
            }
        }
        moved = on_real_cpu_pool(cpu)
        assert moved["spec"]["scheduling"]["nodeSelector"] == {"llamaops.io/process-backed": "true"}
        assert moved["spec"]["scheduling"]["tolerations"] == [
            {"key": "a", "operator": "Exists"},
            {"key": "llamaops.io/process-backed", "operator": "Exists", "effect": "NoSchedule"},
        ]
        assert "nodeSelector" not in cpu["spec"]["scheduling"]  # the input is left as it was
        gpu = {"spec": {"placement": {"gpuClass": "h100-80gb"}}}
        assert on_real_cpu_pool(gpu) is gpu
