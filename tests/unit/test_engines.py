"""Builder tests, one class per engine: args, ports, probes, env and volumes a user's pod depends on."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from llama_operator.api.parse import InvalidSpecError
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.engines.base import LLAMACPP_BUILD
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from tests.unit.render_cases import INVENTORY, LLAMA_8B, spec_from


def spec(**overrides: Any) -> LlamaDeploymentSpec:
    return spec_from({"model": LLAMA_8B}, **overrides)


def children(s: LlamaDeploymentSpec, name: str = "demo", **options: Any) -> list[dict[str, Any]]:
    decision = plan(s, name, INVENTORY)
    assert decision.fits, decision.reason
    return render(name, "ns", s, decision, options=RenderOptions(**options), owner=Owner(name, "uid-1"))


def container(s: LlamaDeploymentSpec) -> dict[str, Any]:
    deployment = children(s)[0]
    assert deployment["kind"] == "Deployment"
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


class TestVllm:
    def test_command_port_and_sizing_flags(self) -> None:
        c = container(
            spec(engine={"type": "vllm"}, model={"contextLength": 8192}, serving={"maxConcurrentSequences": 2})
        )
        assert c["command"] == ["vllm", "serve"]
        assert c["args"][0] == "/models/model"
        assert flag(c["args"], "--port") == "8000"
        assert flag(c["args"], "--max-model-len") == "8192"
        assert flag(c["args"], "--max-num-seqs") == "2"
        assert flag(c["args"], "--gpu-memory-utilization") == "0.90"
        assert flag(c["args"], "--served-model-name") == "demo"
        assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]

    def test_tool_calling_parser_follows_the_model_family(self) -> None:
        llama3 = container(spec(serving={"toolCalling": True}))
        assert flag(llama3["args"], "--tool-call-parser") == "llama3_json"
        assert "--enable-auto-tool-choice" in llama3["args"]
        scout = container(
            spec(
                model={"catalogName": "llama-4-scout", "quantization": "int4"},
                serving={"toolCalling": True, "maxConcurrentSequences": 2},
            )
        )
        assert flag(scout["args"], "--tool-call-parser") == "llama4_pythonic"

    def test_adapters_enable_runtime_lora_updates(self) -> None:
        c = container(spec(adapters=[{"name": "support", "source": "s3://b/support", "version": "v2", "rank": 24}]))
        assert "--enable-lora" in c["args"]
        assert flag(c["args"], "--lora-modules") == "support=/adapters/support/v2"
        assert flag(c["args"], "--max-lora-rank") == "32"  # 24 rounded up to a rank vLLM accepts
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"

    def test_adapters_from_storage_follow_one_lora_modules_flag(self) -> None:
        # vLLM's --lora-modules replaces its list on every occurrence: a repeated flag keeps only the last.
        adapters = [
            {"name": "support", "source": "s3://b/support", "version": "v2"},
            {"name": "sql", "source": "pvc://claim/sql", "version": "v1"},
            {"name": "legal", "source": "https://example.com/legal.tar", "version": "v3"},
        ]
        args = container(spec(adapters=adapters))["args"]
        assert args.count("--lora-modules") == 1
        start = args.index("--lora-modules") + 1
        assert args[start : start + 3] == [
            "support=/adapters/support/v2",
            "sql=/adapters/sql/v1",
            "legal=/adapters/legal/v3",
        ]

    def test_fp8_quantizes_at_load_and_awq_is_auto_detected(self) -> None:
        assert flag(container(spec(model={"quantization": "fp8"}))["args"], "--quantization") == "fp8"
        awq = container(spec(model={"catalogName": "llama-3.1-70b", "quantization": "awq"}))
        assert "--quantization" not in awq["args"]

    def test_tensor_parallel_gets_shared_memory(self) -> None:
        s = spec(model={"catalogName": "llama-3.1-70b", "quantization": "awq"}, placement={"gpuClass": "gpu-48gb"})
        deployment = children(s)[0]
        pod = deployment["spec"]["template"]["spec"]
        c = pod["containers"][0]
        tp = int(flag(c["args"], "--tensor-parallel-size"))
        assert tp > 1
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod["volumes"])


class TestTgi:
    def test_prometheus_port_does_not_collide_with_the_api(self) -> None:
        c = container(spec(engine={"type": "tgi"}))
        assert c["command"] == ["text-generation-launcher"]
        assert flag(c["args"], "--port") == "8080"
        assert flag(c["args"], "--prometheus-port") == "9000"
        assert len({p["containerPort"] for p in c["ports"]}) == len(c["ports"])

    def test_token_limits_are_consistent(self) -> None:
        c = container(spec(engine={"type": "tgi"}, model={"contextLength": 4096}))
        total = int(flag(c["args"], "--max-total-tokens"))
        max_input = int(flag(c["args"], "--max-input-tokens"))
        assert total == 4096
        assert max_input < total
        assert int(flag(c["args"], "--max-batch-prefill-tokens")) >= max_input

    def test_adapters_are_loaded_at_start_up(self) -> None:
        c = container(spec(engine={"type": "tgi"}, adapters=[{"name": "a", "source": "hf://o/a", "version": "1"}]))
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["LORA_ADAPTERS"] == "a=/adapters/a/1"


def gguf_spec(**overrides: Any) -> LlamaDeploymentSpec:
    model = {
        "catalogName": "llama-3.2-3b",
        "source": "hf://org/repo/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        "format": "gguf",
        "quantization": "q4_k_m",
    }
    return spec(model=model, **overrides)


class TestLlamaCpp:
    def test_cpu_server_args(self) -> None:
        c = container(gguf_spec(placement={"cpuOnly": True}, serving={"maxConcurrentSequences": 4}))
        assert c["command"] == ["/app/llama-server"]
        assert flag(c["args"], "--model") == "/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf"
        assert flag(c["args"], "--host") == "0.0.0.0"  # noqa: S104 - the rendered pod address
        assert flag(c["args"], "--port") == "8080"
        assert "--metrics" in c["args"]
        assert flag(c["args"], "--n-gpu-layers") == "0"
        assert flag(c["args"], "--parallel") == "4"
        assert flag(c["args"], "--ctx-size") == str(8192 * 4)
        assert int(flag(c["args"], "--threads-http")) >= 4 + 2, "queued requests must not starve /health"
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert c["image"] == f"ghcr.io/ggml-org/llama.cpp:server-b{LLAMACPP_BUILD}"  # the build the tests run

    def test_gpu_offloads_every_layer_and_uses_the_cuda_image(self) -> None:
        c = container(gguf_spec())
        assert flag(c["args"], "--n-gpu-layers") == str(28 + 1)
        assert "server-cuda" in c["image"]

    def test_adapters_and_tool_calling(self) -> None:
        c = container(
            gguf_spec(
                placement={"cpuOnly": True},
                serving={"toolCalling": True},
                adapters=[{"name": "tuned", "source": "https://example.com/tuned.gguf", "version": "v1"}],
            )
        )
        assert flag(c["args"], "--lora") == "/adapters/tuned/v1.gguf"
        assert "--jinja" in c["args"]


class TestPodShape:
    @pytest.mark.parametrize("engine", ["vllm", "tgi"])
    def test_probes_tolerate_long_loads(self, engine: str) -> None:
        c = container(spec(engine={"type": engine}))
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/health"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
        assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"

    def test_hub_token_is_only_a_secret_reference(self) -> None:
        s = spec(hubTokenSecretRef={"name": "hf-token"})
        rendered = children(s)
        text = repr(rendered)
        pod = rendered[0]["spec"]["template"]["spec"]
        fetch = pod["initContainers"][0]
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in fetch["env"]
        assert "hf-token" in text
        assert all("HF_TOKEN=" not in arg for arg in pod["containers"][0]["args"])

    def test_downloads_come_from_the_configured_hub(self) -> None:
        mirror = "http://hf-mirror.models.svc:8080"
        hub_adapter = {"name": "support", "source": "hf://org/support", "version": "v1"}
        vllm_pod = children(spec(adapters=[hub_adapter]), hub_endpoint=mirror)[0]["spec"]["template"]["spec"]
        (fetch,) = vllm_pod["initContainers"]
        assert "snapshot_download(repo_id='meta-llama/Llama-3.1-8B-Instruct'" in " ".join(
            shlex.split(fetch["command"][2])
        )
        assert {"name": "HF_ENDPOINT", "value": mirror} in fetch["env"]
        # The hub adapter loads at run time: vLLM downloads it from the same mirror.
        assert {"name": "HF_ENDPOINT", "value": mirror} in vllm_pod["containers"][0]["env"]

        gguf = spec(model={"source": "hf://org/repo/sub/model-Q4_K_M.gguf", "format": "gguf",
                           "quantization": "q4_k_m"}, engine={"type": "llamacpp"})  # fmt: skip
        gguf_fetch = children(gguf, hub_endpoint=mirror + "/")[0]["spec"]["template"]["spec"]["initContainers"][0]
        assert f"{mirror}/org/repo/resolve/main/sub/model-Q4_K_M.gguf" in gguf_fetch["command"][2]
        assert "huggingface.co" not in repr(gguf_fetch)

        default = children(spec())[0]["spec"]["template"]["spec"]["initContainers"][0]
        assert {"name": "HF_ENDPOINT", "value": "https://huggingface.co"} in default["env"]

    def test_a_pvc_adapter_is_mounted_where_the_engine_reads_it(self) -> None:
        adapters = [{"name": "sql", "source": "pvc://team.adapters/sql/v7", "version": "v7"},
                    {"name": "support", "source": "hf://org/support", "version": "v1"}]  # fmt: skip
        s = spec(adapters=adapters, engine={"type": "vllm", "extraArgs": []})
        pod = children(s)[0]["spec"]["template"]["spec"]
        engine = pod["containers"][0]
        # With a pvc:// adapter in the set, every adapter comes with the pod (not through vLLM's runtime API).
        assert "support=/adapters/support/v1" in engine["args"]
        assert {"name": "adapters-team-adapters", "persistentVolumeClaim": {"claimName": "team.adapters",
                "readOnly": True}} in pod["volumes"]  # fmt: skip
        mount = next(m for m in engine["volumeMounts"] if m["name"] == "adapters-team-adapters")
        assert mount == {"name": "adapters-team-adapters", "mountPath": "/adapters/sql/v7", "readOnly": True,
                         "subPath": "sql/v7"}  # fmt: skip
        assert "sql=/adapters/sql/v7" in engine["args"]
        assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-adapter-support"]

    def test_a_quote_in_a_source_stays_inside_the_download_script(self) -> None:
        file_name = "a';touch${IFS}/tmp/owned;echo'.gguf"
        s = spec(model={"source": f"https://example.com/{file_name}", "format": "gguf", "quantization": "q4_k_m"},
                 engine={"type": "llamacpp"})  # fmt: skip
        script = children(s)[0]["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        words = shlex.split(script)  # how the shell splits it into words (quotes removed)
        mentions = [word for word in words if "owned" in word]
        assert mentions, script
        # Every word keeps the quote as a literal character: no quote closed early, no command broke out.
        assert all("owned;echo'" in word for word in mentions), f"a quote in the path ended a word: {mentions}"

    def test_children_are_owned_and_rolled_without_unavailability(self) -> None:
        rendered = children(spec(replicas=3))
        assert [c["kind"] for c in rendered] == ["Deployment", "Service", "PodDisruptionBudget"]
        for child in rendered:
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref["kind"] == "LlamaDeployment"
            assert ref["controller"] is True
        deployment = rendered[0]["spec"]
        assert deployment["replicas"] == 3
        assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    def test_gpu_class_placement_uses_the_memory_label_range(self) -> None:
        pod = children(spec(placement={"gpuClass": "gpu-48gb"}))[0]["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        by_memory = terms[1]["matchExpressions"]
        assert {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["39999"]} in by_memory
        assert {"key": "nvidia.com/gpu.memory", "operator": "Lt", "values": ["50001"]} in by_memory
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    def test_user_node_affinity_is_anded_with_the_class(self) -> None:
        theirs = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
                }
            }
        }
        pod = children(spec(scheduling={"affinity": theirs}))[0]["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms
        assert all({"key": "zone", "operator": "In", "values": ["a"]} in t["matchExpressions"] for t in terms)

    def test_service_monitor_only_when_asked(self) -> None:
        assert "ServiceMonitor" not in [c["kind"] for c in children(spec())]
        assert "ServiceMonitor" in [c["kind"] for c in children(spec(), service_monitor=True)]

    def test_multi_node_vllm_renders_a_leader_worker_set(self) -> None:
        s = spec(model={"catalogName": "llama-3.1-405b"}, placement={"maxNodesPerReplica": 2})
        rendered = children(s)
        lws = rendered[0]
        assert lws["kind"] == "LeaderWorkerSet"
        template = lws["spec"]["leaderWorkerTemplate"]
        assert template["size"] == 2
        leader = template["leaderTemplate"]["spec"]["containers"][0]
        worker = template["workerTemplate"]["spec"]["containers"][0]
        assert "ray start --head" in leader["command"][2]
        assert "--pipeline-parallel-size 2" in leader["command"][2]
        assert "LWS_LEADER_ADDRESS" in worker["command"][2]
        assert "readinessProbe" not in worker
        assert rendered[1]["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


class TestAdapterGuards:
    def test_adapter_for_another_base_model_is_refused(self) -> None:
        wrong = spec(adapters=[{"name": "a", "source": "hf://o/a", "version": "1", "baseModel": "llama-3.1-70b"}])
        with pytest.raises(InvalidSpecError, match=r"baseModel 'llama-3\.1-70b' is not the served model"):
            plan(wrong, "demo", INVENTORY)

    @pytest.mark.parametrize("base", ["llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"])
    def test_adapter_for_this_model_by_catalog_name_or_hub_repo(self, base: str) -> None:
        right = spec(adapters=[{"name": "a", "source": "hf://o/a", "version": "1", "baseModel": base}])
        assert plan(right, "demo", INVENTORY).fits
