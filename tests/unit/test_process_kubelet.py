"""The process-backed kubelet's pure rules: commands from pod specs, paths and volumes, restarts,
addresses, probes, status; and one pod worker running init containers as real local processes."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_operator.status_report import container_problem
from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.pools import kwok_node_selector
from llama_operator_dev.process_kubelet import ProcessBackedConfig
from llama_operator_dev.process_kubelet_api import KubeletApi
from llama_operator_dev.process_pod_paths import (
    container_command,
    container_environment,
    container_mount_folders,
    container_path_map,
    expand_references,
    map_pod_path,
    map_pod_text,
    pod_volume_folders,
    process_environment,
    rewrite_args,
    unbacked_volumes,
)
from llama_operator_dev.process_pod_worker import PodWorker, WorkerSettings
from llama_operator_dev.process_pods import (
    ContainerView,
    LoopbackAllocator,
    Terminated,
    crashes_after_exit,
    initial_views,
    is_sidecar,
    kubelet_conditions,
    node_lease,
    pod_phase,
    pod_status,
    restart_backoff_seconds,
    should_restart,
    should_restart_init,
    sidecar_refused,
    termination_message,
    unmet_readiness_gates,
    waiting_for_init,
)
from llama_operator_dev.process_probes import ContainerProbes, ProbeCounter, probe_target
from llama_operator_dev.real_pools import RealPools, example_manifests, gguf_sources, runs_on_real_gpu_pool

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
# A pod's emptyDir mounts (/models, /adapters) and a static entry below one of them (/models/model).
VOLUME_MAP = {
    "/models": Path("/pods/p1/volumes/models"),
    "/models/model": Path("/assets/model"),
    "/adapters": Path("/pods/p1/volumes/adapters"),
}
FETCH_CONTAINER = {"name": "fetch-model", "image": "curl", "command": ["/bin/sh", "-c", "true"]}
GOLDEN_LORA_POD = Path(__file__).resolve().parents[1] / "golden" / "llama-4-scout-int4-h100-tools-lora.yaml"


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


class TestPathsInText:
    def test_a_download_script_maps_every_pod_path_in_it(self) -> None:
        script = (
            "set -eu; if [ -e /models/model/.done ]; then echo 'already present: /models/model'; exit 0; fi; "
            "mkdir -p /models; mkdir -p /models/model && python3 -c 'from huggingface_hub import snapshot_download; "
            'snapshot_download(repo_id="org/m", local_dir="/models/model")\' && touch /models/model/.done'
        )
        assert map_pod_text(script, VOLUME_MAP) == (
            "set -eu; if [ -e /assets/model/.done ]; then echo 'already present: /assets/model'; exit 0; fi; "
            "mkdir -p /pods/p1/volumes/models; mkdir -p /assets/model && python3 -c 'from huggingface_hub import "
            'snapshot_download; snapshot_download(repo_id="org/m", local_dir="/assets/model")\' '
            "&& touch /assets/model/.done"
        )

    @pytest.mark.parametrize(
        ("text", "mapped"),
        [
            ("support=/adapters/support/v1", "support=/pods/p1/volumes/adapters/support/v1"),
            ("local_dir='/models/model'", "local_dir='/assets/model'"),
            ('"/models/modelX"', '"/pods/p1/volumes/models/modelX"'),  # only /models matches at a boundary
            ("(/models)", "(/pods/p1/volumes/models)"),
            ("PYTHONPATH=/opt/lib:/models/lib", "PYTHONPATH=/opt/lib:/pods/p1/volumes/models/lib"),
            ("cat /models/x>/adapters/y", "cat /pods/p1/volumes/models/x>/pods/p1/volumes/adapters/y"),
            ("/models/model/", "/assets/model/"),
        ],
    )
    def test_paths_map_at_boundaries_longest_first(self, text: str, mapped: str) -> None:
        assert map_pod_text(text, VOLUME_MAP) == mapped

    @pytest.mark.parametrize(
        "text",
        [
            "/modelsX/a",  # shares a prefix only
            "/models.bak",
            "/models-old/a",
            "/opt/models/a",  # the pod path in the middle of another path
            "x/models",
            "hf://models/a",
            "https://example.com/models/a",
            "s3://bucket/adapters/a",
            "support=adapters/a",  # relative
            "$HOME/models",
        ],
    )
    def test_what_only_looks_like_a_pod_path_stays(self, text: str) -> None:
        assert map_pod_text(text, VOLUME_MAP) == text

    def test_mapped_text_is_not_mapped_again(self) -> None:
        # The host folder of /data itself starts with /data: one pass, no /data/.../data/... chains.
        path_map = {"/data": Path("/data/pods/p1/volumes/data")}
        assert (
            map_pod_text("ls /data/x /data", path_map) == "ls /data/pods/p1/volumes/data/x /data/pods/p1/volumes/data"
        )

    def test_a_whole_argument_maps_by_exact_name_even_when_not_a_path(self) -> None:
        assert map_pod_text("vllm", {"vllm": Path("/standins/vllm")}) == "/standins/vllm"
        assert map_pod_text("run vllm", {"vllm": Path("/standins/vllm")}) == "run vllm"

    def test_references_expand_before_paths_map_once(self) -> None:
        path_map = {"/data": Path("/data/pods/p1/volumes/data"), "/models": Path("/pods/p1/volumes/models")}
        container = {
            "name": "fetch",
            "command": ["/bin/sh", "-c", "cp $(SRC)/a '$(DST)/b' && echo $$(SRC) $(UNSET)/x"],
            "env": [{"name": "SRC", "value": "/data"}, {"name": "DST", "value": "/models/m"}],
        }
        environment, _ = container_environment(container)
        assert environment == {"SRC": "/data", "DST": "/models/m"}  # the pod's view, unmapped
        assert container_command(container, path_map, POD_IP, environment) == [
            "/bin/sh",
            "-c",
            "cp /data/pods/p1/volumes/data/a '/pods/p1/volumes/models/m/b' && echo $(SRC) $(UNSET)/x",
        ]

    def test_env_values_name_pod_paths_the_host_and_node_values_do_not(self) -> None:
        env = process_environment(
            {"PATH": "/usr/bin", "HOME": "/models"},
            {"EXTRA": "/models"},
            {"HF_HOME": "/models/.cache", "TARGET": "dir=/adapters/a", "PLAIN": "models"},
            VOLUME_MAP,
        )
        assert env == {
            "PATH": "/usr/bin",
            "HOME": "/models",  # the kubelet's own value: a host path already
            "EXTRA": "/models",  # the harness' node value: a host path already
            "HF_HOME": "/pods/p1/volumes/models/.cache",
            "TARGET": "dir=/pods/p1/volumes/adapters/a",
            "PLAIN": "models",
        }

    def test_the_wildcard_host_is_still_the_pod_address(self) -> None:
        assert rewrite_args(["--host", WILDCARD, "--lora-modules", "a=/adapters/a/v1"], VOLUME_MAP, POD_IP) == [
            "--host",
            POD_IP,
            "--lora-modules",
            "a=/pods/p1/volumes/adapters/a/v1",
        ]


class TestVolumes:
    POD_DIR = Path("/var/lib/process-kubelet/pods/ns_p_1234")

    def spec(self) -> dict[str, Any]:
        return {
            "volumes": [
                {"name": "models", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "adapters", "emptyDir": {}},
                {"name": "cache", "persistentVolumeClaim": {"claimName": "c"}},
                {"name": "config", "configMap": {"name": "cfg"}},
                {"name": "kube-api-access-x", "projected": {"sources": []}},
            ],
            "initContainers": [
                {"name": "fetch", "volumeMounts": [{"name": "models", "mountPath": "/models"}]},
            ],
            "containers": [
                {
                    "name": "engine",
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models", "readOnly": True},
                        {"name": "adapters", "mountPath": "/adapters/", "subPath": "set-a"},
                        {"name": "cache", "mountPath": "/root/.cache"},
                        {"name": "config", "mountPath": "/etc/engine"},
                        {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                    ],
                },
                {"name": "not-run", "volumeMounts": [{"name": "config", "mountPath": "/elsewhere"}]},
            ],
        }

    def test_each_empty_dir_is_a_folder_of_the_pod(self) -> None:
        assert pod_volume_folders(self.spec(), self.POD_DIR) == {
            "models": self.POD_DIR / "volumes" / "models",
            "adapters": self.POD_DIR / "volumes" / "adapters",
        }

    def test_mounts_place_the_volume_folders_at_their_mount_paths(self) -> None:
        spec = self.spec()
        folders = pod_volume_folders(spec, self.POD_DIR)
        assert container_mount_folders(spec["containers"][0], folders) == {
            "/models": self.POD_DIR / "volumes" / "models",
            "/adapters": self.POD_DIR / "volumes" / "adapters" / "set-a",
        }
        escaping = {"volumeMounts": [{"name": "models", "mountPath": "/m", "subPath": "../../etc"}]}
        assert container_mount_folders(escaping, folders) == {}

    def test_static_entries_win_where_they_match_as_long_or_longer(self) -> None:
        mounts = {"/models": Path("/pod/volumes/models"), "/adapters": Path("/pod/volumes/adapters")}
        path_map = container_path_map(PATH_MAP, mounts)  # PATH_MAP has /models, /adapters/, /models/special.gguf
        assert map_pod_text("/models/tiny.gguf", path_map) == "/tmp/assets/models/tiny.gguf"
        assert map_pod_text("/adapters/a/v1.gguf", path_map) == "/tmp/assets/adapters/a/v1.gguf"
        only_a_file = container_path_map({"/models/tiny.gguf": Path("/assets/tiny.gguf")}, mounts)
        assert map_pod_text("--model=/models/tiny.gguf", only_a_file) == "--model=/assets/tiny.gguf"
        assert map_pod_text("/models/tiny.gguf.part", only_a_file) == "/pod/volumes/models/tiny.gguf.part"

    def test_volumes_without_a_folder_are_named_unless_the_static_map_covers_them(self) -> None:
        spec = self.spec()
        folders = pod_volume_folders(spec, self.POD_DIR)
        assert unbacked_volumes(spec, {}, folders) == ["cache", "config", "kube-api-access-x"]
        assert unbacked_volumes(spec, {"/root": Path("/h"), "/etc/engine/a.json": Path("/a.json")}, folders) == [
            "kube-api-access-x"
        ]

    def test_a_rendered_vllm_pod_with_adapters_runs_its_downloads_into_its_volumes(self) -> None:
        golden = yaml.safe_load(GOLDEN_LORA_POD.read_text())
        (deployment,) = [child for child in golden["children"] if child["kind"] == "Deployment"]
        spec = deployment["spec"]["template"]["spec"]
        folders = pod_volume_folders(spec, self.POD_DIR)
        models, adapters = str(folders["models"]), str(folders["adapters"])
        assert unbacked_volumes(spec, {}, folders) == []
        scripts = {}
        for init in spec["initContainers"]:
            path_map = container_path_map({}, container_mount_folders(init, folders))
            scripts[init["name"]] = container_command(init, path_map, POD_IP)[2]
        model_words = shlex.split(scripts["fetch-model"])
        assert f"{models}/model/.done" in model_words
        assert f"local_dir='{models}/model')" in " ".join(model_words)
        adapter_words = shlex.split(scripts["fetch-adapter-support-bot"])
        assert f"{adapters}/support-bot/v3" in adapter_words
        assert "s3://acme-adapters/scout/support-bot" in adapter_words  # a URL, not a pod path
        engine = spec["containers"][0]
        argv = container_command(engine, container_path_map({}, container_mount_folders(engine, folders)), POD_IP)
        assert argv[:3] == ["vllm", "serve", f"{models}/model"]
        assert f"support-bot={adapters}/support-bot/v3" in argv
        assert argv[argv.index("--host") + 1] == POD_IP


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


class TestInitContainerStatus:
    def status(self, restart_policy: str, init: list[ContainerView], main: ContainerView) -> dict[str, Any]:
        return pod_status(
            pod_ip=POD_IP,
            host_ip="127.0.0.1",
            start_time=NOW,
            restart_policy=restart_policy,
            init_containers=init,
            containers=[main],
            unmet_gates=[],
            previous_conditions=[],
            now=NOW,
        )

    def test_while_an_init_container_runs_the_pod_is_pending_and_not_initialized(self) -> None:
        running = ContainerView(name="fetch-model", image="curl", state="running", started_at=NOW, started=True, pid=7)
        waiting = waiting_for_init({"name": "fetch-adapter-a", "image": "curl"})
        main = waiting_for_init(rendered_container())
        status = self.status("Always", [running, waiting], main)
        assert status["phase"] == "Pending"
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Initialized"] == {
            "type": "Initialized",
            "status": "False",
            "lastTransitionTime": NOW,
            "reason": "ContainersNotInitialized",
            "message": "containers with incomplete status: [fetch-model fetch-adapter-a]",
        }
        assert conditions["Ready"]["message"] == "containers with unready status: [engine]"
        first, second = status["initContainerStatuses"]
        assert first["state"] == {"running": {"startedAt": NOW}}
        assert (first["ready"], first["containerID"]) == (False, "process://7")
        assert second["state"] == {"waiting": {"reason": "PodInitializing"}}
        assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}

    def test_a_failing_init_container_crash_loops_and_the_operator_sees_it(self) -> None:
        failed = Terminated(6, "Error", "curl: (6) Could not resolve host: huggingface.co", NOW, LATER, "process://9")
        backing_off = ContainerView(
            name="fetch-model",
            image="curl",
            state="waiting",
            reason="CrashLoopBackOff",
            message="back-off 20s restarting failed container=fetch-model pod=p_ns(uid)",
            last_terminated=failed,
            restart_count=1,
        )
        status = self.status("Always", [backing_off], waiting_for_init(rendered_container()))
        assert status["phase"] == "Pending"
        init = status["initContainerStatuses"][0]
        assert init["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert (init["lastState"]["terminated"]["exitCode"], init["restartCount"]) == (6, 1)
        problem = container_problem({"metadata": {"name": "p"}, "status": status})
        assert problem is not None
        assert (
            "container fetch-model: CrashLoopBackOff (exit code 6): curl: (6) Could not resolve host" in problem.message
        )

    def test_a_pod_that_never_restarts_fails_with_its_init_container(self) -> None:
        failed = ContainerView(
            name="fetch-model",
            image="curl",
            state="terminated",
            terminated=Terminated(1, "Error", "", NOW, LATER),
        )
        assert self.status("Never", [failed], waiting_for_init(rendered_container()))["phase"] == "Failed"
        assert self.status("OnFailure", [failed], waiting_for_init(rendered_container()))["phase"] == "Pending"

    def test_once_every_init_container_completed_the_pod_is_initialized(self) -> None:
        done = ContainerView(
            name="fetch-model",
            image="curl",
            state="terminated",
            terminated=Terminated(0, "Completed", "", NOW, LATER),
            ready=True,
        )
        running = ContainerView(name="engine", image="i", state="running", started_at=LATER, started=True)
        status = self.status("Always", [done], running)
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Initialized"] == {"type": "Initialized", "status": "True", "lastTransitionTime": NOW}
        assert status["phase"] == "Running"
        assert status["initContainerStatuses"][0]["ready"] is True

    @pytest.mark.parametrize(
        ("policy", "exit_code", "again"),
        [("Always", 0, False), ("Always", 1, True), ("OnFailure", 1, True), ("Never", 1, False)],
    )
    def test_only_a_failed_init_container_runs_again(self, policy: str, exit_code: int, again: bool) -> None:
        assert should_restart_init(policy, exit_code) is again

    def test_a_sidecar_is_refused_with_a_message(self) -> None:
        sidecar = {"name": "proxy", "image": "envoy", "restartPolicy": "Always", "command": ["envoy"]}
        assert is_sidecar(sidecar)
        assert not is_sidecar(FETCH_CONTAINER)
        waiting = sidecar_refused(sidecar).manifest()["state"]["waiting"]
        assert waiting["reason"] == "ProcessBackedUnsupported"
        assert "sidecar" in waiting["message"]

    def test_every_container_starts_out_waiting(self) -> None:
        spec = {"initContainers": [FETCH_CONTAINER], "containers": [rendered_container(), {"name": "log-shipper"}]}
        views = initial_views(spec)
        assert [(v.name, v.state, v.reason) for v in views.values()] == [
            ("fetch-model", "waiting", "PodInitializing"),
            ("engine", "waiting", "PodInitializing"),
            ("log-shipper", "waiting", "ProcessBackedUnsupported"),
        ]
        without_init = initial_views({"containers": [rendered_container()]})
        assert without_init["engine"].manifest()["state"] == {"waiting": {"reason": "ContainerCreating"}}


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


class TestDevRealPools:
    def test_every_example_gguf_source_is_published_by_repo_and_path(self) -> None:
        examples = example_manifests(Path(__file__).resolve().parents[2] / "manifests" / "examples")
        assert gguf_sources(examples) == [("bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama-3.2-3B-Instruct-Q4_K_M.gguf")]
        assert gguf_sources([{"spec": {"model": {"format": "gguf", "source": "pvc://models/a.gguf"}}}]) == []
        assert [m["metadata"]["name"] for m in examples if runs_on_real_gpu_pool(m)] == ["llama-8b-chat"]

    def test_cpu_only_examples_move_to_the_process_backed_pool(self) -> None:
        cpu = {
            "spec": {
                "placement": {"cpuOnly": True},
                "scheduling": {"tolerations": [{"key": "a", "operator": "Exists"}]},
            }
        }
        pools = RealPools(ProcessBackedConfig(path_map={}), LocalHub(Path("/nonexistent")), vllm=False)
        moved = pools.place(cpu)
        assert moved["spec"]["scheduling"]["nodeSelector"] == {"llamaops.io/process-backed": "true"}
        assert moved["spec"]["scheduling"]["tolerations"] == [
            {"key": "a", "operator": "Exists"},
            {"key": "llamaops.io/process-backed", "operator": "Exists", "effect": "NoSchedule"},
        ]
        assert "nodeSelector" not in cpu["spec"]["scheduling"]  # the input is left as it was
        gpu = {"spec": {"placement": {"gpuClass": "h100-80gb"}}}
        assert pools.place(gpu) is gpu

    def test_the_vllm_24gb_example_runs_for_real_only_with_the_runtime(self) -> None:
        vllm = {"spec": {"engine": {"type": "vllm", "env": [{"name": "A", "value": "1"}]},
                         "placement": {"gpuClass": "gpu-24gb"}, "hubTokenSecretRef": {"name": "hf-token"}}}  # fmt: skip
        without = RealPools(ProcessBackedConfig(path_map={}), LocalHub(Path("/nonexistent")), vllm=False)
        assert without.place(vllm) is vllm
        moved = RealPools(ProcessBackedConfig(path_map={}), LocalHub(Path("/nonexistent")), vllm=True).place(vllm)
        engine = moved["spec"]["engine"]
        assert engine["extraArgs"][:2] == ["--kv-cache-memory-bytes", str(64 * 1024 * 1024)]
        assert {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"} in engine["env"]
        assert {"name": "A", "value": "1"} in engine["env"]
        assert "hubTokenSecretRef" not in moved["spec"]
        assert moved["spec"]["scheduling"]["nodeSelector"] == {"llamaops.io/process-backed": "true"}


class RecordingKubeletApi(KubeletApi):
    """The two calls a pod worker makes, kept in memory: every status it wrote, and the final delete."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.deleted = threading.Event()
        self._lock = threading.Lock()

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.statuses.append(status)
        return {"status": status}

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        self.deleted.set()

    def last(self) -> dict[str, Any]:
        with self._lock:
            return self.statuses[-1] if self.statuses else {}

    def seen(self, check: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [status for status in self.statuses if check(status)]


def wait_for(check: Callable[[], bool], what: str, timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def init_state(status: dict[str, Any], index: int = 0) -> dict[str, Any]:
    statuses = status.get("initContainerStatuses") or [{}]
    state: dict[str, Any] = statuses[index].get("state", {})
    return state


class TestPodWorkerRunsInitContainers:
    """One pod worker with real /bin/sh processes and an API in memory (no cluster)."""

    def pod(
        self, init_script: str, main_script: str = "cat /work-vol/x; exec sleep 1000", **spec: Any
    ) -> dict[str, Any]:
        return {
            "metadata": {"uid": "0123456789ab", "namespace": "ns", "name": "p"},
            "spec": {
                "nodeName": "node-a",
                "terminationGracePeriodSeconds": 5,
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [
                    {
                        "name": "prepare",
                        "image": "busybox",
                        "command": ["/bin/sh", "-c", init_script],
                        "volumeMounts": [{"name": "work", "mountPath": "/work-vol"}],
                    }
                ],
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "command": ["/bin/sh", "-c", main_script],
                        "volumeMounts": [{"name": "work", "mountPath": "/work-vol"}],
                    }
                ],
                **spec,
            },
        }

    def start(self, pod: dict[str, Any], pod_dir: Path) -> tuple[PodWorker, RecordingKubeletApi]:
        api = RecordingKubeletApi()
        settings = WorkerSettings(
            path_map={},
            host_ip="127.0.0.1",
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.2,
            max_probe_period_seconds=None,
            termination_message_lines=5,
            stop_grace_seconds=2.0,
        )
        worker = PodWorker(pod, pod_ip=POD_IP, settings=settings, api=api, pod_dir=pod_dir, on_probe=lambda _: None)
        worker.start()
        return worker, api

    def delete(self, worker: PodWorker, pod: dict[str, Any], api: RecordingKubeletApi) -> None:
        worker.observe(
            {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": NOW, "deletionGracePeriodSeconds": 2}}
        )
        wait_for(api.deleted.is_set, "the final delete")
        worker.join(10)
        assert worker.finished.is_set()

    def test_the_main_container_reads_what_the_init_container_wrote_into_their_volume(self, tmp_path: Path) -> None:
        pod = self.pod("echo hi from init > /work-vol/x")
        worker, api = self.start(pod, tmp_path / "pod")
        wait_for(lambda: "running" in api.last().get("containerStatuses", [{}])[0].get("state", {}), "main running")
        wait_for(lambda: (tmp_path / "pod" / "main.0.log").read_text() == "hi from init\n", "main's log")
        assert (tmp_path / "pod" / "volumes" / "work" / "x").read_text() == "hi from init\n"
        assert (tmp_path / "pod" / "prepare.0.log").exists()
        initializing = api.seen(lambda s: "Initialized" in str(s["conditions"]) and s["phase"] == "Pending")
        assert initializing, "the pod was never reported Pending while initializing"
        first = initializing[0]
        assert {c["type"]: c["status"] for c in first["conditions"]}["Initialized"] == "False"
        assert first["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
        done = api.last()
        assert init_state(done)["terminated"]["exitCode"] == 0
        assert done["initContainerStatuses"][0]["ready"] is True
        assert {c["type"]: c["status"] for c in done["conditions"]}["Initialized"] == "True"
        assert done["phase"] == "Running"
        self.delete(worker, pod, api)
        assert not (tmp_path / "pod" / "volumes").exists()
        assert (tmp_path / "pod" / "main.0.log").exists()  # the logs stay

    def test_a_failing_init_container_backs_off_and_the_main_container_never_starts(self, tmp_path: Path) -> None:
        pod = self.pod("echo cannot download >&2; exit 3")
        worker, api = self.start(pod, tmp_path / "pod")
        wait_for(lambda: (api.last().get("initContainerStatuses") or [{}])[0].get("restartCount", 0) >= 2, "retries")
        backing_off = api.seen(lambda s: init_state(s).get("waiting", {}).get("reason") == "CrashLoopBackOff")
        assert backing_off
        last_state = backing_off[-1]["initContainerStatuses"][0]["lastState"]["terminated"]
        assert (last_state["exitCode"], last_state["message"]) == (3, "cannot download")
        assert all(s["phase"] == "Pending" for s in api.statuses)
        assert not (tmp_path / "pod" / "main.0.log").exists()
        self.delete(worker, pod, api)

    def test_with_restart_policy_never_the_pod_fails(self, tmp_path: Path) -> None:
        pod = self.pod("exit 1", restartPolicy="Never")
        worker, api = self.start(pod, tmp_path / "pod")
        wait_for(lambda: api.last().get("phase") == "Failed", "phase Failed")
        assert init_state(api.last())["terminated"]["exitCode"] == 1
        assert api.last()["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
        self.delete(worker, pod, api)

    def test_a_deletion_stops_a_running_init_container(self, tmp_path: Path) -> None:
        pod = self.pod("exec sleep 1000")
        worker, api = self.start(pod, tmp_path / "pod")
        wait_for(lambda: "running" in init_state(api.last()), "the init container running")
        self.delete(worker, pod, api)
        terminated = init_state(api.last())["terminated"]
        assert terminated["exitCode"] == 128 + 15  # SIGTERM
        assert not (tmp_path / "pod" / "main.0.log").exists()

    def test_an_init_container_without_command_cannot_start(self, tmp_path: Path) -> None:
        pod = self.pod("true", restartPolicy="Never")
        del pod["spec"]["initContainers"][0]["command"]
        worker, api = self.start(pod, tmp_path / "pod")
        wait_for(lambda: api.last().get("phase") == "Failed", "phase Failed")
        assert init_state(api.last())["terminated"]["reason"] == "StartError"
        self.delete(worker, pod, api)
