"""The vLLM stand-in answers as vLLM documents its OpenAI server: runtime LoRA loading, models, chat,
queue metrics, SIGTERM. Each server is a real process on 127.0.0.1, started with the flags the
operator renders."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llama_operator_dev.process_pod_paths import container_command, process_environment
from tests.standins.vllm_openai import ServeOptions, StandinUsageError, parse_serve_args

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "tests" / "standins" / "vllm"
NAME = "chat"
MODEL = "/models/model"
RENDERED_HOST = "0.0.0.0"  # noqa: S104 - what the operator renders; the kubelet binds the pod's address
START_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Standin:
    process: subprocess.Popen[bytes]
    url: str

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the stand-in exited with {self.process.returncode}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)
        pytest.fail(f"the stand-in did not serve {self.url} within {START_TIMEOUT_SECONDS:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_standin(flags: list[str], env: Mapping[str, str]) -> Standin:
    """The wrapper script, as a pod runs it: ``vllm serve MODEL ...`` (not waited for)."""
    port = free_port()
    argv = [str(WRAPPER), "serve", MODEL, "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*argv, *flags],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": sys.executable, **env},
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Standin(process, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hub adapters as PEFT folders: two good versions and a broken one."""
    root = tmp_path_factory.mktemp("hub")
    for version, weights in (("v1", b"weights one"), ("v2", b"weights two"), ("v3", b"BROKEN weights")):
        folder = root / "org" / f"support-{version}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"r": 8}')
        (folder / "adapter_model.safetensors").write_bytes(weights)
    return root


@dataclass
class Servers:
    lora: Standin  # --enable-lora, runtime updating allowed
    locked: Standin  # --enable-lora, runtime updating not allowed
    no_lora: Standin  # runtime updating allowed, LoRA not enabled
    slow: Standin  # 2 sequences at once, 1 s per request


@pytest.fixture(scope="module")
def servers(hub: Path) -> Iterator[Servers]:
    lora_flags = ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16", "--tensor-parallel-size", "1"]
    runtime = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "STANDIN_HUB_DIR": str(hub)}
    with ExitStack() as stack:
        started = Servers(
            lora=start_standin(lora_flags, runtime),
            locked=start_standin(lora_flags, {"STANDIN_HUB_DIR": str(hub)}),
            no_lora=start_standin([], runtime),
            slow=start_standin(["--max-num-seqs", "2"], {"STANDIN_DELAY_SECONDS": "1.0"}),
        )
        for standin in (started.lora, started.locked, started.no_lora, started.slow):
            stack.callback(standin.stop)
        for standin in (started.lora, started.locked, started.no_lora, started.slow):
            standin.wait_serving()
        yield started


def load(url: str, name: str, path: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=5)


