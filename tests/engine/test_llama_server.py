"""The real llama-server, built from the pinned sdist, serving the tiny generated model.

These are the facts the operator's llama.cpp rendering relies on: the flags it renders exist and
take their value as a separate argument, the sizing flags show up in /props and /slots, adapters
given with --lora are listed and selectable per request, /metrics carries the queue gauges the
autoscaler reads, and a bad adapter makes the server exit with a reason instead of hanging.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_operator_dev.binaries import parse_versions_env
from llama_operator_dev.tiny_models import LLAMA_SERVER_VERSION_FILE, TINY_MODEL_NAME, TinyModelSet
from tests.engine.conftest import LlamaServerInstall, LlamaServerProcess

CTX_SIZE = 4096
PARALLEL = 2
REQUEST_TIMEOUT_SECONDS = 60.0

# Every flag of ENGINES.md that the llama.cpp renderer may emit, long and short spellings.
RENDERED_FLAGS = (
    "-m",
    "--model",
    "-c",
    "--ctx-size",
    "-ngl",
    "--n-gpu-layers",
    "-np",
    "--parallel",
    "-ub",
    "--ubatch-size",
    "-ctk",
    "--cache-type-k",
    "-ctv",
    "--cache-type-v",
    "-sm",
    "--split-mode",
    "--metrics",
    "--alias",
    "--lora",
    "--lora-scaled",
    "--lora-init-without-apply",
    "--jinja",
    "--host",
    "--port",
)


@pytest.fixture(scope="module")
def server(
    llama_server_install: LlamaServerInstall, tiny_models: TinyModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServerProcess]:
    """One server for the module, started with the flags the operator renders for a CPU pod."""
    args = [
        "--model",
        str(tiny_models.model.path),
        "--alias",
        TINY_MODEL_NAME,
        "--ctx-size",
        str(CTX_SIZE),
        "--parallel",
        str(PARALLEL),
        "--n-gpu-layers",
        "0",
        "--threads",
        "2",
        "--lora",
        str(tiny_models.lora_v1),
        "--lora",
        str(tiny_models.lora_v2),
        "--metrics",
        "--jinja",
    ]
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with LlamaServerProcess(binary=llama_server_install.binary, args=args, log_path=log_path) as process:
        process.wait_healthy()
        yield process


def chat(server: LlamaServerProcess, content: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 12,
        "temperature": 0,
        **extra,
    }
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == httpx.codes.OK, response.text
    reply: dict[str, Any] = response.json()
    return reply


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print into the test log even when pytest captures output."""
    with capsys.disabled():
        print(f"\n{line}")


