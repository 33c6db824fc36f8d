"""A Kubernetes API in memory for unit tests: the `Kube` methods the operator's passes, rollouts and
autoscaler call, keeping objects the way the apiserver does (merge patches on /status, resourceVersions)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from llama_operator.kube import Kube, KubeError, Reachability

Manifest = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the apiserver applies `application/merge-patch+json` (lists are replaced whole)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def copy_of(body: Manifest) -> Manifest:
    """What a caller gets back: the stored object as JSON, never the stored dict itself."""
    copied: Manifest = json.loads(json.dumps(body))
    return copied


class FakeApi(Kube):
    """Objects in memory with resourceVersions; each call is slow enough for passes to interleave.
    `secrets` maps (namespace, name) to a Secret's decoded data; `refuse` maps a kind to the error an
    apply of it raises (and counts in `writes`, as the apiserver counts a refused request)."""

    def __init__(self, owner: Manifest) -> None:
        self.owner_name: str = owner["metadata"]["name"]
        self.objects: dict[tuple[str, str], Manifest] = {("LlamaDeployment", self.owner_name): owner}
        self.refuse: dict[str, KubeError] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.secret_reads: list[tuple[str, str, str]] = []
        self.revision = 1
        self.writes: list[str] = []
        self.lock = threading.Lock()
        self.reachability = Reachability()

    def _bump(self, body: Manifest) -> Manifest:
        self.revision += 1
        body["metadata"]["resourceVersion"] = str(self.revision)
        return copy_of(body)

    def apply(self, manifest: Manifest) -> Manifest:
        time.sleep(0.002)
        with self.lock:
            self.writes.append(f"apply {manifest['kind']}")
            refusal = self.refuse.get(manifest["kind"])
            if refusal is not None:
                raise refusal
            stored = merge_patch(self.objects.get((manifest["kind"], manifest["metadata"]["name"]), {}), manifest)
            self.objects[(manifest["kind"], manifest["metadata"]["name"])] = stored
            return self._bump(stored)

    def patch_llamadeployment_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        time.sleep(0.002)
        with self.lock:
            self.writes.append("status " + ",".join(sorted(status)))
            owner = self.objects[("LlamaDeployment", name)]
            owner["status"] = merge_patch(owner.get("status") or {}, status)
            return self._bump(owner)

    def scale_llamadeployment(self, namespace: str, name: str, replicas: int) -> Manifest:
        with self.lock:
            self.writes.append(f"scale {replicas}")
            owner = self.objects[("LlamaDeployment", name)]
            owner["spec"]["replicas"] = replicas
            return self._bump(owner)

    def set_pod_conditions(self, namespace: str, name: str, conditions: Sequence[Manifest]) -> Manifest:
        with self.lock:
            self.writes.extend(f"pod {name} {c['type']}={c['status']}" for c in conditions)
            return {}

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        with self.lock:
            self.secret_reads.append((namespace, name, key))
            return self.secrets.get((namespace, name), {}).get(key)

    def owner(self) -> Manifest:
        with self.lock:
            return copy_of(self.objects[("LlamaDeployment", self.owner_name)])

    def children(self) -> list[Manifest]:
        with self.lock:
            return [copy_of(v) for k, v in self.objects.items() if k[0] != "LlamaDeployment"]


def owner_manifest(name: str = "chat", **spec: Any) -> Manifest:
    return {
        "apiVersion": "llamaops.io/v1alpha1",
        "kind": "LlamaDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"}, **spec},
    }
