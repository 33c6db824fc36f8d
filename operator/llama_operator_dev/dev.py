"""`llama-operator-dev`: the local control plane, the operator, the examples, and a live placement table."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import yaml

from llama_operator.api.crd import build_crd
from llama_operator.api.spec import GROUP, KIND, VERSION
from llama_operator.engines.base import HTTP_PORT_NAME
from llama_operator.kube import Kube
from llama_operator.render import LABEL_DEPLOYMENT
from llama_operator_dev.controlplane import ControlPlane
from llama_operator_dev.keda import keda_binaries
from llama_operator_dev.lws import BUILD_SCRIPT as LWS_BUILD_SCRIPT
from llama_operator_dev.lws import lws_binary
from llama_operator_dev.pools import NODE_POOL_LABEL, PROCESS_BACKED_LABEL
from llama_operator_dev.prometheus import Prometheus
from llama_operator_dev.real_pools import RealPools, real_pools

LOGGER = logging.getLogger(__name__)
DEMO_NAMESPACE = "demo"
OPERATOR_STOP_SECONDS = 20.0


@dataclass(frozen=True)
class Row:
    name: str
    engine: str
    gpus: str
    pools: str
    ready: str
    phase: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(check: Callable[[], bool], timeout_seconds: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_seconds:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f}s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def install_crd(kube: Kube) -> None:
    body = build_crd()
    kube.apply(body)

    def established() -> bool:
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, body["metadata"]["name"]) or {}
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    _wait(established, 30, "the LlamaDeployment CRD to be established")


def apply_examples(kube: Kube, examples_dir: Path, namespace: str, *, real: RealPools | None) -> list[str]:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    _wait(
        lambda: kube.get("v1", "ServiceAccount", namespace, "default") is not None,
        60,
        f"the default service account of namespace {namespace}",
    )
    names = []
    for path in sorted(examples_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == KIND:
                manifest = real.place(document) if real is not None else document
                manifest["metadata"]["namespace"] = namespace
                kube.apply(manifest)
                names.append(manifest["metadata"]["name"])
    return names


@contextmanager
def operator_process(kubeconfig: Path, log_path: Path, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`llama-operator run --config CONFIG` against the dev cluster, stopped (SIGTERM, then SIGKILL) on exit."""
    liveness = _free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_operator.cli", "run", "--liveness", f"http://127.0.0.1:{liveness}/healthz",
             "--metrics-port", str(_free_port()), "--metrics-host", "127.0.0.1", "--config", str(config)],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:

            def alive() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"the operator exited with status {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2) as response:
                        return bool(response.status == 200)
                except OSError:
                    return False

            _wait(alive, 60, "the operator's liveness endpoint")
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=OPERATOR_STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def placement_rows(kube: Kube, namespace: str) -> list[Row]:
    nodes = kube.list("v1", "Node", None)
    pool_of = {n["metadata"]["name"]: n["metadata"].get("labels", {}).get(NODE_POOL_LABEL, "?") for n in nodes}
    rows = []
    for item in kube.list(f"{GROUP}/{VERSION}", KIND, namespace):
        name = item["metadata"]["name"]
        status = item.get("status") or {}
        pods = kube.list("v1", "Pod", namespace, f"{LABEL_DEPLOYMENT}={name}")
        placed = {pool_of.get(p["spec"].get("nodeName", ""), "pending") for p in pods}
        rows.append(
            Row(
                name=name,
                engine=str(status.get("engine") or "-"),
                gpus=str(status.get("gpus") or "-"),
                pools=",".join(sorted(placed)) or "-",
                ready=str(status.get("ready") or "-"),
                phase=str(status.get("phase") or "Pending"),
            )
        )
    return sorted(rows, key=lambda r: r.name)


@dataclass(frozen=True)
class ServingPod:
    """A Ready pod of the demo that really serves (on a process-backed node): how to talk to it."""

    deployment: str
    pod: str
    model: str  # the `model` clients send
    base_url: str  # http://<pod IP>:<port>/v1

    def how_to_talk(self) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Say hello."}],
                           "max_tokens": 16})  # fmt: skip
        return (
            f"{self.deployment} serves on pod {self.pod}; send it a chat request:\n"
            f"    curl -s {self.base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
            f'    or, with the openai client: OpenAI(base_url="{self.base_url}", api_key="unused")'
        )


def serving_pods(kube: Kube, namespace: str) -> list[ServingPod]:
    """Ready, not terminating pods of the demo's LlamaDeployments on process-backed nodes."""
    real_nodes = {n["metadata"]["name"] for n in kube.list("v1", "Node", None, f"{PROCESS_BACKED_LABEL}=true")}
    found = []
    for item in kube.list(f"{GROUP}/{VERSION}", KIND, namespace):
        name = item["metadata"]["name"]
        model = str(((item.get("spec") or {}).get("serving") or {}).get("servedModelName") or name)
        for pod in kube.list("v1", "Pod", namespace, f"{LABEL_DEPLOYMENT}={name}"):
            status = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            if not ready or pod["metadata"].get("deletionTimestamp") or pod["spec"].get("nodeName") not in real_nodes:
                continue
            ports = pod["spec"]["containers"][0].get("ports") or []
            port = next((p["containerPort"] for p in ports if p.get("name") == HTTP_PORT_NAME), None)
            if port is not None and status.get("podIP"):
                found.append(ServingPod(name, pod["metadata"]["name"], model, f"http://{status['podIP']}:{port}/v1"))
    return sorted(found, key=lambda p: p.pod)