class TestBuiltBinary:
    def test_version_is_the_pinned_llama_cpp_build(self, llama_server_install: LlamaServerInstall) -> None:
        pinned = parse_versions_env(LLAMA_SERVER_VERSION_FILE.read_text(encoding="utf-8"))
        result = subprocess.run(
            [str(llama_server_install.binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        output = result.stdout + result.stderr
        assert f"build {pinned['LLAMA_CPP_BUILD_NUMBER']}" in output
        assert f"commit {pinned['LLAMA_CPP_COMMIT']}" in output

    def test_help_lists_every_flag_the_operator_renders(self, llama_server_install: LlamaServerInstall) -> None:
        result = subprocess.run(
            [str(llama_server_install.binary), "--help"], capture_output=True, text=True, timeout=30, check=True
        )
        listed = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", result.stdout + result.stderr))
        assert not [flag for flag in RENDERED_FLAGS if flag not in listed]

    def test_unknown_flag_and_flag_equals_value_are_refused(
        self, llama_server_install: LlamaServerInstall, tiny_models: TinyModelSet
    ) -> None:
        """The renderer must emit `--flag value` as two arguments: `--flag=value` is an error."""
        for bad in (["--port=8080"], ["--no-such-flag", "1"]):
            result = subprocess.run(
                [str(llama_server_install.binary), "--model", str(tiny_models.model.path), *bad],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode != 0
            assert f"invalid argument: {bad[0]}" in result.stdout + result.stderr


class TestServing:
    def test_health_is_ok(self, server: LlamaServerProcess) -> None:
        response = httpx.get(f"{server.base_url}/health", timeout=5)
        assert response.status_code == httpx.codes.OK
        assert response.json() == {"status": "ok"}

    def test_chat_completion_returns_tokens(
        self, server: LlamaServerProcess, capsys: pytest.CaptureFixture[str]
    ) -> None:
        reply = chat(server, "Hello! Who are you?")
        content = reply["choices"][0]["message"]["content"]
        show(capsys, f"llama-server {server.base_url} replied {content!r} ({reply['usage']})")
        assert reply["usage"]["completion_tokens"] > 0
        assert reply["usage"]["prompt_tokens"] > 0
        assert reply["choices"][0]["finish_reason"] in {"length", "stop"}
        assert reply["model"] == TINY_MODEL_NAME

    def test_props_and_slots_report_the_sizing_flags(self, server: LlamaServerProcess) -> None:
        """--ctx-size is the total over all slots: each of the --parallel slots gets an equal share."""
        props = httpx.get(f"{server.base_url}/props", timeout=5).json()
        assert props["total_slots"] == PARALLEL
        assert props["default_generation_settings"]["n_ctx"] == CTX_SIZE // PARALLEL
        assert props["model_alias"] == TINY_MODEL_NAME
        slots = httpx.get(f"{server.base_url}/slots", timeout=5).json()
        assert [slot["n_ctx"] for slot in slots] == [CTX_SIZE // PARALLEL] * PARALLEL

    def test_metrics_carry_the_queue_gauges(self, server: LlamaServerProcess) -> None:
        chat(server, "warm up the counters")
        response = httpx.get(f"{server.base_url}/metrics", timeout=5)
        assert response.status_code == httpx.codes.OK
        samples = dict(re.findall(r"^(llamacpp:[a-z_]+) ([0-9.e+-]+)$", response.text, flags=re.MULTILINE))
        assert float(samples["llamacpp:requests_processing"]) >= 0
        assert float(samples["llamacpp:requests_deferred"]) >= 0
        assert float(samples["llamacpp:tokens_predicted_total"]) > 0
        assert "# TYPE llamacpp:requests_deferred gauge" in response.text


class TestAdapters:
    def test_lora_adapters_lists_both_at_full_scale(
        self, server: LlamaServerProcess, tiny_models: TinyModelSet
    ) -> None:
        adapters = httpx.get(f"{server.base_url}/lora-adapters", timeout=5).json()
        assert [(item["id"], Path(item["path"]), item["scale"]) for item in adapters] == [
            (0, tiny_models.lora_v1, 1.0),
            (1, tiny_models.lora_v2, 1.0),
        ]

    def test_a_request_selects_one_adapter(
        self, server: LlamaServerProcess, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Greedy replies through v1, v2 and no adapter differ, so a smoke request can tell them apart."""
        prompt = "Write a haiku about Kubernetes."
        base = chat(server, prompt, lora=[{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}])
        with_v1 = chat(server, prompt, lora=[{"id": 0, "scale": 1.0}])
        with_v2 = chat(server, prompt, lora=[{"id": 1, "scale": 1.0}])
        replies = [reply["choices"][0]["message"]["content"] for reply in (base, with_v1, with_v2)]
        show(capsys, f"base {replies[0]!r} | lora v1 {replies[1]!r} | lora v2 {replies[2]!r}")
        assert with_v1["usage"]["completion_tokens"] > 0
        assert len(set(replies)) == 3
        assert chat(server, prompt, lora=[{"id": 0, "scale": 1.0}])["choices"][0]["message"]["content"] == replies[1]


def test_a_broken_adapter_stops_the_server_with_its_reason(
    llama_server_install: LlamaServerInstall, tiny_models: TinyModelSet, tmp_path: Path
) -> None:
    args = ["--model", str(tiny_models.model.path), "--lora", str(tiny_models.lora_broken), "--metrics"]
    with LlamaServerProcess(binary=llama_server_install.binary, args=args, log_path=tmp_path / "broken.log") as process:
        exit_code = process.wait_exit(timeout_seconds=60)
        log = process.log_tail()
    assert exit_code != 0
    assert "tensor 'blk.0.attn_q.weight' has incorrect shape" in log
    assert "failed to load lora adapter" in log
