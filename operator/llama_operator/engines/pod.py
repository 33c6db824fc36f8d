"""Pod pieces every engine shares: model download, probes, drain, resources, volumes, pod security."""

from __future__ import annotations

import posixpath
import shlex
from typing import TYPE_CHECKING
from urllib.parse import quote as url_quote

from llama_operator.cache_names import cache_of
from llama_operator.engines.devices import container_claims
from llama_operator.engines.engine import ADAPTER_MOUNT, HTTP_PORT_NAME, MODEL_MOUNT, EngineContainer, Manifest
from llama_operator.sizing.gpu_classes import GPU_RESOURCE, MIB

if TYPE_CHECKING:  # base.py asks the registry, which imports the engine modules, which import this one
    from llama_operator.engines.base import EngineInput

HEALTH_PATH = "/health"
# Model loads take minutes (download + load + CUDA graph capture): allow 30 minutes before a restart.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
DRAIN_SECONDS = 15  # preStop: keep serving while endpoints stop routing to this pod
TERMINATION_GRACE_SECONDS = 90
CPU_PER_GPU = 4
CPU_FOR_CPU_PLAN = 4
HF_TOKEN_ENV = "HF_TOKEN"  # noqa: S105 - the variable name, not a secret
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # read by huggingface_hub, so by snapshot_download and by vLLM's adapter loads

# Pod Security: every pod meets the `restricted` Pod Security Standard unless its engine names why its image
# cannot (engine_container's `runs_as_root`); then it still meets `baseline` and says so in an annotation.
# No pinned image needs a particular uid: HOME (and so every cache below it) is a writable volume, not the
# image's home directory. (vLLM's image also ships a `vllm` user, uid 2000 in group 0; llama.cpp's defines
# none.) A uid without a passwd entry only matters to getpass, and torch's inductor falls back to the uid.
RUN_AS_USER = 1000
RUN_AS_GROUP = 1000
HOME_ENV = "HOME"
HF_HOME_ENV = "HF_HOME"  # huggingface_hub's cache and token folder; TGI's image points it at /data
# HOME of every container that runs as RUN_AS_USER: the Hugging Face cache, vLLM's torch.compile cache
# (VLLM_CACHE_ROOT defaults to $XDG_CACHE_HOME/vllm, else ~/.cache/vllm), Triton's and CUDA's kernel caches,
# FlashInfer's JIT cache and ~/.config all land below it.
HOME_MOUNT = "/home/engine"
HOME_VOLUME = "home"
TMP_MOUNT = "/tmp"  # noqa: S108 - a mount point: Ray's session folder, vLLM's IPC sockets, compilers' scratch
TMP_VOLUME = "tmp"
SCRATCH_SIZE_LIMIT = "10Gi"
RESTRICTED_EXCEPTION_ANNOTATION = "llamaops.io/pod-security-exception"
DOWNLOAD_CONTAINER = "fetch-model"


def http_probe(port_name: str, *, period: int, failures: int, timeout: int = 5) -> Manifest:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": port_name},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def probes() -> Manifest:
    """An HTTP startupProbe on /health with a long budget, then readiness and liveness on the same path.

    vLLM and TGI refuse connections while loading and llama-server answers 503: all three fail the
    startup probe until the model is ready, and liveness only starts counting after that.
    """
    return {
        "startupProbe": http_probe(HTTP_PORT_NAME, period=STARTUP_PERIOD_SECONDS, failures=STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": http_probe(HTTP_PORT_NAME, period=5, failures=3),
        "livenessProbe": http_probe(HTTP_PORT_NAME, period=15, failures=4, timeout=10),
    }


def drain_lifecycle() -> Manifest:
    return {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}}