def format_rows(rows: list[Row]) -> str:
    header = Row("NAME", "ENGINE", "GPUS", "NODE POOL", "READY", "PHASE")
    table = [header, *rows]
    fields = ("name", "engine", "gpus", "pools", "ready", "phase")
    widths = {f: max(len(getattr(r, f)) for r in table) for f in fields}
    return "\n".join("  ".join(getattr(r, f).ljust(widths[f]) for f in fields).rstrip() for r in table)


class _StopRequestedError(Exception):
    """SIGTERM asks `llama-operator-dev` to tear down like Ctrl-C does."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequestedError


def lws_line(plane: ControlPlane) -> str:
    if plane.lws is None:
        return f"no LeaderWorkerSet controller: build it with {LWS_BUILD_SCRIPT} LWS"
    return f"LeaderWorkerSet controller running (log: {plane.lws.log_path})"


def keda_line(plane: ControlPlane) -> str:
    if plane.keda is None:
        return f"no KEDA (autoscaling.mode: KEDA stays KEDANotInstalled): build it with {LWS_BUILD_SCRIPT} KEDA"
    return f"KEDA operator and metrics adapter running (logs in {plane.keda.logs_dir})"


def run_dev(workdir: Path, examples_dir: Path, out: TextIO, *, refresh_seconds: float = 2.0) -> int:
    """Bring everything up, print the table whenever it changes, tear everything down on Ctrl-C."""
    started = time.monotonic()

    def say(message: str) -> None:
        out.write(f"[{time.monotonic() - started:6.1f}s] {message}\n")
        out.flush()

    previous_handler = signal.signal(signal.SIGTERM, _raise_stop)
    real = real_pools(workdir, examples_dir, say)  # None (and why) when llama-server is not built
    plane = ControlPlane(
        workdir,
        process_backed=real.config if real is not None else None,
        prometheus=real is not None and Prometheus.available(),
        lws=lws_binary() is not None,  # multi-node replicas become real LeaderWorkerSet groups
        keda=keda_binaries() is not None,  # autoscaling.mode: KEDA becomes a real ScaledObject and HPA
    )
    config = workdir / "operator-config.yaml"
    try:
        if real is not None:
            real.hub.start()
            say(f"local model hub (the operator's hubEndpoint): {real.hub.url}")
        config.write_text(yaml.safe_dump({"hubEndpoint": real.hub.url} if real is not None else {}))
        say(f"starting the control plane in {workdir} (logs in {plane.logs_dir})")
        plane.start()
        say(f"control plane ready; kubeconfig: {plane.kubeconfig_path}; "
            f"{plane.publish_gpu_devices()} GPUs published as DRA devices (DeviceClass gpu.nvidia.com)")  # fmt: skip
        if plane.prometheus is not None:
            say(f"Prometheus scraping the pods: {plane.prometheus.url}")
        say(f"{lws_line(plane)}\n{keda_line(plane)}")
        say(f"  try: kubectl --kubeconfig {plane.kubeconfig_path} get llamad -n {DEMO_NAMESPACE}")
        with plane.new_api_client() as api_client:
            kube = Kube(api_client)
            install_crd(kube)
            say("CRD llamadeployments.llamaops.io installed")
            with operator_process(plane.kubeconfig_path, workdir / "operator.log", config):
                say(f"operator running (log: {workdir / 'operator.log'})")
                names = apply_examples(kube, examples_dir, DEMO_NAMESPACE, real=real)
                say(
                    f"applied {len(names)} examples from {examples_dir} to namespace {DEMO_NAMESPACE}: {', '.join(names)}"
                )
                say("watching; press Ctrl-C to stop and tear everything down")
                shown = ""
                announced: set[str] = set()
                while True:
                    table = format_rows(placement_rows(kube, DEMO_NAMESPACE))
                    if table != shown:
                        say("LlamaDeployments:\n" + table)
                        shown = table
                    for pod in serving_pods(kube, DEMO_NAMESPACE):
                        if pod.pod not in announced:
                            announced.add(pod.pod)
                            say(pod.how_to_talk())
                    time.sleep(refresh_seconds)
    except (KeyboardInterrupt, _StopRequestedError):
        say("stopping")
    finally:
        plane.stop()
        if real is not None:
            real.hub.stop()
        signal.signal(signal.SIGTERM, previous_handler)
        say("control plane stopped; nothing left running")
    return 0
