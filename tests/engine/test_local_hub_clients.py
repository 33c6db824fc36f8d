"""The LocalHub against the real clients that download hf:// sources in a pod.

- ``curl``: the operator renders ``curl -fL --retry 5 --retry-delay 5 -o <target>.part
  $HF_ENDPOINT/<org>/<repo>/resolve/main/<file> && mv <target>.part <target>`` for a single
  (GGUF) file; the host's curl runs that here.
- ``huggingface_hub.snapshot_download(repo_id=..., local_dir=...)`` for a checkpoint folder, run
  as the operator runs it (``python3 -c``) under the vLLM runtime's Python, which pins the
  huggingface_hub version the engine image carries. Skipped when that runtime is not built.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_operator_dev.local_hub import LocalHub
from llama_operator_dev.tiny_hf_models import TinyHfModelSet, tiny_hf_model_set
from llama_operator_dev.vllm_runtime import VLLM_RUNTIME_BUILD_SCRIPT, vllm_python

CLIENT_TIMEOUT_SECONDS = 120
CURL_EXIT_HTTP_ERROR = 22
GGUF_REPO = "org/tiny-gguf"
CHECKPOINT_REPO = "org/tiny-llama"

# Run by the vLLM runtime's Python: the operator's download line, with the outcome as JSON.
SNAPSHOT_SCRIPT = """
import json, sys
from huggingface_hub import snapshot_download
try:
    path = snapshot_download(repo_id=sys.argv[1], local_dir=sys.argv[2])
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
    sys.exit(1)
print(json.dumps({"path": path}))
"""


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "release" / "tiny-q8_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + os.urandom(3 * 1024 * 1024))
    return path


def curl_download(url: str, target: Path) -> subprocess.CompletedProcess[str]:
    """The operator's single-file download script, run by the host's curl."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not on PATH")
    script = f'curl -fL --retry 5 --retry-delay 5 -sS -o "{target}.part" "{url}" && mv "{target}.part" "{target}"'
    return subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_SECONDS, check=False
    )


class TestCurl:
    def test_a_single_file_arrives_byte_identical(self, hub: LocalHub, gguf_file: Path, tmp_path: Path) -> None:
        hub.publish(GGUF_REPO, gguf_file)
        target = tmp_path / "models" / "model.gguf"
        target.parent.mkdir()
        result = curl_download(f"{hub.url}/{GGUF_REPO}/resolve/main/{gguf_file.name}", target)
        assert result.returncode == 0, result.stderr
        assert target.read_bytes() == gguf_file.read_bytes()
        assert hub.downloads() == {f"{GGUF_REPO}/{gguf_file.name}": 1}
        assert hub.bytes_served() == gguf_file.stat().st_size

    @pytest.mark.parametrize("path", [f"{GGUF_REPO}/resolve/main/absent.gguf", "org/absent/resolve/main/x.gguf"])
    def test_a_404_source_fails_and_leaves_no_model(
        self, hub: LocalHub, gguf_file: Path, tmp_path: Path, path: str
    ) -> None:
        hub.publish(GGUF_REPO, gguf_file)
        target = tmp_path / "model.gguf"
        result = curl_download(f"{hub.url}/{path}", target)
        assert result.returncode == CURL_EXIT_HTTP_ERROR, result.stderr
        assert "404" in result.stderr
        assert not target.exists()
        assert hub.downloads() == {}


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    python = vllm_python()
    if python is None:
        pytest.skip(f"the vLLM runtime is not built; build it with `{VLLM_RUNTIME_BUILD_SCRIPT}` (make vllmruntime)")
    return python


@pytest.fixture(scope="module")
def checkpoint(runtime_python: Path) -> TinyHfModelSet:
    return tiny_hf_model_set()


def snapshot_download(python: Path, hub: LocalHub, repo_id: str, local_dir: Path, home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    result = subprocess.run(
        [str(python), "-c", SNAPSHOT_SCRIPT, repo_id, str(local_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLIENT_TIMEOUT_SECONDS,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no outcome printed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    outcome: dict[str, str] = json.loads(lines[-1])
    assert (result.returncode == 0) == ("path" in outcome), result.stderr[-3000:]
    return outcome


def repo_files(folder: Path) -> dict[str, bytes]:
    """Every file under folder except huggingface_hub's own bookkeeping in .cache/."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(folder).parts
    }


class TestSnapshotDownload:
    def test_a_checkpoint_folder_arrives_byte_identical_over_plain_http(
        self,
        runtime_python: Path,
        checkpoint: TinyHfModelSet,
        hub: LocalHub,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        hub.publish(CHECKPOINT_REPO, checkpoint.model_dir)
        local_dir = tmp_path / "model"
        with caplog.at_level(logging.DEBUG, logger="llama_operator_dev.local_hub"):
            outcome = snapshot_download(runtime_python, hub, CHECKPOINT_REPO, local_dir, tmp_path / "hf-home")
        assert Path(outcome["path"]) == local_dir
        published = repo_files(checkpoint.model_dir)
        assert set(published) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
        assert repo_files(local_dir) == published
        assert hub.downloads() == {f"{CHECKPOINT_REPO}/{name}": 1 for name in published}
        # What it asked for: the repo info, the tree, then a HEAD and a GET per file; no Xet, no errors.
        requests = [record.getMessage() for record in caplog.records if '"' in record.getMessage()]
        assert any(f"GET /api/models/{CHECKPOINT_REPO}/revision/main " in line for line in requests)
        assert any(f"GET /api/models/{CHECKPOINT_REPO}/tree/" in line for line in requests)
        assert sum(f"HEAD /{CHECKPOINT_REPO}/resolve/" in line for line in requests) == len(published)
        assert not [line for line in requests if "xet" in line.lower() or '" 404' in line or '" 5' in line]

    def test_a_warm_local_dir_downloads_nothing_and_a_new_release_only_what_changed(
        self, runtime_python: Path, checkpoint: TinyHfModelSet, hub: LocalHub, tmp_path: Path
    ) -> None:
        hub.publish(CHECKPOINT_REPO, checkpoint.model_dir)
        local_dir = tmp_path / "model"
        snapshot_download(runtime_python, hub, CHECKPOINT_REPO, local_dir, tmp_path / "hf-home")
        first = hub.downloads()
        snapshot_download(runtime_python, hub, CHECKPOINT_REPO, local_dir, tmp_path / "hf-home")
        assert hub.downloads() == first, "a restart with the files in place fetches nothing"

        release = tmp_path / "release" / "generation_config.json"
        release.parent.mkdir()
        release.write_text('{"eos_token_id": [1, 4, 5], "temperature": 0.6}\n')
        hub.publish(CHECKPOINT_REPO, release)
        snapshot_download(runtime_python, hub, CHECKPOINT_REPO, local_dir, tmp_path / "hf-home")
        assert (local_dir / "generation_config.json").read_bytes() == release.read_bytes()
        changed = {key: count - first.get(key, 0) for key, count in hub.downloads().items()}
        assert {key: count for key, count in changed.items() if count} == {
            f"{CHECKPOINT_REPO}/generation_config.json": 1
        }

    def test_an_unknown_repo_fails(self, runtime_python: Path, hub: LocalHub, tmp_path: Path) -> None:
        outcome = snapshot_download(runtime_python, hub, "org/absent", tmp_path / "model", tmp_path / "hf-home")
        assert outcome["error"] == "RepositoryNotFoundError", outcome
        assert not (tmp_path / "model").exists() or not repo_files(tmp_path / "model")
        assert hub.downloads() == {}
