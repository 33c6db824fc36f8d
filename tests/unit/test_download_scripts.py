"""No character a spec may hold reaches a `sh -c` script unquoted: the rendered scripts are run, not read.

Every download init container (model GGUF file and checkpoint folder, adapters; hf://, s3://, https://)
is rendered from a spec whose sources are hostile but admitted (quotes, `$()`, backticks, `;`, `&&`,
`|`, `${IFS}`, globs, `#`, `%`, unicode), with a hostile hub mirror and a hostile hub token (a newline
too: a Secret may hold one). Each script then runs under /bin/sh with stand-ins for `curl`, `aws` and
`python3` first on PATH: they record their arguments, and the test checks that each got exactly the
intended ones (the URL or path intact as one argument), that it ran once, and that no injected command
ran (nothing named `pwned` appears anywhere). The mounts `/models` and `/adapters` are rewritten to
folders under a temporary root in the script text; the hostile values never contain those paths, so
the rewrite touches only the mounts. The leader of a multi-node replica (`ray start && exec vllm serve
...`) is run the same way, with a hostile served model name and extra arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from llama_operator.api.parse import parse_spec
from llama_operator.engines.pod import COMPLETE_LINE, PROGRESS_LINE
from llama_operator.model_cache import CURL_HTTP_ERROR, render_job
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.render import RenderOptions, render

INVENTORY = OperatorConfig().default_inventory()
SHELL = "/bin/sh"
MOUNTS = ("/models", "/adapters")
# One path segment that a shell would act on in every way it can, were it not quoted.
# Sources hold no whitespace: `${IFS}` stands in for it.
HOSTILE = (
    "q'\"$(touch${IFS}pwned)`touch${IFS}pwned`;touch${IFS}pwned&&touch${IFS}pwned|touch${IFS}pwned"
    "$((1))*?[a]~\\#%41é🦙<>!{a,b}"
)
HUB = "https://hub-mirror.example/$(touch${IFS}pwned)`touch${IFS}pwned`;&&|touch${IFS}pwned"  # no quotes here
TOKEN = "hf_tok'\"$(touch pwned)`touch pwned`;touch pwned\n&& touch pwned"
REPO = "acme-ai/Llama_3.1-8B.v2"  # every character a hub repository may hold
VERSION = "1.0+build:3_x-y"  # every character an adapter version may hold
HUB_TOKEN_SECRET = {"hubTokenSecretRef": {"name": "hf-token"}}

STUB_RECORD = 'call=$(mktemp "$STUB_CALLS/call.XXXXXX"); printf \'%s\\0\' "${0##*/}" "$@" > "$call"\n'
STUBS = {
    # Writes the prepared payload where -o says, as curl -o would.
    # With STUB_SLOW it writes two bytes first and waits that long; with STUB_EXIT it then fails so.
    "curl": STUB_RECORD + 'out=; prev=\nfor arg in "$@"; do [ "$prev" = "-o" ] && out=$arg; prev=$arg; done\n'
    'if [ -n "${STUB_SLOW:-}" ]; then head -c 2 "$STUB_PAYLOAD" > "$out"; sleep "$STUB_SLOW"; fi\n'
    '[ -z "${STUB_EXIT:-}" ] || exit "$STUB_EXIT"\n'
    'cp "$STUB_PAYLOAD" "$out"\n',
    # Creates its destination (the last argument): a folder with --recursive, else a file.
    "aws": STUB_RECORD + 'for last in "$@"; do :; done\n'
    'if [ "$3" = "--recursive" ]; then mkdir -p "$last" && : > "$last/from-s3"; else : > "$last"; fi\n',
    # Runs the code for real, with a huggingface_hub whose snapshot_download records its arguments.
    "python3": STUB_RECORD + 'exec "$STUB_PYTHON" "$@"\n',
    "ray": STUB_RECORD,
    "vllm": STUB_RECORD,
}
FAKE_HUB_MODULE = """
import json, os
def snapshot_download(**kwargs):
    with open(os.environ["STUB_SNAPSHOT"], "w") as out:
        json.dump(kwargs, out)
