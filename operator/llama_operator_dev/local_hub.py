"""A small Hugging Face Hub look-alike on loopback, serving model repos from a folder.

Engines and download tools find it through ``HF_ENDPOINT=<hub.url>``: curl for a single file
(what the operator renders for ``hf://org/repo/file.gguf``), ``snapshot_download`` for a folder, and
vLLM 0.32 for a LoRA adapter loaded at run time by hub id (``vllm/lora/utils.py``
``get_adapter_absolute_path`` calls ``HfApi().snapshot_download(repo_id=...)`` for a path that is
neither absolute nor present locally; when that fails, the load answers 404). It holds a folder
``root/<org>/<repo>/<files...>``: ``LocalHub`` publishes files into it, reads a repo's snapshot
(its files and commit) and starts and stops the server. What goes over the wire (routes, headers,
error answers) is in ``local_hub_http.py``.

A revision is ``main`` or the repo's commit. The commit is a sha1 over the repo's file names and
contents, so it changes whenever a published file does and a client's cache never serves stale
content.

The hub counts what it serves: per file, the complete downloads (GETs that delivered the whole
content, from the first byte to the last; HEADs and partial ranges do not count) and, overall, the
body bytes sent. Both are counted as the bytes are handed to the socket (and taken back when that
fails), so a client that holds a whole file always finds it counted. Requests are logged to this
module's logger (``llama_operator_dev.local_hub``) at debug level only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from types import TracebackType

from llama_operator_dev.local_hub_http import (
    CHUNK_BYTES,
    DEFAULT_REVISION,
    HubRequestError,
    HubRequestHandler,
    HubServer,
    RepoFileEntry,
    RepoSnapshot,
    ServeCounters,
    Throttle,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# How often the serving loop checks for stop(): the longest stop() waits.
SHUTDOWN_POLL_SECONDS = 0.05
# Files being published are written under this prefix and renamed into place; listings skip them.
STAGING_PREFIX = ".local-hub-staging-"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Split ``org/repo``; raise ValueError for anything else (no paths, no ``..``)."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.match(part) and ".." not in part for part in parts):
        raise ValueError(f"repo id must look like 'org/repo' (letters, digits, '.', '_', '-'), got {repo_id!r}")
    return parts[0], parts[1]


class LocalHub:
    """Serves ``root/<org>/<repo>/...`` over HTTP on loopback as a Hugging Face Hub look-alike.

    Use as a context manager, or call ``start()`` and ``stop()``. ``port=0`` picks a free port.
    """

    def __init__(self, root: Path, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.root = root
        self._host = host
        self._port = port
        self._server: HubServer | None = None
        self._thread: threading.Thread | None = None
        self._counters = ServeCounters()
        self._throttle = Throttle()
        self._digest_lock = threading.Lock()
        self._digests: dict[tuple[str, int, int, int], tuple[str, str]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("LocalHub already started")
        self.root.mkdir(parents=True, exist_ok=True)
        server = HubServer(
            (self._host, self._port), HubRequestHandler, hub=self, counters=self._counters, throttle=self._throttle
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS}, name="local-hub", daemon=True
        )
        self._thread.start()
        logger.debug("local hub serving %s on %s", self.root, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``HF_ENDPOINT``."""
        if self._server is None:
            raise RuntimeError("LocalHub not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def resolve_url(self, repo_id: str, path: str, revision: str = DEFAULT_REVISION) -> str:
        """The download address of one file, as huggingface_hub and the operator's curl build it."""
        validate_repo_id(repo_id)
        return f"{self.url}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(path)}"

    # -- content -----------------------------------------------------------------------------

    def repo_dir(self, repo_id: str) -> Path:
        org, name = validate_repo_id(repo_id)
        return self.root / org / name

    def publish(self, repo_id: str, source: Path, *, path_in_repo: str = "") -> list[str]:
        """Add files to a repo (created when new), like an upload to the Hub.

        A folder's files keep their paths relative to it; a single file keeps its name. Both land
        under ``path_in_repo``. A file of the same path is replaced (atomically: readers see the old
        or the new one); other files stay. Files are hard-linked when possible, else copied.
        Returns the repo paths written, sorted.
        """
        repo_dir = self.repo_dir(repo_id)
        prefix = _clean_repo_path(path_in_repo) if path_in_repo else ""
        if source.is_dir():
            pairs = [
                (item, item.relative_to(source).as_posix()) for item in sorted(source.rglob("*")) if item.is_file()
            ]
        elif source.is_file():
            pairs = [(source, source.name)]
        else:
            raise FileNotFoundError(f"nothing to publish at {source}")
        written: list[str] = []
        for item, relative in pairs:
            repo_path = _clean_repo_path(f"{prefix}/{relative}" if prefix else relative)
            target = repo_dir / repo_path
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f"{STAGING_PREFIX}{target.name}.{os.getpid()}.{threading.get_ident()}")
            staging.unlink(missing_ok=True)
            try:
                os.link(item, staging)
            except OSError:
                shutil.copyfile(item, staging)
            staging.replace(target)
            written.append(repo_path)
        logger.debug("published %d file(s) to %s from %s", len(written), repo_id, source)
        return sorted(written)

    def snapshot(self, repo_id: str) -> RepoSnapshot:
        """The repo's files and commit now; HubRequestError(404, RepoNotFound) when it does not exist."""
        try:
            repo_dir = self.repo_dir(repo_id)
        except ValueError as error:
            raise HubRequestError(HTTPStatus.NOT_FOUND, str(error), "RepoNotFound") from error
        if not repo_dir.is_dir():
            raise HubRequestError(HTTPStatus.NOT_FOUND, f"Repository {repo_id} not found", "RepoNotFound")
        files: dict[str, RepoFileEntry] = {}
        for fs_path in sorted(repo_dir.rglob("*")):
            if fs_path.name.startswith(STAGING_PREFIX) or not fs_path.is_file():
                continue
            path = fs_path.relative_to(repo_dir).as_posix()
            size, sha256, git_oid = self._digest(fs_path)
            files[path] = RepoFileEntry(path=path, size=size, sha256=sha256, git_oid=git_oid, fs_path=fs_path)
        commit = hashlib.sha1(usedforsecurity=False)
        for path, entry in files.items():
            commit.update(f"{path}\0{entry.sha256}\n".encode())
        return RepoSnapshot(repo_id=repo_id, commit=commit.hexdigest(), files=files)

    # -- counters ----------------------------------------------------------------------------

    def downloads(self) -> dict[str, int]:
        """Complete downloads per file, keyed ``org/repo/path``; a copy."""
        return self._counters.downloads()

    def bytes_served(self) -> int:
        """Body bytes sent for file downloads, complete or not."""
        return self._counters.bytes_served()

    def throttle(self, bytes_per_second: float | None) -> None:
        """Send file bodies at most this fast from now on (downloads under way too); None: full speed."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be positive or None, got {bytes_per_second}")
        self._throttle.bytes_per_second = bytes_per_second

    def _digest(self, fs_path: Path) -> tuple[int, str, str]:
        """Size, sha256 and git blob id of a file, cached by inode, size and mtime."""
        stat = fs_path.stat()
        key = (str(fs_path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._digest_lock:
            cached = self._digests.get(key)
        if cached is None:
            sha256 = hashlib.sha256()
            git_oid = hashlib.sha1(f"blob {stat.st_size}\0".encode(), usedforsecurity=False)
            with fs_path.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    sha256.update(chunk)
                    git_oid.update(chunk)
            cached = (sha256.hexdigest(), git_oid.hexdigest())
            with self._digest_lock:
                self._digests[key] = cached
        return stat.st_size, cached[0], cached[1]


def _clean_repo_path(path: str) -> str:
    """A repo-relative POSIX path without empty, ``.`` or ``..`` parts, or ValueError."""
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a file path inside a repo: {path!r}")
    return "/".join(parts)
