"""The tiny HF-format Llama and its PEFT adapters, served by the real vLLM for CPU.

One vLLM server for the module (start to /health 200 takes 25-60 s on 2 cores), started with the
flags the operator renders for a CPU pod, with ``HF_ENDPOINT`` pointing at a LocalHub that serves
the adapters as ``org/support-v1``, ``org/support-v2`` and ``org/support-v3``. The tests check what
the operator relies on: health, a chat completion, a request with tools, the queue gauge, a LoRA
adapter loaded at run time by hub id, and a broken release refused without harming the server.
``pytest -s`` (or the log) shows the replies. Skipped when the vLLM runtime is not built
(``hack/build-vllm-runtime.sh``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_operator_dev import tiny_hf_models
from llama_operator_dev.errors import BinariesMissingError
from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.tiny_hf_models import (
    BEGIN_OF_TEXT,
    END_OF_TURN,
    LORA_ALPHA,
    LORA_RANK,
    LORA_TARGETS,
    PYTHON_TAG,
    SPECIAL_TOKENS,
    TINY_HF_ARCHITECTURE,
    TinyHfArchitecture,
    TinyHfModelSet,
    cache_key,
    model_set_in,
    tiny_hf_model_set,
    write_tiny_hf_model_set,
    written_facts,
)
from llama_operator_dev.vllm_runtime import VLLM_RUNTIME_BUILD_SCRIPT, vllm_python
from tests.engine.conftest import free_port

SERVED_NAME = "tiny"
ADAPTER_REPOS = {"v1": "org/support-v1", "v2": "org/support-v2", "v3": "org/support-v3"}
MAX_MODEL_LEN = 4096
READY_TIMEOUT_SECONDS = 240.0
REQUEST_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 30.0
PROMPT = "Hello! Which llama are you?"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print into the test log even when pytest captures output."""
    with capsys.disabled():
        print(f"\n{line}")


@pytest.fixture(scope="module")
def vllm_bin() -> Path:
    python = vllm_python()
    if python is None:
        pytest.skip(f"the vLLM runtime is not built; build it with `{VLLM_RUNTIME_BUILD_SCRIPT}` (make vllmruntime)")
    return python.parent


@pytest.fixture(scope="module")
def model_set(vllm_bin: Path) -> TinyHfModelSet:
    return tiny_hf_model_set()


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name -> dtype, shape, offsets."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