"""


@dataclass(frozen=True)
class Expected:
    """What one download must do: the one call it makes, and the files it leaves."""

    target: str  # the file or folder it fills
    argv: list[str]  # the recorded call, program name first; {root} stands for the temporary root
    leaves: list[str]  # files under the root after the download (besides its .done marker)
    snapshot: dict[str, str] | None = None  # snapshot_download's keyword arguments
    hub_token: bool = False  # the container reads HF_TOKEN from the hub token Secret
    archive: bool = False  # the download is a tar archive, unpacked into the target folder


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    downloads: dict[str, Expected]  # init container name -> what it must do


AUTH_HEADER = ("-H", "Authorization: Bearer {token}")  # only when the Secret holds a token


def curl(target: str, url: str, *, token: bool = False, archive: bool = False) -> Expected:
    """curl into TARGET.part (then moved, or unpacked into the folder TARGET)."""
    auth = list(AUTH_HEADER) if token else []
    argv = ["curl", "-fL", "--retry", "5", "--retry-delay", "5", *auth, "-o", f"{{root}}{target}.part", url]
    leaves = [f"{target}/config.json"] if archive else [target]
    return Expected(target, argv, leaves, hub_token=token, archive=archive)


def aws(target: str, source: str, *, folder: bool) -> Expected:
    recursive = ["--recursive"] if folder else []
    leaves = [f"{target}/from-s3"] if folder else [target]
    return Expected(target, ["aws", "s3", "cp", *recursive, source, f"{{root}}{target}"], leaves)


def snapshot(target: str, repo: str) -> Expected:
    kwargs = {"repo_id": repo, "local_dir": f"{{root}}{target}"}
    return Expected(target, ["python3", "-c", "<code>"], [], snapshot=kwargs, hub_token=True)


def hub_file(path: str) -> str:
    return f"{HUB}/{REPO}/resolve/main/{quote(path, safe='/')}"


def gguf_model(source: str) -> dict[str, Any]:
    return {"catalogName": "llama-3.2-3b", "source": source, "format": "gguf", "quantization": "q4_k_m"}


def checkpoint_model(source: str) -> dict[str, Any]:
    return {"catalogName": "llama-3.1-8b", "source": source}


def adapter(name: str, source: str) -> dict[str, str]:
    return {"name": name, "source": source, "version": VERSION}


FILES = "https://files.example.com"
QUERY = "?download=1&x=$(touch${IFS}pwned)"
CASES = [
    Case(
        "model-gguf-hf",
        {"model": gguf_model(f"hf://{REPO}/q4/{HOSTILE}.gguf"), **HUB_TOKEN_SECRET},
        {"fetch-model": curl(f"/models/{HOSTILE}.gguf", hub_file(f"q4/{HOSTILE}.gguf"), token=True)},
    ),
    Case(
        "model-checkpoint-hf",
        {"model": checkpoint_model(f"hf://{REPO}"), **HUB_TOKEN_SECRET},
        {"fetch-model": snapshot("/models/model", REPO)},
    ),
    Case(
        "model-checkpoint-s3",
        {"model": checkpoint_model(f"s3://weights-bucket/{HOSTILE}/ckpt")},
        {"fetch-model": aws("/models/model", f"s3://weights-bucket/{HOSTILE}/ckpt", folder=True)},
    ),
    Case(
        "model-gguf-s3",
        {"model": gguf_model(f"s3://weights-bucket/{HOSTILE}.gguf")},
        {"fetch-model": aws(f"/models/{HOSTILE}.gguf", f"s3://weights-bucket/{HOSTILE}.gguf", folder=False)},
    ),
    Case(
        "model-gguf-https",
        {"model": gguf_model(f"{FILES}/{HOSTILE}.gguf{QUERY}")},
        {"fetch-model": curl(f"/models/{HOSTILE}.gguf{QUERY}", f"{FILES}/{HOSTILE}.gguf{QUERY}")},
    ),
    Case(
        "model-checkpoint-https",
        {"model": checkpoint_model(f"{FILES}/{HOSTILE}.tar")},
        {"fetch-model": curl("/models/model", f"{FILES}/{HOSTILE}.tar", archive=True)},
    ),
    Case(
        "adapters-of-a-checkpoint",  # TGI: every adapter is a PEFT folder, fetched before the engine starts
        {
            "model": checkpoint_model("pvc://models/llama-3.1-8b"),
            "engine": {"type": "tgi"},
            "adapters": [
                adapter("from-hub", "hf://acme-ai/support_lora.v2"),
                adapter("from-s3", f"s3://lora-bucket/{HOSTILE}"),
                adapter("from-https", f"{FILES}/{HOSTILE}.tar"),
            ],
            **HUB_TOKEN_SECRET,
        },
        {
            "fetch-adapter-from-hub": snapshot(f"/adapters/from-hub/{VERSION}", "acme-ai/support_lora.v2"),
            "fetch-adapter-from-s3": aws(f"/adapters/from-s3/{VERSION}", f"s3://lora-bucket/{HOSTILE}", folder=True),
            "fetch-adapter-from-https": curl(f"/adapters/from-https/{VERSION}", f"{FILES}/{HOSTILE}.tar", archive=True),
        },
    ),
    Case(
        "adapters-of-a-gguf-model",  # llama.cpp: every adapter is one GGUF file
        {
            "model": gguf_model("pvc://models/llama-3.2-3b.gguf"),
            "adapters": [
                adapter("from-hub", f"hf://{REPO}/{HOSTILE}.gguf"),
                adapter("from-s3", f"s3://lora-bucket/{HOSTILE}.gguf"),
                adapter("from-https", f"{FILES}/{HOSTILE}.gguf"),
            ],
            **HUB_TOKEN_SECRET,
        },
        {
            "fetch-adapter-from-hub": curl(
                f"/adapters/from-hub/{VERSION}.gguf", hub_file(f"{HOSTILE}.gguf"), token=True
            ),
            "fetch-adapter-from-s3": aws(
                f"/adapters/from-s3/{VERSION}.gguf", f"s3://lora-bucket/{HOSTILE}.gguf", folder=False
            ),
            "fetch-adapter-from-https": curl(f"/adapters/from-https/{VERSION}.gguf", f"{FILES}/{HOSTILE}.gguf"),
        },
    ),
]


def rendered_pod(spec_body: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(spec_body)
    decision = plan(spec, "demo", INVENTORY)
    assert decision.chosen is not None, decision.reason
    workload = render("demo", "ns", spec, decision, options=RenderOptions(hub_endpoint=HUB))[0]
    if workload["kind"] == "LeaderWorkerSet":
        pod: dict[str, Any] = workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    else:
        pod = workload["spec"]["template"]["spec"]
    return pod


def init_containers(case: Case) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in rendered_pod(case.spec).get("initContainers", [])}


@dataclass(frozen=True)
class Sandbox:
    """A temporary root for the mounts, stand-ins first on PATH, and a working folder."""

    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def calls(self) -> Path:
        return self.base / "calls"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def snapshot(self) -> Path:
        return self.base / "snapshot.json"

    @classmethod
    def create(cls, base: Path) -> Sandbox:
        box = cls(base)
        stubs, fake_hub = base / "stubs", base / "fake-hub" / "huggingface_hub"
        for folder in (box.root, box.calls, box.work, stubs, fake_hub, base / "home"):
            folder.mkdir(parents=True)
        for name, body in STUBS.items():
            stub = stubs / name
            stub.write_text("#!/bin/sh\n" + body)
            stub.chmod(0o755)
        (fake_hub / "__init__.py").write_text(FAKE_HUB_MODULE)
        (base / "payload.bin").write_bytes(b"GGUF")
        with tarfile.open(base / "payload.tar", "w") as archive:
            config = base / "config.json"
            config.write_text("{}")
            archive.add(config, arcname="config.json")
        return box

    def run(self, script: str, env: dict[str, str], *, archive: bool = False) -> subprocess.CompletedProcess[str]:
        for mount in MOUNTS:
            script = script.replace(mount, f"{self.root}{mount}")
        environment = {
            **env,
            "PATH": f"{self.base / 'stubs'}:/usr/bin:/bin",
            "HOME": str(self.base / "home"),
            "STUB_CALLS": str(self.calls),
            "STUB_PAYLOAD": str(self.base / ("payload.tar" if archive else "payload.bin")),
            "STUB_PYTHON": sys.executable,
            "STUB_SNAPSHOT": str(self.snapshot),
            "PYTHONPATH": str(self.base / "fake-hub"),
        }
        return subprocess.run(
            [SHELL, "-c", script],
            cwd=self.work,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def recorded(self) -> list[list[str]]:
        calls = []
        for record in sorted(self.calls.iterdir()):
            calls.append(record.read_text().split("\0")[:-1])
            record.unlink()
        return calls

    def injected(self) -> list[str]:
        return sorted(str(p) for p in self.base.rglob("*") if p.name == "pwned")

    def files(self) -> set[str]:
        return {"/" + str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}


def container_env(container: dict[str, Any], *, token: str | None) -> dict[str, str]:
    """The container's env as the kubelet gives it: values as written, the hub token from its Secret."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["secretKeyRef"]["name"] == "hf-token" and token is not None:
            env[var["name"]] = token
    return env


