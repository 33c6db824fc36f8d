"""A stand-in for vLLM's OpenAI-compatible server: the HTTP contract the operator relies on, no model.

``python -m tests.standins.vllm_openai serve MODEL [--served-model-name NAME] [--host H] [--port P]
[--enable-lora] [--max-loras N] [--max-lora-rank R] [--max-num-seqs S] [--lora-modules name=path ...]``;
any other flag of the pinned ``vllm serve`` (recorded from vLLM's own parser in
``vllm-serve-flags.json``) is accepted and ignored, so the operator's rendered command line starts it
unchanged, and a flag vLLM does not have is refused with vLLM's "unrecognized arguments" (exit 2).

The real vLLM serves every other vLLM test (tests/integration/test_vllm_*.py). The stand-in is kept
for one fault the real server cannot be made to show on demand: an engine that accepts a request's
connection and never answers (``STANDIN_DELAY_SECONDS=3600``), which must not wedge its deployment.

What it answers, as vLLM documents it:

- nothing for the first ``STANDIN_LOAD_SECONDS`` (0.3 s): vLLM's port is closed while it loads;
- ``GET /health`` -> 200, empty body;
- ``GET /v1/models`` -> the base model, then one entry per loaded adapter (``parent`` = base);
- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` (only with env
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``, else 404) -> 200 text; 400 when the name is loaded
  already, when LoRA is not enabled, or when the adapter cannot be loaded (its files contain
  ``BROKEN``); 404 when the path cannot be found. An absolute path must exist; anything else is a
  hub id ``org/repo``, looked up under env ``STANDIN_HUB_DIR`` (vLLM would download it);
- ``POST /v1/unload_lora_adapter {"lora_name"}`` -> 200, or 404 when it is not loaded;
- ``POST /v1/chat/completions`` -> 404 for a model that is neither the base nor a loaded adapter;
  else a chat completion whose text names the model and a digest of its adapter's files, after
  ``STANDIN_DELAY_SECONDS`` (0.05 s); at most ``--max-num-seqs`` run at once, the rest wait;
- ``GET /metrics`` -> ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` gauges.

``--max-loras`` bounds vLLM's adapters per batch, not the adapters loaded, so it refuses no load here.
SIGTERM stops accepting, lets requests in flight finish, and exits 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from tests.standins.vllm_serve_flags import Arity, load_flags

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
HUB_DIR_ENV = "STANDIN_HUB_DIR"
DELAY_ENV = "STANDIN_DELAY_SECONDS"
LOAD_ENV = "STANDIN_LOAD_SECONDS"
DEFAULT_DELAY_SECONDS = 0.05
DEFAULT_LOAD_SECONDS = 0.3
BROKEN_MARK = b"BROKEN"
TRUE_VALUES = ("true", "1")
VALUE_FLAGS = {
    "--served-model-name": "served_model_name",
    "--host": "host",
    "--port": "port",
    "--max-loras": "max_loras",
    "--max-lora-rank": "max_lora_rank",
    "--max-num-seqs": "max_num_seqs",
}
SWITCH_FLAGS = {"--enable-lora": "enable_lora"}
RECORDED_VERSION, KNOWN_FLAGS = load_flags()


class StandinUsageError(ValueError):
    """The command line is not one ``vllm serve`` would accept."""


@dataclass(frozen=True)
class ServeOptions:
    model: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_num_seqs: int = 4
    lora_modules: tuple[tuple[str, str], ...] = ()


def _is_flag(token: str) -> bool:
    return token.startswith("--")


def _flag_name(token: str) -> str:
    """vLLM's parser reads ``--max_model_len`` as ``--max-model-len``."""
    return "--" + token[2:].replace("_", "-")