def unload(url: str, name: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=5)


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def model_entries(url: str) -> dict[str, dict[str, object]]:
    response = httpx.get(f"{url}/v1/models", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    return {entry["id"]: entry for entry in body["data"]}


class TestCommandLine:
    def test_the_operators_rendered_args_parse(self) -> None:
        args = [
            "serve", MODEL, "--served-model-name", "llama-8b-chat", "--host", RENDERED_HOST, "--port", "8000",
            "--dtype", "auto", "--tensor-parallel-size", "1", "--max-num-seqs", "2", "--enable-lora",
            "--max-loras", "3", "--max-lora-rank", "32", "--lora-modules", "support=/adapters/support/v1",
            "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json", "--kv-cache-dtype=auto",
        ]  # fmt: skip
        assert parse_serve_args(args) == ServeOptions(
            model=MODEL,
            served_model_name="llama-8b-chat",
            host=RENDERED_HOST,
            port=8000,
            enable_lora=True,
            max_loras=3,
            max_lora_rank=32,
            max_num_seqs=2,
            lora_modules=(("support", "/adapters/support/v1"),),
        )

    @pytest.mark.parametrize(
        ("args", "refusal"),
        [
            (["--disable-log-requests"], "unrecognized arguments: --disable-log-requests"),  # removed in vLLM 0.1x
            (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
            (["--enable-lora=yes"], "argument --enable-lora: ignored explicit argument 'yes'"),
            (["--max-num-seqs"], "argument --max-num-seqs: expected one argument"),
            (["--port", "8000", "9000"], "unrecognized arguments: 9000"),
            (["--lora-modules"], "argument --lora-modules: expected at least one argument"),
        ],
    )
    def test_what_vllm_refuses_is_refused(self, args: list[str], refusal: str) -> None:
        with pytest.raises(StandinUsageError, match=re.escape(refusal)):
            parse_serve_args(["serve", MODEL, *args])

    def test_flags_read_as_vllm_reads_them(self) -> None:
        options = parse_serve_args(["serve", MODEL, "--max_num_seqs", "3", "--port=9001", "--kv-cache-memory-bytes",
                                    "67108864", "--no-enable-log-requests"])  # fmt: skip
        assert (options.max_num_seqs, options.port) == (3, 9001)

    def test_defaults_follow_vllm(self) -> None:
        options = parse_serve_args(["serve", "org/model"])
        assert (options.served_model_name, options.port, options.enable_lora, options.max_num_seqs) == (
            "org/model",
            8000,
            False,
            4,
        )

    def test_a_pod_process_gets_the_harness_env_under_its_own(self) -> None:
        container = {"command": ["vllm", "serve"], "args": [MODEL, "--host", RENDERED_HOST]}
        argv = container_command(container, {"vllm": WRAPPER, MODEL: Path("/tmp/model")}, "127.0.1.7")
        assert argv == [str(WRAPPER), "serve", "/tmp/model", "--host", "127.0.1.7"]
        env = process_environment(
            {"PATH": "/bin", "HOME": "/pod"},
            {"STANDIN_HUB_DIR": "/hub", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false"},
            {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
        )
        assert env == {
            "PATH": "/bin",
            "HOME": "/pod",
            "STANDIN_HUB_DIR": "/hub",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        }


class TestModelsAndHealth:
    def test_health_is_200_with_an_empty_body(self, servers: Servers) -> None:
        response = httpx.get(f"{servers.lora.url}/health", timeout=5)
        assert (response.status_code, response.content) == (200, b"")

    def test_models_lists_the_base_model(self, servers: Servers) -> None:
        entries = model_entries(servers.no_lora.url)
        assert entries == {NAME: {"id": NAME, "object": "model", "root": MODEL, "parent": None}}


class TestRuntimeLoRA:
    def test_load_from_the_hub_lists_the_adapter_with_its_parent(self, servers: Servers) -> None:
        response = load(servers.lora.url, "listed", "org/support-v1")
        assert response.status_code == 200
        assert response.text == "Success: LoRA adapter 'listed' added successfully."
        entries = model_entries(servers.lora.url)
        assert entries["listed"] == {"id": "listed", "object": "model", "root": "org/support-v1", "parent": NAME}
        assert entries[NAME]["parent"] is None

    def test_an_absolute_path_that_exists_loads(self, servers: Servers, hub: Path) -> None:
        assert load(servers.lora.url, "absolute", str(hub / "org" / "support-v2")).status_code == 200

    def test_loading_a_loaded_name_again_is_400(self, servers: Servers) -> None:
        assert load(servers.lora.url, "twice", "org/support-v1").status_code == 200
        again = load(servers.lora.url, "twice", "org/support-v2")
        assert again.status_code == 400
        assert "has already been loaded" in again.json()["error"]["message"]

    @pytest.mark.parametrize("path", ["org/missing", "/no/such/adapter"])
    def test_a_path_that_cannot_be_found_is_404(self, servers: Servers, path: str) -> None:
        response = load(servers.lora.url, "missing", path)
        assert response.status_code == 404
        assert "missing" not in model_entries(servers.lora.url)

    def test_a_broken_adapter_is_400_and_not_served(self, servers: Servers) -> None:
        response = load(servers.lora.url, "broken", "org/support-v3")
        assert response.status_code == 400
        assert response.json()["error"]["message"]
        assert chat(servers.lora.url, "broken").status_code == 404

    def test_unload_removes_the_adapter(self, servers: Servers) -> None:
        assert load(servers.lora.url, "gone", "org/support-v1").status_code == 200
        assert unload(servers.lora.url, "gone").status_code == 200
        assert "gone" not in model_entries(servers.lora.url)
        assert chat(servers.lora.url, "gone").status_code == 404

    def test_unloading_an_unknown_adapter_is_404(self, servers: Servers) -> None:
        assert unload(servers.lora.url, "never-loaded").status_code == 404

    def test_without_runtime_updating_the_routes_are_404(self, servers: Servers) -> None:
        assert load(servers.locked.url, "support", "org/support-v1").status_code == 404
        assert unload(servers.locked.url, "support").status_code == 404

    def test_without_enable_lora_loading_is_400(self, servers: Servers) -> None:
        response = load(servers.no_lora.url, "support", "org/support-v1")
        assert response.status_code == 400
        assert "LoRA is not enabled" in response.json()["error"]["message"]


class TestChat:
    def test_an_unknown_model_is_404(self, servers: Servers) -> None:
        response = chat(servers.lora.url, "nobody")
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "The model `nobody` does not exist."

    def test_each_adapter_version_answers_differently_and_deterministically(self, servers: Servers) -> None:
        url = servers.lora.url
        assert load(url, "chat-v1", "org/support-v1").status_code == 200
        assert load(url, "chat-v2", "org/support-v2").status_code == 200
        texts = {}
        for model in (NAME, "chat-v1", "chat-v2"):
            response = chat(url, model)
            assert response.status_code == 200
            body = response.json()
            assert body["object"] == "chat.completion"
            assert body["model"] == model
            assert body["usage"]["completion_tokens"] > 0
            texts[model] = body["choices"][0]["message"]["content"]
            assert texts[model].startswith(f"hello from {model} ")
        assert len(set(texts.values())) == 3
        assert chat(url, "chat-v1").json()["choices"][0]["message"]["content"] == texts["chat-v1"]


class TestQueueMetrics:
    def test_requests_beyond_max_num_seqs_wait(self, servers: Servers) -> None:
        url = servers.slow.url
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert f'vllm:num_requests_running{{model_name="{NAME}"}} 0.0' in metrics
        assert f'vllm:num_requests_waiting{{model_name="{NAME}"}} 0.0' in metrics
        with ThreadPoolExecutor(max_workers=4) as pool:
            replies = [pool.submit(chat, url, NAME) for _ in range(4)]
            deadline = time.monotonic() + 0.9  # the first two finish after 1 s
            seen = ""
            while time.monotonic() < deadline:
                seen = httpx.get(f"{url}/metrics", timeout=5).text
                if f'vllm:num_requests_waiting{{model_name="{NAME}"}} 2.0' in seen:
                    break
                time.sleep(0.02)
            assert f'vllm:num_requests_running{{model_name="{NAME}"}} 2.0' in seen
            assert f'vllm:num_requests_waiting{{model_name="{NAME}"}} 2.0' in seen
            assert [reply.result().status_code for reply in replies] == [200] * 4


def sigterm_handler_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM (Linux: the SigCgt mask in /proc/PID/status).

    The stand-in installs its handler right before it starts "loading", and neither the wrapper
    script (bash) nor a starting Python interpreter catches SIGTERM: this is when loading begins.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def wait_until(check: Callable[[], bool], timeout_seconds: float, what: str) -> float:
    """Poll ``check`` until it holds; the monotonic time it was first seen to hold."""
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_seconds:.1f}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic()


def port_refuses(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.ConnectError:
        return True
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
def test_the_port_stays_closed_while_loading_and_sigterm_finishes_requests_in_flight() -> None:
    load_seconds = 1.0
    standin = start_standin([], {"STANDIN_LOAD_SECONDS": str(load_seconds), "STANDIN_DELAY_SECONDS": "1.0"})

    def loading() -> bool:
        assert standin.process.poll() is None, f"the stand-in exited with {standin.process.returncode}"
        return sigterm_handler_installed(standin.process.pid)

    def serving() -> bool:
        assert standin.process.poll() is None, f"the stand-in exited with {standin.process.returncode}"
        return not port_refuses(standin.url)

    try:
        loading_since = wait_until(loading, START_TIMEOUT_SECONDS, "the stand-in to start loading")
        assert port_refuses(standin.url), "the port answered as soon as the stand-in started loading"

        opened_at = wait_until(serving, START_TIMEOUT_SECONDS, "the port to open after loading")
        # Observing the handler late can only shorten what is measured; an instant open measures ~0.
        assert opened_at - loading_since >= load_seconds / 2, "the port opened long before loading could finish"
        assert httpx.get(f"{standin.url}/health", timeout=1).status_code == 200

        result: list[httpx.Response] = []
        request = threading.Thread(target=lambda: result.append(chat(standin.url, NAME)))
        request.start()
        running = f'vllm:num_requests_running{{model_name="{NAME}"}} 1.0'
        wait_until(
            lambda: running in httpx.get(f"{standin.url}/metrics", timeout=1).text,
            1.0,  # the request's 1 s "generation"
            "the request to be in flight",
        )
        standin.process.send_signal(signal.SIGTERM)
        assert standin.process.wait(timeout=5) == 0
        request.join(timeout=5)
        assert [response.status_code for response in result] == [200]
        assert port_refuses(standin.url)
    finally:
        standin.stop()