def filled(value: str, box: Sandbox, token: str | None) -> str:
    return value.replace("{root}", str(box.root)).replace("{token}", token or "")


def download_params() -> Iterator[Any]:
    for case in CASES:
        for name in case.downloads:
            for token in (TOKEN, None) if case.downloads[name].hub_token else (None,):
                label = "with-token" if token else "no-token"
                yield pytest.param(case, name, token, id=f"{case.id}/{name}/{label}")


def test_the_hostile_values_are_admitted_and_never_contain_a_mount() -> None:
    """The sandbox rewrites the mounts in the script text: nothing else there may spell one."""
    sources = [c.spec["model"]["source"] for c in CASES] + [
        a["source"] for c in CASES for a in c.spec.get("adapters", [])
    ]
    for value in (HOSTILE, HUB, TOKEN, *(s for s in sources if not s.startswith("pvc://"))):
        assert not any(mount in value for mount in MOUNTS), value
    for case in CASES:
        parse_spec(case.spec)
    OperatorConfig(hub_endpoint=HUB)


def test_every_download_is_rendered_and_covered() -> None:
    """Each case renders exactly the init containers it expects: nothing here is left untested."""
    for case in CASES:
        assert sorted(init_containers(case)) == sorted(case.downloads), case.id
    schemes = {f"{name}:{c.spec['model']['source'].split(':')[0]}" for c in CASES for name in c.downloads}
    assert {"fetch-model:hf", "fetch-model:s3", "fetch-model:https"} <= schemes