def _flag_values(flag: str, arity: Arity, inline: str | None, rest: list[str], index: int) -> tuple[list[str], int]:
    """(the values ``flag`` takes from ``rest[index:]`` or its ``=value``, the index after them), or vLLM's refusal."""
    following: list[str] = []
    if inline is not None:
        following = [inline]
    elif arity != 0:
        while index < len(rest) and not _is_flag(rest[index]):
            following.append(rest[index])
            index += 1
            if arity in (1, "?"):
                break
    if arity == 0 and following:
        raise StandinUsageError(f"vllm: error: argument {flag}: ignored explicit argument {following[0]!r}")
    if arity == 1 and len(following) != 1:
        raise StandinUsageError(f"vllm: error: argument {flag}: expected one argument")
    if arity == "+" and not following:
        raise StandinUsageError(f"vllm: error: argument {flag}: expected at least one argument")
    return following, index


def parse_serve_args(argv: Sequence[str], known_flags: Mapping[str, Arity] | None = None) -> ServeOptions:
    """``serve MODEL [flags]`` -> options, read as vLLM's parser reads them.

    A flag the pinned ``vllm serve`` does not have, a switch given a value, a value flag without
    one and a stray positional are refused, as vLLM refuses them ("unrecognized arguments"); known
    flags the stand-in has no use for are accepted and ignored.
    """
    flags = KNOWN_FLAGS if known_flags is None else known_flags
    if len(argv) < 2 or argv[0] != "serve" or _is_flag(argv[1]):
        raise StandinUsageError("usage: vllm_openai serve MODEL [--flag value ...]")
    model = argv[1]
    values: dict[str, str] = {}
    switches: set[str] = set()
    lora_modules: list[tuple[str, str]] = []
    rest = list(argv[2:])
    index = 0
    while index < len(rest):
        token = rest[index]
        index += 1
        if not _is_flag(token):
            raise StandinUsageError(f"vllm: error: unrecognized arguments: {token}")
        raw_flag, has_inline, inline = token.partition("=")
        flag = _flag_name(raw_flag)
        if flag not in flags:
            raise StandinUsageError(f"vllm: error: unrecognized arguments: {raw_flag}")
        following, index = _flag_values(flag, flags[flag], inline if has_inline else None, rest, index)
        if flag in SWITCH_FLAGS:
            switches.add(SWITCH_FLAGS[flag])
        elif flag in VALUE_FLAGS:
            values[VALUE_FLAGS[flag]] = following[0]
        elif flag == "--lora-modules":
            for module in following:
                name, _, path = module.partition("=")
                lora_modules.append((name, path))
    try:
        return ServeOptions(
            model=model,
            served_model_name=values.get("served_model_name", model),
            host=values.get("host", "127.0.0.1"),
            port=int(values.get("port", "8000")),
            enable_lora="enable_lora" in switches,
            max_loras=int(values.get("max_loras", "1")),
            max_lora_rank=int(values.get("max_lora_rank", "16")),
            max_num_seqs=int(values.get("max_num_seqs", "4")),
            lora_modules=tuple(lora_modules),
        )
    except ValueError as error:
        raise StandinUsageError(f"a numeric flag has a non-numeric value: {error}") from error


# -- adapters ---------------------------------------------------------------------------------


def resolve_adapter_path(lora_path: str, hub_dir: str | None) -> Path | None:
    """Where an adapter's files are: an absolute path as given, a hub id under ``hub_dir``; None if missing."""
    if os.path.isabs(lora_path):
        candidate = Path(lora_path)
    elif hub_dir:
        candidate = Path(hub_dir) / lora_path
    else:
        return None
    return candidate if candidate.is_file() or candidate.is_dir() else None


def adapter_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def adapter_digest(path: Path) -> str:
    """A short digest of the adapter's files (names and bytes): different versions answer differently."""
    digest = hashlib.sha256()
    for file in adapter_files(path):
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:8]


def adapter_is_broken(path: Path) -> bool:
    return any(BROKEN_MARK in file.read_bytes() for file in adapter_files(path))


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str
    digest: str


