"""Pod pieces every engine shares: model download, probes, drain, resources, volumes."""

from __future__ import annotations

import posixpath
import shlex
from typing import TYPE_CHECKING

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


def hub_endpoint_env(inp: EngineInput) -> list[Manifest]:
    """The hub (or the mirror) huggingface_hub downloads from, for containers that download hf:// sources."""
    return [{"name": HF_ENDPOINT_ENV, "value": inp.hub_endpoint}]


def _fetch_script(source: str, target: str, *, single_file: bool, hub_endpoint: str) -> tuple[str, str]:
    """(image kind, shell script) that downloads `source` into `target`, skipping a finished download."""
    scheme, rest = split_source(source)
    done = shlex.quote(target + ".done") if single_file else shlex.quote(posixpath.join(target, ".done"))
    quoted = shlex.quote(target)
    parent = shlex.quote(posixpath.dirname(target))
    present = shlex.quote(f"already present: {target}")
    prefix = f"set -eu; if [ -e {done} ]; then echo {present}; exit 0; fi; mkdir -p {parent}; "
    if scheme == "hf":
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        if single_file:
            file_path = "/".join(parts[2:])
            url = shlex.quote(f"{hub_endpoint.rstrip('/')}/{repo}/resolve/main/{file_path}")
            auth = f'${{{HF_TOKEN_ENV}:+-H}} ${{{HF_TOKEN_ENV}:+"Authorization: Bearer ${HF_TOKEN_ENV}"}}'
            script = f"curl -fL --retry 5 --retry-delay 5 {auth} -o {quoted}.part {url} && mv {quoted}.part {quoted}"
            return "curl", prefix + script + f" && touch {done}"
        code = (
            f"from huggingface_hub import snapshot_download; snapshot_download(repo_id={repo!r}, local_dir={target!r})"
        )
        return "engine", prefix + f"mkdir -p {quoted} && python3 -c {shlex.quote(code)} && touch {done}"
    if scheme == "s3":
        flag = "" if single_file else " --recursive"
        return "s3", prefix + f"aws s3 cp{flag} {shlex.quote('s3://' + rest)} {quoted} && touch {done}"
    # https
    script = f"curl -fL --retry 5 --retry-delay 5 -o {quoted}.part {shlex.quote(source)} && mv {quoted}.part {quoted}"
    return "curl", prefix + script + f" && touch {done}"


def _downloader(
    inp: EngineInput, name: str, source: str, target: str, engine_image: str, *, single_file: bool
) -> Manifest:
    kind, script = _fetch_script(source, target, single_file=single_file, hub_endpoint=inp.hub_endpoint)
    image = {"curl": inp.images.downloader, "s3": inp.images.s3_downloader}.get(kind, engine_image)
    mount = ADAPTER_MOUNT if target.startswith(ADAPTER_MOUNT) else MODEL_MOUNT
    container: Manifest = {
        "name": name,
        "image": image,
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": [{"name": mount.strip("/"), "mountPath": mount}],
    }
    env = [*hub_endpoint_env(inp), *hub_token_env(inp)] if source.startswith("hf://") else []
    if env:
        container["env"] = env
    return container


def model_init_containers(inp: EngineInput, engine_image: str) -> list[Manifest]:
    """One init container per source that must be downloaded; pvc:// sources are mounted instead."""
    init: list[Manifest] = []
    source = inp.spec.model.source
    if not source.startswith("pvc://"):
        single = inp.spec.model.format == "gguf"
        init.append(_downloader(inp, "fetch-model", source, model_path(inp), engine_image, single_file=single))
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
    if scheme == "pvc":
        claim = rest.split("/", 1)[0]
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
    return volumes


def volume_mounts(inp: EngineInput) -> list[Manifest]:
    mounts = [{"name": "models", "mountPath": MODEL_MOUNT, "readOnly": inp.spec.model.source.startswith("pvc://")}]
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
) -> EngineContainer:
    """What every builder shares: probes, drain, resources, volumes, the model download and metrics on
    the API port; the engine gives its own image, command, args, env and ports."""
    container = {
        "name": "engine",
        "image": image,
        "command": command,
        "args": args,
        "env": env_list(inp, engine_env),
        "ports": ports,
        "resources": resources(inp),
        "volumeMounts": volume_mounts(inp),
        "lifecycle": drain_lifecycle(),
        # A crash shows the engine's own last log lines in the pod status (and so in Degraded).
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
    )


def env_list(inp: EngineInput, engine_env: dict[str, str]) -> list[Manifest]:
    """Engine env, then the user's (theirs win), sorted by name; the hub token from its Secret."""
    merged = dict(engine_env)
    merged.update({e.name: e.value for e in inp.spec.engine.env})
    plain = [{"name": k, "value": merged[k]} for k in sorted(merged) if k != HF_TOKEN_ENV]
    return plain + hub_token_env(inp)