class TestWrittenFiles:
    """What the writer put on disk, read back without torch (fast once the set is cached)."""

    def test_config_json_matches_the_facts(self, model_set: TinyHfModelSet) -> None:
        config = json.loads((model_set.model_dir / "config.json").read_text())
        facts = model_set.architecture
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["model_type"] == "llama"
        assert config["num_hidden_layers"] == facts.layers == 2
        assert config["hidden_size"] == facts.hidden == 128
        assert config["num_attention_heads"] == facts.heads == 4
        assert config["num_key_value_heads"] == facts.kv_heads == 2
        assert config["head_dim"] == facts.head_dim == 32  # vLLM's CPU attention refuses 16
        assert config["intermediate_size"] == facts.intermediate == 256
        assert config["vocab_size"] == facts.vocab_size
        assert config["max_position_embeddings"] == facts.max_position_embeddings >= MAX_MODEL_LEN
        assert config["dtype"] == facts.dtype == "bfloat16"
        assert config["rope_parameters"]["rope_theta"] == facts.rope_theta
        assert model_set.architecture == TINY_HF_ARCHITECTURE

    def test_weights_have_the_shapes_and_dtype_of_the_facts(self, model_set: TinyHfModelSet) -> None:
        facts = model_set.architecture
        header = safetensors_header(model_set.model_dir / "model.safetensors")
        assert {entry["dtype"] for entry in header.values()} == {"BF16"}
        assert header["model.embed_tokens.weight"]["shape"] == [facts.vocab_size, facts.hidden]
        assert header["lm_head.weight"]["shape"] == [facts.vocab_size, facts.hidden]
        for layer in range(facts.layers):
            prefix = f"model.layers.{layer}"
            assert header[f"{prefix}.self_attn.q_proj.weight"]["shape"] == [facts.heads * facts.head_dim, facts.hidden]
            assert header[f"{prefix}.self_attn.k_proj.weight"]["shape"] == [
                facts.kv_heads * facts.head_dim,
                facts.hidden,
            ]
            assert header[f"{prefix}.mlp.up_proj.weight"]["shape"] == [facts.intermediate, facts.hidden]
        assert f"model.layers.{facts.layers}.self_attn.q_proj.weight" not in header

    def test_tokenizer_has_llama3_special_tokens_and_a_tool_template(self, model_set: TinyHfModelSet) -> None:
        tokenizer = json.loads((model_set.model_dir / "tokenizer.json").read_text())
        tokenizer_config = json.loads((model_set.model_dir / "tokenizer_config.json").read_text())
        added = {token["content"]: token["id"] for token in tokenizer["added_tokens"]}
        assert list(added) == list(SPECIAL_TOKENS)
        assert PYTHON_TAG in added  # vLLM's llama3_json tool parser refuses to start without it
        assert len(tokenizer["model"]["vocab"]) == model_set.architecture.vocab_size
        assert written_facts(model_set)["vocab_size"] == model_set.architecture.vocab_size
        assert tokenizer_config["bos_token"] == BEGIN_OF_TEXT
        assert tokenizer_config["eos_token"] == END_OF_TURN
        template = tokenizer_config["chat_template"]
        assert "tools" in template
        assert PYTHON_TAG in template

    def test_adapters_are_peft_lora_and_v3_lacks_its_config(self, model_set: TinyHfModelSet) -> None:
        for folder in (model_set.lora_v1, model_set.lora_v2):
            config = json.loads((folder / "adapter_config.json").read_text())
            assert config["peft_type"] == "LORA"
            assert (config["r"], config["lora_alpha"]) == (LORA_RANK, LORA_ALPHA)
            assert sorted(config["target_modules"]) == sorted(LORA_TARGETS)
            assert config["base_model_name_or_path"] == "llama-operator-tiny-hf"
        v1 = (model_set.lora_v1 / "adapter_model.safetensors").read_bytes()
        v2 = (model_set.lora_v2 / "adapter_model.safetensors").read_bytes()
        assert v1 != v2, "v1 and v2 carry different weights"
        header = safetensors_header(model_set.lora_v1 / "adapter_model.safetensors")
        q_a = header["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
        assert q_a["shape"] == [LORA_RANK, model_set.architecture.hidden]
        assert sorted(path.name for path in model_set.lora_broken.iterdir()) == ["adapter_model.safetensors"]

    def test_the_cache_is_reused_and_a_private_copy_is_separate(
        self, model_set: TinyHfModelSet, tmp_path: Path
    ) -> None:
        started = time.monotonic()
        again = tiny_hf_model_set()
        assert again == model_set
        assert time.monotonic() - started < 5.0, "a cached set is not written again"
        copy = write_tiny_hf_model_set(tmp_path / "set")
        assert copy.model_dir == tmp_path / "set" / "model"
        config = copy.model_dir / "config.json"
        assert config.read_bytes() == (model_set.model_dir / "config.json").read_bytes()
        config.write_text("{}")
        assert json.loads((model_set.model_dir / "config.json").read_text())["model_type"] == "llama"


class TestCache:
    """The cache key and the staging rename, with a stand-in writer (no runtime needed)."""

    @pytest.fixture
    def fake_runtime(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        venv = tmp_path / "vllm-venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").touch()
        (venv / "BUILD-INFO").write_text("vllm=0.32.0\nlock_sha256=aaa\nbuilt_at=2026-01-01T00:00:00Z\n")
        monkeypatch.setattr(tiny_hf_models, "vllm_python", lambda: venv / "bin" / "python")
        return venv

    def test_key_follows_the_spec_and_the_runtime_lock_not_the_build_time(self, fake_runtime: Path) -> None:
        key = cache_key()
        wider = dataclasses.replace(TINY_HF_ARCHITECTURE, intermediate=512)
        assert cache_key(wider) != key
        (fake_runtime / "BUILD-INFO").write_text("vllm=0.32.0\nlock_sha256=aaa\nbuilt_at=2027-01-01T00:00:00Z\n")
        assert cache_key() == key
        (fake_runtime / "BUILD-INFO").write_text("vllm=0.32.0\nlock_sha256=bbb\nbuilt_at=2027-01-01T00:00:00Z\n")
        assert cache_key() != key

    def test_a_set_finished_first_by_another_process_is_kept(
        self, fake_runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = tmp_path / "cache"
        final = cache / cache_key()
        calls: list[Path] = []

        def racing_writer(directory: Path, architecture: TinyHfArchitecture) -> TinyHfModelSet:
            calls.append(directory)
            (directory / "written.json").write_text('{"by": "us"}')
            final.mkdir(parents=True)  # the other process renames its set into place meanwhile
            (final / "written.json").write_text('{"by": "them"}')
            return model_set_in(directory, architecture)

        monkeypatch.setattr(tiny_hf_models, "run_writer", racing_writer)
        result = tiny_hf_model_set(cache_dir=cache)
        assert result.root == final
        assert json.loads((final / "written.json").read_text()) == {"by": "them"}
        assert [path.name for path in cache.iterdir()] == [final.name], "our staging folder is removed"
        assert tiny_hf_model_set(cache_dir=cache).root == final
        assert len(calls) == 1, "a complete set is not written again"

    def test_without_the_runtime_the_error_says_how_to_build_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(tiny_hf_models, "vllm_python", lambda: None)
        with pytest.raises(BinariesMissingError, match=r"hack/build-vllm-runtime\.sh"):
            tiny_hf_model_set()


@dataclass
class VllmServer:
    """One `vllm serve` child process (in its own process group) with its log file."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    started_seconds: float = 0.0
    events: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self) -> None:
        assert self.process is not None, "not started"
        began = time.monotonic()
        deadline = began + READY_TIMEOUT_SECONDS
        while True:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"vllm serve exited with {code} before /health answered:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == httpx.codes.OK:
                    self.started_seconds = time.monotonic() - began
                    return
            except httpx.TransportError:
                pass  # the port stays closed while the model loads
            if time.monotonic() >= deadline:
                pytest.fail(f"vllm serve not healthy after {READY_TIMEOUT_SECONDS:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def process_group_rss_mib(self) -> dict[int, tuple[str, int]]:
        """pid -> (command name, RSS MiB) of every process of the server's group."""
        assert self.process is not None, "not started"
        result = subprocess.run(
            ["ps", "-o", "pid=,comm=,rss=", "-g", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        usage: dict[int, tuple[str, int]] = {}
        for line in result.stdout.splitlines():
            pid, name, rss_kib = line.split()
            usage[int(pid)] = (name, int(rss_kib) // 1024)
        return usage

    def stop(self) -> float:
        """SIGTERM the process group, SIGKILL after the grace period; returns the seconds it took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return time.monotonic() - began


@pytest.fixture(scope="module")
def adapter_hub(model_set: TinyHfModelSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    with LocalHub(tmp_path_factory.mktemp("hub")) as hub:
        hub.publish(ADAPTER_REPOS["v1"], model_set.lora_v1)
        hub.publish(ADAPTER_REPOS["v2"], model_set.lora_v2)
        hub.publish(ADAPTER_REPOS["v3"], model_set.lora_broken)
        yield hub


@pytest.fixture(scope="module")
def server(
    vllm_bin: Path,
    model_set: TinyHfModelSet,
    adapter_hub: LocalHub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VllmServer]:
    """`vllm serve` with the flags of a CPU pod; adapters come from the LocalHub by hub id."""
    workdir = tmp_path_factory.mktemp("vllm")
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "HF_ENDPOINT": adapter_hub.url,
        "HF_HOME": str(workdir / "hf-home"),  # a fresh download cache: the hub sees every download
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    port = free_port()
    command = [
        str(vllm_bin / "vllm"),
        "serve",
        str(model_set.model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-num-seqs",
        "2",
        "--kv-cache-memory-bytes",
        str(64 * 1024 * 1024),
        "--distributed-executor-backend",
        "uni",
        "--enable-lora",
        "--max-lora-rank",
        str(LORA_RANK),
        "--max-loras",
        "2",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "llama3_json",
    ]
    process = VllmServer(command=command, env=env, log_path=workdir / "vllm.log", port=port)
    process.start()
    try:
        process.wait_healthy()
        yield process
    finally:
        stop_seconds = process.stop()
        process.events.append(f"stopped in {stop_seconds:.1f}s")
        assert process.process is not None
        assert process.process.poll() is not None, "vllm serve survived stop()"


def post_json(server: VllmServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=REQUEST_TIMEOUT_SECONDS)


def chat(server: VllmServer, model: str, content: str = PROMPT, **extra: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
        **extra,
    }
    response = post_json(server, "/v1/chat/completions", body)
    assert response.status_code == httpx.codes.OK, response.text
    reply: dict[str, Any] = response.json()
    return reply


def load_adapter(server: VllmServer, name: str, repo: str) -> httpx.Response:
    return post_json(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": repo})


class TestServing:
    def test_starts_healthy_within_the_probe_budget(
        self, server: VllmServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        usage = server.process_group_rss_mib()
        total = sum(rss for _, rss in usage.values())
        show(capsys, f"vllm serve healthy after {server.started_seconds:.1f}s; RSS {total} MiB in {usage}")
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == httpx.codes.OK
        assert server.started_seconds < READY_TIMEOUT_SECONDS

    def test_chat_completion(self, server: VllmServer, capsys: pytest.CaptureFixture[str]) -> None:
        reply = chat(server, SERVED_NAME)
        show(capsys, f"chat completion: {json.dumps(reply)}")
        assert reply["model"] == SERVED_NAME
        assert reply["usage"]["completion_tokens"] > 0
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["choices"][0]["finish_reason"] in {"length", "stop"}

    def test_tool_call_request_renders_the_tools(self, server: VllmServer, capsys: pytest.CaptureFixture[str]) -> None:
        """The template puts the tool schemas in the prompt; random weights rarely produce a call, so the
        answer is checked for its shape, and the prompt for the tools."""
        question = "What is the weather in Paris?"
        plain = chat(server, SERVED_NAME, question)
        with_tools = chat(server, SERVED_NAME, question, tools=[WEATHER_TOOL], tool_choice="auto")
        show(capsys, f"tool-call request: {json.dumps(with_tools)}")
        message = with_tools["choices"][0]["message"]
        assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
        assert message["role"] == "assistant"
        assert isinstance(message.get("tool_calls", []), list)
        assert message["content"] is not None or message["tool_calls"]

    def test_metrics_carry_the_queue_gauge(self, server: VllmServer) -> None:
        response = httpx.get(f"{server.base_url}/metrics", timeout=10)
        assert response.status_code == httpx.codes.OK
        assert f'vllm:num_requests_waiting{{engine="0",model_name="{SERVED_NAME}"}}' in response.text
        assert "vllm:num_requests_running{" in response.text


class TestRuntimeAdapters:
    def test_load_by_hub_id_downloads_once_and_answers(
        self, server: VllmServer, adapter_hub: LocalHub, capsys: pytest.CaptureFixture[str]
    ) -> None:
        base = chat(server, SERVED_NAME)
        response = load_adapter(server, "support", ADAPTER_REPOS["v1"])
        show(capsys, f"load_lora_adapter support <- {ADAPTER_REPOS['v1']}: {response.status_code} {response.text}")
        assert response.status_code == httpx.codes.OK, response.text
        downloads = adapter_hub.downloads()
        assert downloads[f"{ADAPTER_REPOS['v1']}/adapter_config.json"] == 1
        assert downloads[f"{ADAPTER_REPOS['v1']}/adapter_model.safetensors"] == 1
        adapted = chat(server, "support")
        show(capsys, f"chat through adapter v1: {json.dumps(adapted)}")
        assert adapted["model"] == "support"
        base_text = base["choices"][0]["message"]["content"]
        assert adapted["choices"][0]["message"]["content"] != base_text, "the adapter changes the answer"
        models = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"]
        assert {"id": "support", "parent": SERVED_NAME, "root": ADAPTER_REPOS["v1"]}.items() <= next(
            model for model in models if model["id"] == "support"
        ).items()

    def test_v2_answers_differently_from_v1(self, server: VllmServer, capsys: pytest.CaptureFixture[str]) -> None:
        assert load_adapter(server, "support-next", ADAPTER_REPOS["v2"]).status_code == httpx.codes.OK
        if "support" not in {
            model["id"] for model in httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"]
        }:
            assert load_adapter(server, "support", ADAPTER_REPOS["v1"]).status_code == httpx.codes.OK
        v1 = chat(server, "support")["choices"][0]["message"]["content"]
        v2 = chat(server, "support-next")["choices"][0]["message"]["content"]
        show(capsys, f"adapter v1 {v1!r} | adapter v2 {v2!r}")
        assert v1 != v2

    def test_broken_release_is_refused_and_the_server_stays_healthy(
        self, server: VllmServer, adapter_hub: LocalHub, capsys: pytest.CaptureFixture[str]
    ) -> None:
        response = load_adapter(server, "support-broken", ADAPTER_REPOS["v3"])
        show(
            capsys, f"load_lora_adapter support-broken <- {ADAPTER_REPOS['v3']}: {response.status_code} {response.text}"
        )
        assert response.status_code == httpx.codes.NOT_FOUND
        error = response.json()["error"]
        assert error["type"] == "NotFoundError"
        assert error["message"] == f"Loading lora support-broken failed: No adapter found for {ADAPTER_REPOS['v3']}"
        # It was fetched (it looks like an adapter), and refused once on disk.
        assert adapter_hub.downloads()[f"{ADAPTER_REPOS['v3']}/adapter_model.safetensors"] >= 1
        assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == httpx.codes.OK
        unknown = post_json(
            server, "/v1/chat/completions", {"model": "support-broken", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert unknown.status_code == httpx.codes.NOT_FOUND
        assert chat(server, SERVED_NAME)["usage"]["completion_tokens"] > 0
