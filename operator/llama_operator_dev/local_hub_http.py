"""The wire side of the local hub (``local_hub.py``): its HTTP server, the request handler and what
it answers with, the part of the Hugging Face Hub's wire contract that our clients use (read from
huggingface_hub 2.4.0's ``file_download.py``, ``_snapshot_download.py``, ``hf_api.py`` and
``utils/_http.py``):

- ``GET|HEAD /{org}/{repo}/resolve/{revision}/{path}``: the file itself, ``200`` (or ``206`` for
  a ``Range: bytes=...`` request, which huggingface_hub sends only to resume a broken download).
  Headers: ``Content-Length``, ``ETag`` (the quoted sha256 of the content, as the Hub gives LFS
  files), ``X-Repo-Commit``, ``Accept-Ranges: bytes``. Files are served directly, never through a
  redirect, so ``curl -f`` works with or without ``-L``. ``hf_hub_download`` needs the HEAD answer
  to carry ``X-Repo-Commit`` and an ``ETag``; it takes the Xet path only when a response carries
  ``X-Xet-Hash`` (or a tree entry a ``xetHash``), which this hub never sends.
- ``GET /api/models/{org}/{repo}[/revision/{revision}]``: what ``HfApi.model_info`` reads, ``id``,
  ``sha`` (the commit) and ``siblings[]`` (``rfilename``, ``size``, ``blobId``, ``lfs``).
- ``GET /api/models/{org}/{repo}/tree/{revision}[/{path}]?recursive=true``: the listing
  ``snapshot_download`` downloads from (``type``, ``path``, ``size``, ``oid``, ``lfs``), one page.
- ``POST /api/models/{org}/{repo}/paths-info/{revision}`` (form field ``paths``, repeated).
- ``GET /api/agent-harnesses``: an empty registry (huggingface_hub asks for it to tag its
  user agent, and logs a traceback at debug level when it is missing).

A revision is ``main`` or the repo's commit (see ``local_hub.py``). Unknown repos, revisions and
files answer ``404`` with the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) and ``X-Error-Message``, which huggingface_hub turns into
``RepositoryNotFoundError`` and friends and ``curl -f`` into exit 22.

The handler reads a repo as a ``RepoSnapshot`` from its ``RepoSource`` (the ``LocalHub``) and
counts what it sends in ``ServeCounters``. Requests are logged to the hub's logger
(``llama_operator_dev.local_hub``) at debug level only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

# The hub's one logger: requests log where the hub itself does.
logger = logging.getLogger("llama_operator_dev.local_hub")

DEFAULT_REVISION = "main"
CHUNK_BYTES = 1024 * 1024
THROTTLED_CHUNKS_PER_SECOND = 10
# Size of a git-lfs pointer file, which the Hub reports as lfs.pointerSize; clients only store it.
LFS_POINTER_BYTES = 134

EMPTY_AGENT_REGISTRY: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TRUE_VALUES = ("1", "true", "True")


class HubRequestError(Exception):
    """An answer other than success, in the Hub's shape: status, ``X-Error-Code`` and message."""

    def __init__(self, status: HTTPStatus, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers: dict[str, str] = {}


@dataclass(frozen=True)
class RepoFileEntry:
    """One file of a repo as the hub lists it."""

    path: str
    size: int
    sha256: str
    git_oid: str
    fs_path: Path

    def tree_item(self) -> dict[str, Any]:
        """The entry of ``/tree`` and ``/paths-info``."""
        return {
            "type": "file",
            "path": self.path,
            "size": self.size,
            "oid": self.git_oid,
            "lfs": {"oid": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_BYTES},
        }

    def sibling(self) -> dict[str, Any]:
        """The entry of ``siblings[]`` in the model info."""
        return {
            "rfilename": self.path,
            "size": self.size,
            "blobId": self.git_oid,
            "lfs": {"sha256": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_BYTES},
        }


@dataclass(frozen=True)
class RepoSnapshot:
    """A repo's files at one moment, with the commit that names them."""

    repo_id: str
    commit: str
    files: dict[str, RepoFileEntry]

    def folders(self) -> set[str]:
        """Every folder path that holds a file, at any depth."""
        found: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            found.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
        return found


class RepoSource(Protocol):
    """Where the handler reads repos from: the ``LocalHub``."""

    def snapshot(self, repo_id: str) -> RepoSnapshot: ...


def _check_revision(snapshot: RepoSnapshot, revision: str) -> None:
    if revision not in (DEFAULT_REVISION, snapshot.commit):
        raise HubRequestError(
            HTTPStatus.NOT_FOUND,
            f"Invalid rev id: {revision} (this hub knows '{DEFAULT_REVISION}' and the current commit)",
            "RevisionNotFound",
        )


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive byte range of one ``bytes=a-b`` / ``a-`` / ``-n`` spec; None for the whole file."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # not a single byte range: ignored, as a server may
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        error = HubRequestError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"range {header} outside {size} bytes")
        error.headers["Content-Range"] = f"bytes */{size}"
        raise error
    return start, end


