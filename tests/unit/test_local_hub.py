"""The local Hub look-alike, on the wire: what huggingface_hub and curl read from a real Hub.

Each test talks HTTP to a real LocalHub on loopback (httpx here; the engine tests run the real
clients, curl and huggingface_hub's snapshot_download, against it).
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llama_operator_dev.local_hub import LocalHub

REPO = "org/tiny-model"
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}\n'
# Larger than the hub's 1 MiB copy chunk, so a body goes out in several writes.
WEIGHTS = bytes(range(256)) * 5000 + b"tail"
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "nested" / "model.safetensors").write_bytes(WEIGHTS)
    return folder


@pytest.fixture
def hub(tmp_path: Path, source: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as running:
        running.publish(REPO, source)
        yield running


@pytest.fixture
def client(hub: LocalHub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10.0) as http:
        yield http


def resolve(path: str, revision: str = "main", repo: str = REPO) -> str:
    return f"/{repo}/resolve/{revision}/{path}"


class TestResolve:
    def test_head_carries_what_hf_hub_download_needs(self, client: httpx.Client) -> None:
        response = client.head(resolve("nested/model.safetensors"), headers={"Accept-Encoding": "identity"})
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(WEIGHTS)
        assert response.headers["ETag"] == f'"{sha256_hex(WEIGHTS)}"'
        assert COMMIT.match(response.headers["X-Repo-Commit"])
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.content == b""
        # No Xet headers: huggingface_hub then downloads over plain HTTP from this very URL.
        assert not [name for name in response.headers if name.lower().startswith("x-xet")]

    def test_get_returns_the_published_bytes_at_main_and_at_the_commit(self, client: httpx.Client) -> None:
        by_branch = client.get(resolve("nested/model.safetensors"))
        commit = by_branch.headers["X-Repo-Commit"]
        by_commit = client.get(resolve("nested/model.safetensors", revision=commit))
        assert by_branch.status_code == by_commit.status_code == 200
        assert by_branch.content == by_commit.content == WEIGHTS
        assert client.get(resolve("config.json")).content == CONFIG

    def test_a_range_resumes_a_download(self, client: httpx.Client) -> None:
        response = client.get(resolve("nested/model.safetensors"), headers={"Range": "bytes=1000-"})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes 1000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        assert response.content == WEIGHTS[1000:]
        middle = client.get(resolve("nested/model.safetensors"), headers={"Range": "bytes=10-19"})
        assert middle.content == WEIGHTS[10:20]
        suffix = client.get(resolve("config.json"), headers={"Range": "bytes=-5"})
        assert suffix.content == CONFIG[-5:]

    def test_a_range_past_the_end_is_416(self, client: httpx.Client) -> None:
        response = client.get(resolve("config.json"), headers={"Range": f"bytes={len(CONFIG)}-"})
        assert response.status_code == 416
        assert response.headers["Content-Range"] == f"bytes */{len(CONFIG)}"


class TestNotFound:
    @pytest.mark.parametrize("method", ["GET", "HEAD"])
    def test_unknown_repo_is_repo_not_found(self, client: httpx.Client, method: str) -> None:
        response = client.request(method, resolve("config.json", repo="org/missing"))
        assert response.status_code == 404
        assert response.headers["X-Error-Code"] == "RepoNotFound"
        assert client.get("/api/models/org/missing").headers["X-Error-Code"] == "RepoNotFound"
        assert client.get("/api/models/org/missing/tree/main").headers["X-Error-Code"] == "RepoNotFound"

    @pytest.mark.parametrize("method", ["GET", "HEAD"])
    def test_unknown_file_is_entry_not_found_with_the_commit(self, client: httpx.Client, method: str) -> None:
        response = client.request(method, resolve("model.gguf"))
        assert response.status_code == 404
        assert response.headers["X-Error-Code"] == "EntryNotFound"
        assert COMMIT.match(response.headers["X-Repo-Commit"])
        if method == "GET":
            assert "model.gguf" in response.json()["error"]

    def test_unknown_revision_is_revision_not_found(self, client: httpx.Client) -> None:
        for path in (resolve("config.json", revision="v2"), f"/api/models/{REPO}/revision/v2"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.headers["X-Error-Code"] == "RevisionNotFound", path

    def test_other_repo_types_and_routes_are_404(self, client: httpx.Client) -> None:
        assert client.get(f"/api/datasets/{REPO}").headers["X-Error-Code"] == "RepoNotFound"
        assert client.get("/nothing/here").status_code == 404
        assert client.get(f"/{REPO}/resolve/main").status_code == 404  # no file path
        assert client.get(f"/{REPO}/resolve/main/../../{REPO}/resolve/main/config.json").status_code == 404


class TestApi:
    def test_model_info_names_the_commit_and_every_file(self, client: httpx.Client) -> None:
        info = client.get(f"/api/models/{REPO}/revision/main").json()
        commit = client.head(resolve("config.json")).headers["X-Repo-Commit"]
        assert info["id"] == REPO
        assert info["sha"] == commit
        assert [sibling["rfilename"] for sibling in info["siblings"]] == ["config.json", "nested/model.safetensors"]
        assert client.get(f"/api/models/{REPO}").json()["sha"] == commit
        assert client.get(f"/api/models/{REPO}/revision/{commit}").json()["sha"] == commit

    def test_recursive_tree_lists_files_with_sizes_and_hashes(self, client: httpx.Client) -> None:
        tree = client.get(f"/api/models/{REPO}/tree/main", params={"recursive": "true", "expand": "false"}).json()
        files = {item["path"]: item for item in tree if item["type"] == "file"}
        assert set(files) == {"config.json", "nested/model.safetensors"}
        weights = files["nested/model.safetensors"]
        assert weights["size"] == len(WEIGHTS)
        assert weights["lfs"]["oid"] == sha256_hex(WEIGHTS)
        git_blob = hashlib.sha1(f"blob {len(WEIGHTS)}\0".encode() + WEIGHTS, usedforsecurity=False).hexdigest()
        assert weights["oid"] == git_blob
        assert "xetHash" not in weights
        assert [item["path"] for item in tree if item["type"] == "directory"] == ["nested"]

    def test_flat_tree_and_sub_tree(self, client: httpx.Client) -> None:
        flat = client.get(f"/api/models/{REPO}/tree/main").json()
        assert sorted(item["path"] for item in flat) == ["config.json", "nested"]
        nested = client.get(f"/api/models/{REPO}/tree/main/nested").json()
        assert [item["path"] for item in nested] == ["nested/model.safetensors"]
        assert client.get(f"/api/models/{REPO}/tree/main/absent").headers["X-Error-Code"] == "EntryNotFound"

    def test_paths_info(self, client: httpx.Client) -> None:
        response = client.post(
            f"/api/models/{REPO}/paths-info/main",
            data={"paths": ["config.json", "nested", "absent.bin"], "expand": "false"},
        )
        assert response.status_code == 200
        assert [(item["type"], item["path"]) for item in response.json()] == [
            ("file", "config.json"),
            ("directory", "nested"),
        ]

    def test_agent_registry_is_empty(self, client: httpx.Client) -> None:
        assert client.get("/api/agent-harnesses").json() == {"standardEnvVars": [], "harnesses": {}}


class TestPublish:
    def test_a_new_release_changes_the_commit_and_the_old_one_is_gone(
        self, hub: LocalHub, client: httpx.Client, tmp_path: Path
    ) -> None:
        before = client.head(resolve("config.json")).headers["X-Repo-Commit"]
        release = tmp_path / "config.json"
        release.write_bytes(b'{"v": 2}\n')
        assert hub.publish(REPO, release) == ["config.json"]
        after = client.get(resolve("config.json"))
        assert after.content == b'{"v": 2}\n'
        assert after.headers["X-Repo-Commit"] != before
        assert client.get(resolve("config.json", revision=before)).headers["X-Error-Code"] == "RevisionNotFound"
        assert client.get(resolve("nested/model.safetensors")).content == WEIGHTS, "other files stay"

    def test_single_file_under_a_path_and_no_staging_files_listed(self, hub: LocalHub, tmp_path: Path) -> None:
        gguf = tmp_path / "tiny.gguf"
        gguf.write_bytes(b"GGUF" + bytes(100))
        assert hub.publish("org/gguf", gguf, path_in_repo="q8") == ["q8/tiny.gguf"]
        assert list(hub.snapshot("org/gguf").files) == ["q8/tiny.gguf"]
        assert not [path for path in hub.repo_dir("org/gguf").rglob("*") if path.name.startswith(".")]

    @pytest.mark.parametrize("repo_id", ["org", "org/repo/extra", "../repo", "org/..", "org/re po", ""])
    def test_bad_repo_ids_are_refused(self, hub: LocalHub, source: Path, repo_id: str) -> None:
        with pytest.raises(ValueError, match="org/repo"):
            hub.publish(repo_id, source)

    def test_paths_outside_the_repo_are_refused(self, hub: LocalHub, source: Path) -> None:
        with pytest.raises(ValueError, match="inside a repo"):
            hub.publish(REPO, source / "config.json", path_in_repo="../escape")
        with pytest.raises(FileNotFoundError):
            hub.publish(REPO, source / "absent")


class TestCounters:
    def test_only_complete_gets_count_as_downloads(self, hub: LocalHub, client: httpx.Client) -> None:
        client.head(resolve("nested/model.safetensors"))
        assert hub.downloads() == {}
        assert hub.bytes_served() == 0
        client.get(resolve("nested/model.safetensors"))
        client.get(resolve("nested/model.safetensors"))
        client.get(resolve("config.json"))
        client.get(resolve("nested/model.safetensors"), headers={"Range": "bytes=0-99"})
        client.get(resolve("absent.bin"))
        assert hub.downloads() == {f"{REPO}/nested/model.safetensors": 2, f"{REPO}/config.json": 1}
        assert hub.bytes_served() == 2 * len(WEIGHTS) + len(CONFIG) + 100

    def test_counts_are_exact_under_concurrent_downloads(self, hub: LocalHub) -> None:
        clients = 8
        barrier = threading.Barrier(clients)
        bodies: list[bytes] = []

        def download() -> None:
            with httpx.Client(base_url=hub.url, timeout=30.0) as http:
                barrier.wait()
                bodies.append(http.get(resolve("nested/model.safetensors")).content)

        threads = [threading.Thread(target=download) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert bodies == [WEIGHTS] * clients
        assert hub.downloads() == {f"{REPO}/nested/model.safetensors": clients}
        assert hub.bytes_served() == clients * len(WEIGHTS)

    def test_a_throttled_download_is_under_way_for_a_while_then_whole(
        self, hub: LocalHub, client: httpx.Client
    ) -> None:
        hub.throttle(100_000)  # 10 chunks of 10 kB a second: WEIGHTS take about 13 s
        with client.stream("GET", resolve("nested/model.safetensors")) as response:
            stream = response.iter_bytes()
            first = next(stream)
            under_way = hub.bytes_served()
            assert 0 < under_way < len(WEIGHTS) // 2
            assert hub.downloads() == {}
            hub.throttle(None)  # the rest at full speed
            body = first + b"".join(stream)
        assert body == WEIGHTS
        assert hub.downloads() == {f"{REPO}/nested/model.safetensors": 1}

    @pytest.mark.parametrize("rate", [0, -1.0])
    def test_a_throttle_must_be_positive(self, hub: LocalHub, rate: float) -> None:
        with pytest.raises(ValueError, match="positive"):
            hub.throttle(rate)


class TestLifecycle:
    def test_requests_go_to_the_debug_log_not_to_stderr(
        self, hub: LocalHub, client: httpx.Client, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
    ) -> None:
        with caplog.at_level(logging.DEBUG, logger="llama_operator_dev.local_hub"):
            client.get(resolve("config.json"))
            client.get(resolve("absent.bin"))
        messages = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
        assert any("GET /org/tiny-model/resolve/main/config.json" in message for message in messages)
        assert any("absent.bin" in message and "404" in message for message in messages)
        assert capfd.readouterr().err == ""

    def test_url_is_loopback_and_stop_closes_the_port(self, tmp_path: Path) -> None:
        hub = LocalHub(tmp_path / "hub").start()
        host, port = hub.url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        hub.stop()
        hub.stop()  # twice is fine
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=2.0):
            pass
        with pytest.raises(RuntimeError, match="not started"):
            _ = hub.url

    def test_resolve_url_is_what_clients_request(self, hub: LocalHub, client: httpx.Client) -> None:
        url = hub.resolve_url(REPO, "nested/model.safetensors")
        assert url == f"{hub.url}/{REPO}/resolve/main/nested/model.safetensors"
        assert client.get(url).content == WEIGHTS
