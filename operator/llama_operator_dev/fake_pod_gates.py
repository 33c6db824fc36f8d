"""The operator's readiness gates on the pods KWOK runs, set by the harness (nothing serves in those pods).

A pod of a LlamaDeployment with adapters carries the readiness gate ``llamaops.io/adapters-verified``:
the operator sets it once a smoke request through the adapters passed, and for adapters loaded at
runtime (vLLM, hub adapters) it records the loaded set in the pod condition ``llamaops.io/adapters-loaded``.
A pod on a KWOK node runs no container, so no request to it could pass. This watcher answers in the
operator's place: when such a pod is bound to a KWOK node it sets the gate (and, for a runtime-loaded
set, the loaded condition), and the KWOK stage ``llamaops-pod-ready`` (``kwok-stages.yaml``) starts a
gated pod only after that. The operator therefore first sees the pod ready with its adapters verified,
and never sends it a request; it does not know the node is fake.

The set recorded as loaded is the one the operator serves: ``status.adapterRollout.serving`` when that
status is about the current ``spec.adapters`` (after a rollback it is the last good set), else
``spec.adapters``. A runtime change of the set on pods that already run is not answered: the operator's
load then fails on those pods, as it would on any pod that serves nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient

from llama_operator.adapters.rollout import ADAPTERS_ANNOTATION, GATE_CONDITION, LOADED_CONDITION, adapter_key
from llama_operator.api.spec import GROUP, PLURAL, VERSION, Adapter
from llama_operator.render import LABEL_DEPLOYMENT
from llama_operator_dev.process_kubelet_api import API_ERRORS, KubeletApi, Manifest

LOGGER = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 5  # each watch round starts with every selected pod again: a failed patch is retried
BOUND_AND_PENDING = "status.phase=Pending,spec.nodeName!="
REASON = "FakeNode"
GATE_MESSAGE = "KWOK node: no container runs here, so the dev harness set this gate instead of a smoke request"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(pod: Manifest) -> list[Manifest]:
    return list((pod.get("status") or {}).get("conditions") or [])


def awaits_gate(pod: Manifest, kwok_nodes: Collection[str]) -> bool:
    """A live pod on a KWOK node that carries the operator's readiness gate and has no verdict yet."""
    gates = {gate.get("conditionType") for gate in pod["spec"].get("readinessGates") or []}
    return (
        pod["spec"].get("nodeName") in kwok_nodes
        and GATE_CONDITION in gates
        and not pod["metadata"].get("deletionTimestamp")
        and not any(c.get("type") == GATE_CONDITION for c in _conditions(pod))
    )


def loads_at_runtime(pod: Manifest) -> bool:
    """The pod's template names no adapter set: the operator loads the set into the running pod."""
    return ADAPTERS_ANNOTATION not in (pod["metadata"].get("annotations") or {})


def _key(adapters: Sequence[Mapping[str, Any]]) -> str:
    return adapter_key([Adapter.model_validate(adapter) for adapter in adapters])


def serving_key(owner: Manifest) -> str:
    """The adapter set the operator serves for ``owner`` (a LlamaDeployment), as ``a@v1,b@v2``."""
    wanted = _key((owner.get("spec") or {}).get("adapters") or [])
    rollout = (owner.get("status") or {}).get("adapterRollout") or {}
    if ",".join(rollout.get("target") or []) == wanted:
        return _key(rollout.get("serving") or [])
    return wanted


def gate_conditions(pod: Manifest, owner: Manifest | None, now: str) -> list[Manifest] | None:
    """The conditions to set on a pod that ``awaits_gate``; None when its owner is gone (the pod goes too)."""
    gate = {"type": GATE_CONDITION, "status": "True", "reason": REASON, "message": GATE_MESSAGE,
            "lastTransitionTime": now}  # fmt: skip
    if not loads_at_runtime(pod):
        return [gate]
    if owner is None:
        return None
    loaded = {"type": LOADED_CONDITION, "status": "True", "reason": REASON, "message": serving_key(owner),
              "lastTransitionTime": now}  # fmt: skip
    return [loaded, gate]


def owner_path(pod: Manifest) -> str | None:
    meta = pod["metadata"]
    name = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    if not name:
        return None
    return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(meta['namespace'])}/{PLURAL}/{quote(name)}"


class FakePodGates:
    """Sets the readiness gates of gated pods bound to the nodes ``node_selector`` selects, until ``stop()``."""

    def __init__(self, new_api_client: Callable[[], ApiClient], node_selector: str) -> None:
        self.node_selector = node_selector
        self._new_api_client = new_api_client
        self._api_clients: list[ApiClient] = []
        self._kwok_nodes: set[str] = set()
        self._other_nodes: set[str] = set()  # bound pods there are the process-backed kubelet's, or a real one's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_api: KubeletApi | None = None
        self._api: KubeletApi | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the fake pod gates were already started")
        self._api, self._watch_api = self._client(), self._client()
        self._refresh_nodes()
        self._thread = threading.Thread(target=self._watch_loop, name="fake pod gates", daemon=True)
        self._thread.start()
        LOGGER.info("readiness gates of gated pods on %d KWOK nodes are set by the harness", len(self._kwok_nodes))

    def stop(self) -> None:
        self._stop.set()
        if self._watch_api is not None:
            self._watch_api.interrupt_watches()
        if self._thread is not None:
            self._thread.join(WATCH_TIMEOUT_SECONDS + 1.0)
        for api_client in self._api_clients:
            api_client.close()  # type: ignore[no-untyped-call]
        self._api_clients.clear()

    def _client(self) -> KubeletApi:
        api_client = self._new_api_client()
        self._api_clients.append(api_client)
        return KubeletApi(api_client)

    def _refresh_nodes(self) -> None:
        assert self._api is not None
        self._kwok_nodes = {node["metadata"]["name"] for node in self._api.list_nodes(self.node_selector)}

    def _watch_loop(self) -> None:
        assert self._watch_api is not None
        while not self._stop.is_set():
            try:
                for event in self._watch_api.watch_pods(BOUND_AND_PENDING, WATCH_TIMEOUT_SECONDS):
                    if self._stop.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._observe(event["object"])
            except API_ERRORS as error:
                if not self._stop.is_set():
                    LOGGER.debug("watch of pending pods ended: %s", error)
                    self._stop.wait(1.0)

    def _observe(self, pod: Manifest) -> None:
        assert self._api is not None
        node = pod["spec"].get("nodeName")
        if node and node not in self._kwok_nodes and node not in self._other_nodes:
            self._refresh_nodes()  # a node registered after start
            if node not in self._kwok_nodes:
                self._other_nodes.add(node)
        if not awaits_gate(pod, self._kwok_nodes):
            return
        meta = pod["metadata"]
        try:
            path = owner_path(pod)
            owner = self._api.read(path) if path is not None and loads_at_runtime(pod) else None
            conditions = gate_conditions(pod, owner, _now())
            if conditions is None:
                return
            self._api.patch_pod_status(meta["namespace"], meta["name"], {"conditions": conditions})
        except API_ERRORS as error:  # the next watch round sees the pod again
            LOGGER.warning("setting the readiness gate of pod %s/%s failed: %s", meta["namespace"], meta["name"], error)
            return
        LOGGER.info("pod %s/%s on KWOK node %s: %s set", meta["namespace"], meta["name"], node,
                    ", ".join(f"{c['type']}={c['message'] if c['type'] == LOADED_CONDITION else c['status']}"
                              for c in conditions))  # fmt: skip