class LoadError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Adapters:
    """The adapters loaded now, in load order."""

    options: ServeOptions
    hub_dir: str | None
    loaded: dict[str, LoadedAdapter] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, name: str, lora_path: str) -> LoadedAdapter:
        if not self.options.enable_lora:
            raise LoadError(HTTPStatus.BAD_REQUEST, "LoRA is not enabled. Start the server with --enable-lora.")
        if not name or not lora_path:
            raise LoadError(HTTPStatus.BAD_REQUEST, "Both 'lora_name' and 'lora_path' must be provided.")
        with self.lock:
            if name in self.loaded:
                raise LoadError(HTTPStatus.BAD_REQUEST, f"The lora adapter '{name}' has already been loaded.")
            resolved = resolve_adapter_path(lora_path, self.hub_dir)
            if resolved is None:
                raise LoadError(HTTPStatus.NOT_FOUND, f"No adapter found for {lora_path}")
            if adapter_is_broken(resolved):
                raise LoadError(
                    HTTPStatus.BAD_REQUEST, f"Loading lora {name} failed: the adapter at {lora_path} is invalid"
                )
            adapter = LoadedAdapter(name, lora_path, adapter_digest(resolved))
            self.loaded[name] = adapter
            return adapter

    def unload(self, name: str) -> bool:
        with self.lock:
            return self.loaded.pop(name, None) is not None

    def get(self, name: str) -> LoadedAdapter | None:
        with self.lock:
            return self.loaded.get(name)

    def listed(self) -> list[LoadedAdapter]:
        with self.lock:
            return list(self.loaded.values())


# -- requests in flight -----------------------------------------------------------------------


class Scheduler:
    """At most ``max_num_seqs`` requests run at once; the others wait (vLLM's running and waiting queues)."""

    def __init__(self, max_num_seqs: int) -> None:
        self._slots = threading.BoundedSemaphore(max(max_num_seqs, 1))
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0

    def __enter__(self) -> Scheduler:
        with self._lock:
            self.waiting += 1
        self._slots.acquire()
        with self._lock:
            self.waiting -= 1
            self.running += 1
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.running -= 1
        self._slots.release()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.running, self.waiting


# -- HTTP -------------------------------------------------------------------------------------


def error_body(message: str, status: HTTPStatus) -> dict[str, Any]:
    kind = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    return {"error": {"message": message, "type": kind, "param": None, "code": int(status)}}


def words(value: object) -> int:
    return len(str(value).split())


@dataclass
class Standin:
    options: ServeOptions
    adapters: Adapters
    scheduler: Scheduler
    runtime_updates: bool
    delay_seconds: float

    def models(self) -> dict[str, Any]:
        base = {"id": self.options.served_model_name, "object": "model", "root": self.options.model, "parent": None}
        entries = [
            {"id": a.name, "object": "model", "root": a.path, "parent": self.options.served_model_name}
            for a in self.adapters.listed()
        ]
        return {"object": "list", "data": [base, *entries]}

    def reply_text(self, model: str) -> str | None:
        """The deterministic answer of ``model``, or None when no such model is served."""
        if model == self.options.served_model_name:
            return f"hello from {model} {hashlib.sha256(self.options.model.encode()).hexdigest()[:8]}"
        adapter = self.adapters.get(model)
        return None if adapter is None else f"hello from {model} {adapter.digest}"

    def metrics(self) -> str:
        running, waiting = self.scheduler.counts()
        label = f'model_name="{self.options.served_model_name}"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{label}}} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{label}}} {float(waiting)}\n"
        )


class StandinServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight
    block_on_close = True

    def __init__(self, address: tuple[str, int], standin: Standin) -> None:
        super().__init__(address, StandinHandler)
        self.standin = standin


