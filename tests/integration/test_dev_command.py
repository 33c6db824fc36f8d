"""`llama-operator-dev` (what `make demo` runs): every example placed on its planned pool, the pods that
really serve announced with a copy-paste `curl` that answers, nothing left after Ctrl-C."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from llama_operator_dev.vllm_runtime import vllm_python
from tests.integration.cluster_setup import poll_until, skip_without_binaries

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_NAMES = {"llama-3b-cpu", "llama-70b-awq", "llama-8b-chat", "llama-8b-tgi", "scout-agent"}
# The examples that really serve: llama.cpp on CPU; the vLLM 24 GB one when the vLLM runtime is built.
REAL_VLLM = vllm_python() is not None
SERVING = {"llama-3b-cpu", "llama-8b-chat"} if REAL_VLLM else {"llama-3b-cpu"}
READY_SECONDS = 300 if REAL_VLLM else 120  # a real vLLM start takes a minute on two busy cores


def processes_mentioning(text: str) -> set[int]:
    """Pids whose command line or environment names `text` (our workdir: every child of `dev` does)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if text.encode() in (entry / part).read_bytes():
                    found.add(int(entry.name))
                    break
            except OSError:
                continue
    return found


def alive(pids: set[int]) -> set[int]:
    return {
        pid
        for pid in pids
        if Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace").lower()
    }


def placed_table(lines: list[str]) -> dict[str, list[str]] | None:
    """The last table printed, when every example is Ready: name -> columns."""
    rows: dict[str, list[str]] = {}
    for line in lines:
        columns = line.split()
        if columns and columns[0] in EXAMPLE_NAMES:
            rows[columns[0]] = columns
    ready = len(rows) == len(EXAMPLE_NAMES) and all(r[-1] == "Ready" for r in rows.values())
    return rows if ready else None


def curl_lines(lines: list[str]) -> dict[str, str] | None:
    """Deployment -> the `curl` line the demo printed for it, once every serving example has one."""
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        if "send it a chat request" in line and index + 1 < len(lines):
            deployment = line.split("] ", 1)[-1].split(" ", 1)[0]
            found[deployment] = lines[index + 1].strip()
    return found if set(found) >= SERVING else None


def test_dev_places_every_example_and_leaves_nothing_behind(tmp_path: Path) -> None:
    skip_without_binaries()
    workdir = tmp_path / "dev"
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_operator_dev.cli", "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        rows = poll_until(lambda: placed_table(lines), READY_SECONDS, "every example Ready in the dev table")
        children = processes_mentioning(str(workdir))
        assert len(children) >= 6, "control plane components and the operator run as children"
        curls = poll_until(lambda: curl_lines(lines), 30, f"a curl line for each of {sorted(SERVING)}")
        for deployment, line in sorted(curls.items()):
            argv = shlex.split(line)
            assert argv[:2] == ["curl", "-s"], line
            answer = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            print(f"{deployment}: {line}\n  -> {answer.stdout[:300]}")
            assert answer.returncode == 0, answer.stderr
            reply = json.loads(answer.stdout)
            assert reply["choices"][0]["message"]["role"] == "assistant", reply
            assert reply["usage"]["completion_tokens"] >= 1
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        reader.join(timeout=5)
    print("\n".join(lines))  # the placement table, in the test log
    for name, columns in rows.items():
        planned_class, pool = columns[2], columns[-3]  # GPUS is "<class> xN" or "cpu"; NODE POOL is third from last
        # CPU plans run on the real (process-backed) CPU pool when llama-server is built, else on fake CPU nodes;
        # the vLLM 24 GB example on the real GPU pool when the vLLM runtime is built.
        allowed = {"cpu", "cpu-real"} if planned_class == "cpu" else {planned_class, f"{planned_class}-real"}
        assert pool in allowed, f"{name}: planned {planned_class}, placed on {pool}"
    assert poll_until(lambda: True if not alive(children) else None, 20, "every child process to exit")
    assert any("nothing left running" in line for line in lines)