@pytest.mark.parametrize(("case", "name", "token"), list(download_params()))
def test_a_download_script_passes_hostile_values_as_single_arguments(
    tmp_path: Path, case: Case, name: str, token: str | None
) -> None:
    container = init_containers(case)[name]
    assert container["command"][:2] == [SHELL, "-c"]
    script = container["command"][2]
    expected = case.downloads[name]
    box = Sandbox.create(tmp_path)
    env = container_env(container, token=token)
    assert (env.get("HF_TOKEN") == token) if expected.hub_token else ("HF_TOKEN" not in env)

    first = box.run(script, env, archive=expected.archive)
    assert first.returncode == 0, first.stderr
    assert box.injected() == [], "an injected command ran"
    calls = box.recorded()
    assert len(calls) == 1, calls
    (call,) = calls
    if expected.snapshot is not None:  # the code ran for real: snapshot_download got exactly these
        assert (len(call), call[:2]) == (3, ["python3", "-c"])
        assert json.loads(box.snapshot.read_text()) == {k: filled(v, box, token) for k, v in expected.snapshot.items()}
    else:
        without_token = [a for a in expected.argv if token is not None or a not in AUTH_HEADER]
        assert call == [filled(arg, box, token) for arg in without_token]
    done_markers = {f for f in box.files() if f.endswith(".done")}
    assert len(done_markers) == 1, box.files()
    assert box.files() - done_markers == set(expected.leaves)
    assert sorted(p.name for p in box.work.iterdir()) == [], "something was written where the script ran"

    again = box.run(script, env)  # a finished download is not repeated
    assert again.returncode == 0, again.stderr
    assert box.recorded() == []
    assert again.stdout == f"already present: {box.root}{expected.target}\n"
    assert box.injected() == []


def test_the_leader_of_a_multi_node_replica_passes_its_arguments_as_written(tmp_path: Path) -> None:
    """The Ray leader runs `ray start ... && exec vllm serve ARGS` in sh -c: ARGS must arrive as they are."""
    served_name = "chat'\"$(touch${IFS}pwned)`touch${IFS}pwned`;touch${IFS}pwned"  # servedModelName admits these
    extra_args = [
        "--chat-template",
        "{{ x }}\n$(touch pwned)`touch pwned`;touch pwned && touch pwned",
        "--enforce-eager",
    ]
    spec = {
        "model": {"catalogName": "llama-3.1-405b", "source": "pvc://models/llama-3.1-405b"},
        "engine": {"type": "vllm", "extraArgs": extra_args},
        "placement": {"gpuClass": "h100-80gb", "gpuCount": 16, "maxNodesPerReplica": 2},
        "serving": {"servedModelName": served_name},
    }
    leader = rendered_pod(spec)["containers"][0]
    assert leader["command"][:2] == [SHELL, "-c"]
    box = Sandbox.create(tmp_path)
    ran = box.run(leader["command"][2], {})
    assert ran.returncode == 0, ran.stderr
    assert box.injected() == [], "an injected command ran"
    calls = {call[0]: call for call in box.recorded()}
    assert sorted(calls) == ["ray", "vllm"]
    assert calls["ray"][1:3] == ["start", "--head"]
    serve = calls["vllm"]
    assert serve[1] == "serve"
    assert serve[serve.index("--served-model-name") + 1] == served_name
    assert serve[-len(extra_args) :] == extra_args