class ServeCounters:
    """What the hub served, shared by its request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._downloads: dict[str, int] = {}
        self._bytes_served = 0

    def add(self, byte_count: int, download_key: str | None = None, downloads: int = 1) -> None:
        """Add bytes (and downloads of ``download_key``); negative numbers take back a failed send."""
        with self._lock:
            self._bytes_served += byte_count
            if download_key is not None:
                self._downloads[download_key] = self._downloads.get(download_key, 0) + downloads
                if self._downloads[download_key] == 0:
                    del self._downloads[download_key]

    def downloads(self) -> dict[str, int]:
        with self._lock:
            return dict(self._downloads)

    def bytes_served(self) -> int:
        with self._lock:
            return self._bytes_served


class Throttle:
    """A cap on each file download's rate, changed while the hub serves (tests watch a slow download)."""

    def __init__(self) -> None:
        self.bytes_per_second: float | None = None  # None: as fast as the socket takes it

    def chunk_bytes(self) -> int:
        rate = self.bytes_per_second
        return CHUNK_BYTES if rate is None else max(1, min(CHUNK_BYTES, int(rate / THROTTLED_CHUNKS_PER_SECOND)))

    def pause(self, sent: int) -> None:
        rate = self.bytes_per_second
        if rate is not None:
            time.sleep(sent / rate)


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        hub: RepoSource,
        counters: ServeCounters,
        throttle: Throttle | None = None,
    ) -> None:
        self.hub = hub
        self.counters = counters
        self.throttle = throttle or Throttle()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine; anything else is a bug worth a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            logger.debug("local hub: %s went away", client_address)
            return
        logger.error("local hub: request from %s failed", client_address, exc_info=error)


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    server_version = "llama-operator-local-hub"

    @property
    def hub(self) -> RepoSource:
        return cast(HubServer, self.server).hub

    @property
    def counters(self) -> ServeCounters:
        return cast(HubServer, self.server).counters

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("local hub: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def do_POST(self) -> None:
        self._dispatch(send_body=True)

    def _dispatch(self, *, send_body: bool) -> None:
        split = urllib.parse.urlsplit(self.path)
        # Split before unquoting: a revision like refs%2Fpr%2F1 is one segment.
        segments = [urllib.parse.unquote(part) for part in split.path.strip("/").split("/")]
        query = urllib.parse.parse_qs(split.query)
        # Read a request body before anything else, so an error answer leaves the connection clean.
        form = self._read_form() if self.command == "POST" else {}
        try:
            self._route(segments, query, form, send_body=send_body)
        except HubRequestError as error:
            self._send_error(error, send_body=send_body)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("local hub: %s went away during %s %s", self.address_string(), self.command, self.path)
            self.close_connection = True

    def _route(
        self, segments: list[str], query: dict[str, list[str]], form: dict[str, list[str]], *, send_body: bool
    ) -> None:
        command = self.command
        if len(segments) >= 5 and segments[2] == "resolve" and command in ("GET", "HEAD"):
            org, name, _, revision, *path = segments
            self._send_file(f"{org}/{name}", revision, "/".join(path), send_body=send_body)
            return
        if len(segments) >= 4 and segments[:2] == ["api", "models"]:
            repo_id = f"{segments[2]}/{segments[3]}"
            rest = segments[4:]
            if command in ("GET", "HEAD") and not rest:
                self._send_json(self._model_info(repo_id, DEFAULT_REVISION), send_body=send_body)
                return
            if command in ("GET", "HEAD") and len(rest) == 2 and rest[0] == "revision":
                self._send_json(self._model_info(repo_id, rest[1]), send_body=send_body)
                return
            if command in ("GET", "HEAD") and len(rest) >= 2 and rest[0] == "tree":
                recursive = query.get("recursive", ["false"])[0] in _TRUE_VALUES
                self._send_json(self._tree(repo_id, rest[1], "/".join(rest[2:]), recursive), send_body=send_body)
                return
            if command == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                self._send_json(self._paths_info(repo_id, rest[1], form), send_body=send_body)
                return
        if segments == ["api", "agent-harnesses"] and command in ("GET", "HEAD"):
            # huggingface_hub fetches this registry once a day to tag its user agent; none here.
            self._send_json(EMPTY_AGENT_REGISTRY, send_body=send_body)
            return
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in ("datasets", "spaces", "kernels"):
            raise HubRequestError(HTTPStatus.NOT_FOUND, "this hub holds model repos only", "RepoNotFound")
        raise HubRequestError(HTTPStatus.NOT_FOUND, f"no route for {command} {self.path}")

    # -- answers -----------------------------------------------------------------------------

    def _model_info(self, repo_id: str, revision: str) -> dict[str, Any]:
        snapshot = self.hub.snapshot(repo_id)
        _check_revision(snapshot, revision)
        return {
            "_id": snapshot.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/", maxsplit=1)[0],
            "sha": snapshot.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [entry.sibling() for entry in snapshot.files.values()],
        }

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool) -> list[dict[str, Any]]:
        snapshot = self.hub.snapshot(repo_id)
        _check_revision(snapshot, revision)
        folders = snapshot.folders()
        if folder and folder not in folders:
            raise HubRequestError(HTTPStatus.NOT_FOUND, f"{folder} does not exist in {repo_id}", "EntryNotFound")
        prefix = f"{folder}/" if folder else ""

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        items: list[dict[str, Any]] = [
            {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode(), usedforsecurity=False).hexdigest()}
            for path in sorted(folders)
            if wanted(path)
        ]
        items.extend(entry.tree_item() for path, entry in snapshot.files.items() if wanted(path))
        return items

    def _paths_info(self, repo_id: str, revision: str, form: dict[str, list[str]]) -> list[dict[str, Any]]:
        snapshot = self.hub.snapshot(repo_id)
        _check_revision(snapshot, revision)
        folders = snapshot.folders()
        items: list[dict[str, Any]] = []
        for path in form.get("paths", []):
            clean = path.strip("/")
            if clean in snapshot.files:
                items.append(snapshot.files[clean].tree_item())
            elif clean in folders:
                items.append(
                    {
                        "type": "directory",
                        "path": clean,
                        "oid": hashlib.sha1(clean.encode(), usedforsecurity=False).hexdigest(),
                    }
                )
        return items

    def _read_form(self) -> dict[str, list[str]]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        return urllib.parse.parse_qs(body)

    def _send_file(self, repo_id: str, revision: str, path: str, *, send_body: bool) -> None:
        snapshot = self.hub.snapshot(repo_id)
        _check_revision(snapshot, revision)
        entry = snapshot.files.get(path)
        if entry is None:
            error = HubRequestError(HTTPStatus.NOT_FOUND, f"Entry {path} not found in {repo_id}", "EntryNotFound")
            error.headers["X-Repo-Commit"] = snapshot.commit
            raise error
        try:
            byte_range = _parse_range(self.headers.get("Range"), entry.size)
        except HubRequestError as error:
            error.headers["X-Repo-Commit"] = snapshot.commit
            raise
        start, end = byte_range if byte_range is not None else (0, entry.size - 1)
        length = end - start + 1
        self.send_response(HTTPStatus.PARTIAL_CONTENT if byte_range is not None else HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256}"')
        self.send_header("X-Repo-Commit", snapshot.commit)
        if byte_range is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if not send_body:
            return
        with entry.fs_path.open("rb") as handle:
            handle.seek(start)
            self._copy(handle, length, f"{repo_id}/{path}" if length == entry.size else None)

    def _copy(self, handle: BinaryIO, length: int, download_key: str | None) -> None:
        """Send ``length`` bytes; ``download_key`` counts a download when the last one goes out.

        Each chunk is counted just before it is written (and taken back if the write fails), so a
        client that holds the whole file always finds it in the counters.
        """
        if length == 0 and download_key is not None:
            self.counters.add(0, download_key)
        throttle = cast(HubServer, self.server).throttle
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(throttle.chunk_bytes(), remaining))
            if not chunk:  # the file shrank under us: the client sees a short body
                self.close_connection = True
                return
            remaining -= len(chunk)
            key = download_key if remaining == 0 else None
            self.counters.add(len(chunk), key)
            try:
                self.wfile.write(chunk)
            except OSError:
                self.counters.add(-len(chunk), key, downloads=-1)
                raise
            throttle.pause(len(chunk))

    def _send_json(self, payload: object, *, send_body: bool) -> None:
        body = json.dumps(payload).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_error(self, error: HubRequestError, *, send_body: bool) -> None:
        body = json.dumps({"error": error.message}).encode()
        self.send_response(error.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", error.message)
        if error.error_code is not None:
            self.send_header("X-Error-Code", error.error_code)
        for name, value in error.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)