def hub_token_env(inp: EngineInput) -> list[Manifest]:
    """The hub token as an env var from its Secret: never in args, never in logs."""
    ref = inp.spec.hub_token_secret_ref
    if ref is None:
        return []
    return [{"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def split_source(source: str) -> tuple[str, str]:
    scheme, _, rest = source.partition("://")
    return scheme, rest.strip("/")


def model_path(inp: EngineInput) -> str:
    """Where the engine finds the model: a GGUF file or a checkpoint folder."""
    scheme, rest = split_source(inp.spec.model.source)
    if scheme == "pvc":
        _, _, sub_path = rest.partition("/")
        return posixpath.join(MODEL_MOUNT, sub_path) if sub_path else MODEL_MOUNT
    if inp.spec.model.format == "gguf":
        return posixpath.join(MODEL_MOUNT, posixpath.basename(rest))
    return posixpath.join(MODEL_MOUNT, "model")


def adapter_claim_volume(claim: str) -> str:
    """The pod volume of a claim that holds adapters (a claim name is a valid volume name)."""
    return f"adapters-{claim.replace('.', '-')}"[:63].rstrip("-")


def adapter_path(inp: EngineInput, name: str, version: str) -> str:
    """Where an adapter lands: one GGUF file for llama.cpp, a PEFT folder for vLLM and TGI."""
    base = posixpath.join(ADAPTER_MOUNT, name, version)
    return base + ".gguf" if inp.spec.model.format == "gguf" else base


def container_security_context(*, read_only_root: bool) -> Manifest:
    """What `restricted` asks of every container (no privilege escalation, no capabilities), and a read-only
    root filesystem where the engine writes only to its volumes."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


def pod_security_context(restricted_exception: str | None) -> Manifest:
    """Non-root with a fixed uid, gid and fsGroup under the runtime's default seccomp profile; with an
    exception, the image's own user (root) under the same seccomp profile."""
    seccomp = {"type": "RuntimeDefault"}
    if restricted_exception is not None:
        return {"runAsNonRoot": False, "seccompProfile": seccomp}
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        # The kubelet walks a volume only when its top folder's group or mode differ, not on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": seccomp,
    }


def scratch_volumes() -> list[Manifest]:
    """HOME and /tmp, writable under a read-only root filesystem; gone with the pod."""
    return [
        {"name": HOME_VOLUME, "emptyDir": {"sizeLimit": SCRATCH_SIZE_LIMIT}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": SCRATCH_SIZE_LIMIT}},
    ]


def scratch_mounts() -> list[Manifest]:
    return [{"name": HOME_VOLUME, "mountPath": HOME_MOUNT}, {"name": TMP_VOLUME, "mountPath": TMP_MOUNT}]


PROGRESS_LINE = "llamaops-progress"  # `llamaops-progress <bytes>`: the download so far, every PROGRESS_SECONDS
COMPLETE_LINE = "llamaops-complete"  # `llamaops-complete <bytes>`: the whole download, once
PROGRESS_SECONDS = 2


def _size_of(path: str, *, single_file: bool) -> str:
    """A shell expression for the bytes at `path` so far: a file's length, a folder's disk usage."""
    if single_file:
        return f"$(wc -c < {path} 2>/dev/null || echo 0)"
    return f"$(( $(du -sk {path} 2>/dev/null | cut -f1 || echo 0) * 1024 ))"


def _with_progress(fetch: str, partial: str, *, single_file: bool) -> str:
    """Run `fetch` in the background and print PROGRESS_LINE with the bytes of `partial` while it runs; under
    `set -e` its exit code ends the script (curl's 22 for an HTTP error)."""
    progress = f"echo {PROGRESS_LINE} {_size_of(partial, single_file=single_file)}"
    return (
        f'( {fetch} ) & fetch=$!; while kill -0 "$fetch" 2>/dev/null; do '
        f'if [ -e {partial} ]; then {progress}; fi; sleep {PROGRESS_SECONDS}; done; wait "$fetch"'
    )


def _fetch_script(
    source: str, target: str, *, single_file: bool, hub_endpoint: str, progress: bool = False
) -> tuple[str, str]:
    """(image kind, shell script) that downloads `source` into `target`, skipping a finished download.

    Every value from a spec or the operator's settings is one shell word, quoted: a source may hold any
    character but whitespace and control characters, and none of them may act on the shell. A hub file's
    path is URL-encoded, so `#`, `?` and `%` in a file name stay part of it. An https:// folder (a checkpoint
    or a PEFT adapter) is one tar archive, unpacked into the folder. With `progress` (the model cache's Job,
    whose log the operator reads), the script prints PROGRESS_LINE while it downloads and COMPLETE_LINE at
    the end.
    """
    kind, script = _fetch_steps(source, target, single_file=single_file, hub_endpoint=hub_endpoint)
    done = shlex.quote(target + ".done") if single_file else shlex.quote(posixpath.join(target, ".done"))
    quoted = shlex.quote(target)
    parent = shlex.quote(posixpath.dirname(target))
    present = shlex.quote(f"already present: {target}")
    prefix = f"set -eu; if [ -e {done} ]; then echo {present}; exit 0; fi; mkdir -p {parent}; "
    fetch, finish = script
    if not progress:
        return kind, prefix + " && ".join(step for step in (fetch, finish, f"touch {done}") if step)
    # curl writes <target>.part (the file, or the archive of a folder); the others write the target itself
    partial, partial_is_file = (shlex.quote(target + ".part"), True) if kind == "curl" else (quoted, single_file)
    complete = f"echo {COMPLETE_LINE} {_size_of(quoted, single_file=single_file)}"
    steps = " && ".join(step for step in (finish, complete, f"touch {done}") if step)
    return kind, prefix + _with_progress(fetch, partial, single_file=partial_is_file) + "; " + steps


def _fetch_steps(source: str, target: str, *, single_file: bool, hub_endpoint: str) -> tuple[str, tuple[str, str]]:
    """(image kind, (the download, what puts it in place)) for one source; both may be empty strings."""
    scheme, rest = split_source(source)
    quoted = shlex.quote(target)
    if scheme == "hf":
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        if single_file:
            file_path = url_quote("/".join(parts[2:]), safe="/")
            url = shlex.quote(f"{hub_endpoint.rstrip('/')}/{repo}/resolve/main/{file_path}")
            auth = f'${{{HF_TOKEN_ENV}:+-H}} ${{{HF_TOKEN_ENV}:+"Authorization: Bearer ${HF_TOKEN_ENV}"}}'
            fetch = f"curl -fL --retry 5 --retry-delay 5 {auth} -o {quoted}.part {url}"
            return "curl", (fetch, f"mv {quoted}.part {quoted}")
        code = (
            f"from huggingface_hub import snapshot_download; snapshot_download(repo_id={repo!r}, local_dir={target!r})"
        )
        return "engine", (f"mkdir -p {quoted} && python3 -c {shlex.quote(code)}", "")
    if scheme == "s3":
        flag = "" if single_file else " --recursive"
        return "s3", (f"aws s3 cp{flag} {shlex.quote('s3://' + rest)} {quoted}", "")
    # https
    fetch = f"curl -fL --retry 5 --retry-delay 5 -o {quoted}.part {shlex.quote(source)}"
    if single_file:
        return "curl", (fetch, f"mv {quoted}.part {quoted}")
    unpack = f"tar -xf {quoted}.part -C {quoted} && rm {quoted}.part"
    return "curl", (f"mkdir -p {quoted} && {fetch}", unpack)


def _downloader(
    inp: EngineInput, name: str, source: str, target: str, engine_image: str, *, single_file: bool,
    progress: bool = False,
) -> Manifest:  # fmt: skip
    """One download into the model or adapter volume, on a read-only root filesystem: the download tools
    write only to that volume, HOME and /tmp. snapshot_download gets HF_HOME below HOME too, because an
    engine image may point it elsewhere (TGI's at /data)."""
    kind, script = _fetch_script(
        source, target, single_file=single_file, hub_endpoint=inp.hub_endpoint, progress=progress
    )
    image = {"curl": inp.images.downloader, "s3": inp.images.s3_downloader}.get(kind, engine_image)
    mount = ADAPTER_MOUNT if target.startswith(ADAPTER_MOUNT) else MODEL_MOUNT
    plain = {HOME_ENV: HOME_MOUNT}
    if kind == "engine":  # snapshot_download
        plain[HF_HOME_ENV] = posixpath.join(HOME_MOUNT, ".cache", "huggingface")
    hub = source.startswith("hf://")
    if hub:
        plain[HF_ENDPOINT_ENV] = inp.hub_endpoint
    return {
        "name": name,
        "image": image,
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": [{"name": mount.strip("/"), "mountPath": mount}, *scratch_mounts()],
        "env": [{"name": k, "value": plain[k]} for k in sorted(plain)] + (hub_token_env(inp) if hub else []),
        "securityContext": container_security_context(read_only_root=True),
    }


def model_downloader(inp: EngineInput, engine_image: str, *, progress: bool = False) -> Manifest:
    """The model's download into the `models` volume: an init container of every pod, or the model cache's
    Job (with progress lines in its log)."""
    single = inp.spec.model.format == "gguf"
    return _downloader(inp, DOWNLOAD_CONTAINER, inp.spec.model.source, model_path(inp), engine_image,
                       single_file=single, progress=progress)  # fmt: skip


def model_mounted(inp: EngineInput) -> bool:
    """Whether the model comes on a volume (a pvc:// source, or the shared model cache), not downloaded."""
    return inp.spec.model.source.startswith("pvc://") or cache_of(inp.spec) is not None


def model_init_containers(inp: EngineInput, engine_image: str) -> list[Manifest]:
    """One init container per source that must be downloaded; pvc:// sources and the model cache are mounted."""
    init: list[Manifest] = []
    if not model_mounted(inp):
        init.append(model_downloader(inp, engine_image))
    for adapter in inp.pod_adapters:
        if adapter.source.startswith("pvc://"):
            continue
        target = adapter_path(inp, adapter.name, adapter.version)
        init.append(
            _downloader(inp, f"fetch-adapter-{adapter.name}", adapter.source, target, engine_image,
                        single_file=inp.spec.model.format == "gguf")
        )  # fmt: skip
    return init


def model_volumes(inp: EngineInput) -> list[Manifest]:
    scheme, rest = split_source(inp.spec.model.source)
    chosen = inp.decision.chosen
    cache = cache_of(inp.spec)
    if scheme == "pvc" or cache is not None:
        claim = cache if cache is not None else rest.split("/", 1)[0]
        model = {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    else:
        weights = chosen.memory.weights * max(chosen.shape.gpus_per_node, 1) if chosen else 0
        size_mib = max(1024, int(weights * 1.2) // MIB)  # room for the download's temporary files
        model = {"name": "models", "emptyDir": {"sizeLimit": f"{size_mib}Mi"}}
    volumes = [model]
    if inp.pod_adapters:
        volumes.append({"name": "adapters", "emptyDir": {"sizeLimit": "10Gi"}})
    claims = sorted(
        {split_source(a.source)[1].split("/", 1)[0] for a in inp.pod_adapters if a.source.startswith("pvc://")}
    )
    volumes += [
        {"name": adapter_claim_volume(c), "persistentVolumeClaim": {"claimName": c, "readOnly": True}} for c in claims
    ]
    if inp.gpus_per_pod > 1:  # NCCL and the engines' worker queues use /dev/shm across TP ranks
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
    return volumes + scratch_volumes()


def volume_mounts(inp: EngineInput) -> list[Manifest]:
    mounts = [{"name": "models", "mountPath": MODEL_MOUNT, "readOnly": model_mounted(inp)}]
    if inp.pod_adapters:
        mounts.append({"name": "adapters", "mountPath": ADAPTER_MOUNT})
    for adapter in inp.pod_adapters:  # a pvc:// adapter is its claim's folder (or file), mounted where the engine looks
        if adapter.source.startswith("pvc://"):
            claim, _, sub_path = split_source(adapter.source)[1].partition("/")
            mount = {"name": adapter_claim_volume(claim), "mountPath": adapter_path(inp, adapter.name, adapter.version),
                     "readOnly": True}  # fmt: skip
            mounts.append({**mount, "subPath": sub_path} if sub_path else mount)
    if inp.gpus_per_pod > 1:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})  # noqa: S108 - a mount point, not a temp file
    return mounts


def resources(inp: EngineInput) -> Manifest:
    chosen = inp.decision.chosen
    host_mib = -(-chosen.memory.host_bytes // MIB) if chosen else 1024
    gpus = inp.gpus_per_pod
    cpu = CPU_PER_GPU * gpus if gpus else CPU_FOR_CPU_PLAN
    requests: Manifest = {"cpu": str(cpu), "memory": f"{host_mib}Mi"}
    limits: Manifest = {"memory": f"{host_mib}Mi"}
    if inp.dra:  # the GPUs come from the pod's ResourceClaim, not from the device plugin's resource
        return {"requests": requests, "limits": limits, "claims": container_claims()}
    if gpus:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def engine_container(
    inp: EngineInput,
    *,
    image: str,
    command: list[str],
    args: list[str],
    engine_env: dict[str, str],
    ports: list[Manifest],
    runs_as_root: str | None = None,
) -> EngineContainer:
    """What every builder shares: probes, drain, resources, volumes, the model download, metrics on the
    API port and pod security; the engine gives its own image, command, args, env and ports.

    The engine runs as RUN_AS_USER on a read-only root filesystem, with HOME and /tmp on writable volumes.
    `runs_as_root` says why an engine's image cannot: it then runs as the image's own user with the image's
    HOME on a writable root filesystem (still without capabilities or privilege escalation), and the pod
    carries the reason in the RESTRICTED_EXCEPTION_ANNOTATION.
    """
    non_root = runs_as_root is None
    container = {
        "name": "engine",
        "image": image,
        "command": command,
        "args": args,
        "env": env_list(inp, {**engine_env, HOME_ENV: HOME_MOUNT} if non_root else engine_env),
        "ports": ports,
        "resources": resources(inp),
        "volumeMounts": volume_mounts(inp) + (scratch_mounts() if non_root else []),
        "lifecycle": drain_lifecycle(),
        # A crash shows the engine's own last log lines in the pod status (and so in Degraded).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(read_only_root=non_root),
        **probes(),
    }
    port = next(p["containerPort"] for p in ports if p["name"] == HTTP_PORT_NAME)
    return EngineContainer(
        container=container,
        port=port,
        metrics_port=port,
        metrics_path="/metrics",
        volumes=model_volumes(inp),
        init_containers=model_init_containers(inp, image),
        pod_security_context=pod_security_context(runs_as_root),
        restricted_exception=runs_as_root,
    )


def env_list(inp: EngineInput, engine_env: dict[str, str]) -> list[Manifest]:
    """Engine env, then the user's (theirs win), sorted by name; the hub token from its Secret."""
    merged = dict(engine_env)
    merged.update({e.name: e.value for e in inp.spec.engine.env})
    plain = [{"name": k, "value": merged[k]} for k in sorted(merged) if k != HF_TOKEN_ENV]
    return plain + hub_token_env(inp)