class StandinHandler(BaseHTTPRequestHandler):
    server: StandinServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles past SIGTERM

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, error_body(message, status))

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as error:
            self._error(HTTPStatus.BAD_REQUEST, f"invalid JSON body: {error}")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return None
        return body

    def do_GET(self) -> None:
        standin = self.server.standin
        if self.path == "/health":
            self._send(HTTPStatus.OK, b"", "text/plain")
        elif self.path == "/v1/models":
            self._json(HTTPStatus.OK, standin.models())
        elif self.path == "/metrics":
            self._send(HTTPStatus.OK, standin.metrics().encode(), "text/plain; version=0.0.4")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

    def do_POST(self) -> None:
        standin = self.server.standin
        lora_routes = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
        if self.path in lora_routes and not standin.runtime_updates:
            self._json(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})  # vLLM registers these routes only when allowed
            return
        if self.path not in (*lora_routes, "/v1/chat/completions"):
            self._json(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})
            return
        body = self._body()
        if body is None:
            return
        if self.path == "/v1/load_lora_adapter":
            self._load(standin, body)
        elif self.path == "/v1/unload_lora_adapter":
            self._unload(standin, body)
        else:
            self._chat(standin, body)

    def _load(self, standin: Standin, body: dict[str, Any]) -> None:
        name = str(body.get("lora_name") or "")
        try:
            standin.adapters.load(name, str(body.get("lora_path") or ""))
        except LoadError as error:
            self._error(error.status, error.message)
            return
        self._send(HTTPStatus.OK, f"Success: LoRA adapter '{name}' added successfully.".encode(), "text/plain")

    def _unload(self, standin: Standin, body: dict[str, Any]) -> None:
        name = str(body.get("lora_name") or "")
        if not standin.adapters.unload(name):
            self._error(HTTPStatus.NOT_FOUND, f"The lora adapter '{name}' cannot be found.")
            return
        self._send(HTTPStatus.OK, f"Success: LoRA adapter '{name}' removed successfully.".encode(), "text/plain")

    def _chat(self, standin: Standin, body: dict[str, Any]) -> None:
        model = str(body.get("model") or "")
        text = standin.reply_text(model)
        if text is None:
            self._error(HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.")
            return
        with standin.scheduler:
            time.sleep(standin.delay_seconds)  # the "generation": keeps the request in flight
        prompt_tokens = sum(words(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
        completion_tokens = words(text)
        self._json(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-{hashlib.sha256(f'{model}{time.time_ns()}'.encode()).hexdigest()[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


# -- process ----------------------------------------------------------------------------------


def build_standin(options: ServeOptions, environ: Mapping[str, str]) -> Standin:
    """The server state for ``options``; ``--lora-modules`` are loaded as vLLM loads them at start-up."""
    adapters = Adapters(options, environ.get(HUB_DIR_ENV) or None)
    for name, path in options.lora_modules:
        adapters.load(name, path)
    return Standin(
        options=options,
        adapters=adapters,
        scheduler=Scheduler(options.max_num_seqs),
        runtime_updates=environ.get(RUNTIME_LORA_ENV, "").lower() in TRUE_VALUES,
        delay_seconds=float(environ.get(DELAY_ENV, DEFAULT_DELAY_SECONDS)),
    )


def serve(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        options = parse_serve_args(argv)
        standin = build_standin(options, environ)
    except (StandinUsageError, LoadError) as error:
        sys.stderr.write(f"{error}\n")
        return 2
    stop = threading.Event()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    if stop.wait(float(environ.get(LOAD_ENV, DEFAULT_LOAD_SECONDS))):  # "loading": the port stays closed
        return 0
    server = StandinServer((options.host, options.port), standin)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    sys.stderr.write(f"vllm stand-in serving {options.served_model_name} on http://{options.host}:{options.port}\n")
    sys.stderr.flush()
    while not stop.wait(0.1):
        pass
    server.shutdown()  # stop accepting
    server.server_close()  # and wait for the requests in flight
    thread.join()
    sys.stderr.write("vllm stand-in stopped\n")
    return 0


def main() -> None:
    sys.exit(serve(sys.argv[1:], os.environ))


if __name__ == "__main__":
    main()