def test_the_sandbox_sees_an_injected_command_and_an_unquoted_value(tmp_path: Path) -> None:
    """The checks above can fail: an unquoted `$(...)` runs, and an unquoted value splits into words."""
    box = Sandbox.create(tmp_path)
    (box.root / "models").mkdir()
    ran = box.run("curl -o /models/x.part https://h/a$(touch${IFS}pwned)b c", {})
    assert ran.returncode == 0, ran.stderr
    assert box.injected() != []
    assert box.recorded() == [["curl", "-o", f"{box.root}/models/x.part", "https://h/ab", "c"]]


# -- the model cache's download Job: the same step, with progress lines the operator reads -----------------

MODEL_CASES = [case for case in CASES if case.id.startswith("model-")]
PAYLOAD_BYTES = 4  # payload.bin


def cache_job_container(case: Case) -> dict[str, Any]:
    spec = parse_spec({**case.spec, "model": {**case.spec["model"], "cache": {}}})
    decision = plan(spec, "demo", INVENTORY)
    job = render_job("demo", "ns", spec, decision, options=RenderOptions(hub_endpoint=HUB), claim_uid="claim-uid")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def progress_lines(stdout: str) -> list[tuple[str, int]]:
    lines = [line.split() for line in stdout.splitlines() if line.startswith((PROGRESS_LINE, COMPLETE_LINE))]
    return [(word, int(count)) for word, count in lines]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[case.id for case in MODEL_CASES])
def test_the_cache_job_downloads_like_the_init_container_and_ends_with_the_complete_line(
    tmp_path: Path, case: Case
) -> None:
    container = cache_job_container(case)
    expected = case.downloads["fetch-model"]
    box = Sandbox.create(tmp_path)
    ran = box.run(container["command"][2], container_env(container, token=None), archive=expected.archive)
    assert ran.returncode == 0, ran.stderr
    assert box.injected() == [], "an injected command ran"
    (call,) = box.recorded()
    if expected.snapshot is None:
        assert call == [filled(arg, box, None) for arg in expected.argv if arg not in AUTH_HEADER]
    assert box.files() - {f for f in box.files() if f.endswith(".done")} == set(expected.leaves)
    lines = progress_lines(ran.stdout)
    assert lines, ran.stdout
    assert lines[-1][0] == COMPLETE_LINE, ran.stdout
    assert [word for word, _ in lines].count(COMPLETE_LINE) == 1
    leaf = box.root / expected.target.lstrip("/")
    if leaf.is_file():
        assert lines[-1][1] == leaf.stat().st_size
    again = box.run(container["command"][2], container_env(container, token=None))
    assert (again.returncode, box.recorded()) == (0, [])
    assert again.stdout == f"already present: {box.root}{expected.target}\n"


def test_a_slow_download_prints_progress_while_it_runs(tmp_path: Path) -> None:
    (case,) = [c for c in MODEL_CASES if c.id == "model-gguf-hf"]
    container = cache_job_container(case)
    box = Sandbox.create(tmp_path)
    ran = box.run(container["command"][2], {**container_env(container, token=TOKEN), "STUB_SLOW": "5"})
    assert ran.returncode == 0, ran.stderr
    lines = progress_lines(ran.stdout)
    assert (PROGRESS_LINE, 2) in lines, ran.stdout  # the two bytes written before the stub's wait
    assert lines[-1] == (COMPLETE_LINE, PAYLOAD_BYTES)
    assert box.injected() == []


def test_an_http_error_ends_the_job_script_with_curls_exit_code_and_no_marker(tmp_path: Path) -> None:
    (case,) = [c for c in MODEL_CASES if c.id == "model-gguf-hf"]
    container = cache_job_container(case)
    box = Sandbox.create(tmp_path)
    ran = box.run(container["command"][2], {**container_env(container, token=None), "STUB_EXIT": "22"})
    assert ran.returncode == CURL_HTTP_ERROR, (ran.stdout, ran.stderr)
    assert COMPLETE_LINE not in ran.stdout
    assert not any(f.endswith(".done") for f in box.files()), box.files()
