"""LlamaDeployment + sizing decision -> the child manifests, as plain dicts. Pure and deterministic."""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_operator.adapters.rollout import ADAPTERS_ANNOTATION, GATE_CONDITION, adapter_key
from llama_operator.api.spec import GROUP, KIND, VERSION, Adapter, LlamaDeploymentSpec, canary_size
from llama_operator.autoscale.keda import (
    keda_wanted,
    render_scaled_object,
    render_trigger_authentication,
    trigger_auth_name,
)
from llama_operator.engines import render_engine_container
from llama_operator.engines.base import (
    DEFAULT_HUB_ENDPOINT,
    HTTP_PORT_NAME,
    EngineContainer,
    EngineImages,
    EngineInput,
    Manifest,
)
from llama_operator.engines.devices import CLAIM_TEMPLATE_KIND, DRA_API, pod_claims
from llama_operator.engines.pod import RESTRICTED_EXCEPTION_ANNOTATION, TERMINATION_GRACE_SECONDS
from llama_operator.engines.registry import engine as engine_named
from llama_operator.sizing.fit import SizingDecision
from llama_operator.sizing.gpu_classes import GPU_RESOURCE, LABEL_CLASS, LABEL_MEMORY_MIB

MANAGED_BY = "llama-operator"
LABEL_DEPLOYMENT = "llamaops.io/deployment"
LABEL_ENGINE = "llamaops.io/engine"
LWS_API = "leaderworkerset.x-k8s.io/v1"
INFERENCE_POOL_API = "inference.networking.k8s.io/v1"
INFERENCE_POOL_CRD = "inferencepools.inference.networking.k8s.io"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
RAY_PORT = 6379
SERVICE_PORT = 80


@dataclass(frozen=True)
class Owner:
    """The LlamaDeployment that owns the children (controller reference; garbage collection deletes them)."""

    name: str
    uid: str

    def reference(self) -> Manifest:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class RenderOptions:
    images: EngineImages = field(default_factory=EngineImages)
    service_monitor: bool = False  # only when the Prometheus Operator CRDs exist
    hub_endpoint: str = DEFAULT_HUB_ENDPOINT
    # Whether the cluster serves InferencePool v1: rendered when the spec asks and it does (`plan`, with no
    # cluster, renders what the spec asks).
    inference_pool_api: bool = True
    # How pods get GPUs when the spec does not say (the operator's deviceAllocation setting).
    device_allocation: str = "DevicePlugin"
    # autoscaling.mode: KEDA: whether the cluster serves ScaledObjects, and the Prometheus KEDA queries (the
    # caller's choice: the object's URL where the operator allows it, else the operator's). No URL: none.
    keda_api: bool = True
    prometheus_url: str | None = None


def selector_labels(name: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: name}


def common_labels(name: str, engine: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": engine,
        LABEL_DEPLOYMENT: name,
        LABEL_ENGINE: engine,
    }


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: Owner | None) -> Manifest:
    meta: Manifest = {"name": name, "namespace": namespace, "labels": dict(sorted(labels.items()))}
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def _class_affinity(decision: SizingDecision) -> list[Manifest]:
    """Node selector terms (ORed) that select the chosen class: by the operator label or the memory range."""
    chosen = decision.chosen
    if chosen is None:
        return []
    if chosen.gpu_class is None:
        return [{"matchExpressions": [{"key": LABEL_MEMORY_MIB, "operator": "DoesNotExist"}]}]
    gpu_class = chosen.gpu_class
    return [
        {"matchExpressions": [{"key": LABEL_CLASS, "operator": "In", "values": [gpu_class.name]}]},
        {
            "matchExpressions": [
                {"key": LABEL_CLASS, "operator": "DoesNotExist"},
                {"key": LABEL_MEMORY_MIB, "operator": "Gt", "values": [str(gpu_class.min_memory_mib - 1)]},
                {"key": LABEL_MEMORY_MIB, "operator": "Lt", "values": [str(gpu_class.max_memory_mib + 1)]},
            ]
        },
    ]


def merge_affinity(ours: list[Manifest], theirs: dict[str, Any]) -> Manifest:
    """AND our class terms with the user's required node terms; keep everything else of theirs."""
    affinity = copy.deepcopy(theirs)
    node = affinity.setdefault("nodeAffinity", {})
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    their_terms: list[Manifest] = required.get("nodeSelectorTerms", [])
    if their_terms:
        combined = [
            {"matchExpressions": [*o.get("matchExpressions", []), *t.get("matchExpressions", [])]}
            for o in ours
            for t in their_terms
        ]
    else:
        combined = ours
    if combined:
        node["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": combined}
    if not node:
        del affinity["nodeAffinity"]
    return affinity


def _tolerations(spec: LlamaDeploymentSpec, gpus: int) -> list[Manifest]:
    ours = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []
    return ours + [dict(t) for t in spec.scheduling.tolerations]


def pod_placement(inp: EngineInput) -> Manifest:
    """Where the serving pods go (the GPU class, the user's affinity, selector and tolerations) and how their
    images are pulled: the pod spec fields the model cache's download Job shares with them."""
    spec = inp.spec
    placed: Manifest = {}
    # Under DRA the claim's selectors pick the devices: no GPU Feature Discovery labels are needed.
    ours = [] if inp.dra else _class_affinity(inp.decision)
    affinity = merge_affinity(ours, spec.scheduling.affinity)
    if affinity:
        placed["affinity"] = affinity
    if spec.scheduling.node_selector:
        placed["nodeSelector"] = dict(sorted(spec.scheduling.node_selector.items()))
    tolerations = _tolerations(spec, inp.gpus_per_pod)
    if tolerations:
        placed["tolerations"] = tolerations
    if spec.image_pull_secrets:
        placed["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return placed


def _pod_spec(inp: EngineInput, engine: EngineContainer, container: Manifest) -> Manifest:
    pod: Manifest = {
        # The engines never call the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "containers": [container],
        "enableServiceLinks": False,
        "securityContext": engine.pod_security_context,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "volumes": engine.volumes,
    }
    if engine.init_containers:
        pod["initContainers"] = engine.init_containers
    if inp.dra:
        pod["resourceClaims"] = pod_claims(inp.claim_template)
    pod.update(pod_placement(inp))
    if inp.adapters:  # no traffic until the operator's smoke request passed with these adapters
        pod["readinessGates"] = [{"conditionType": GATE_CONDITION}]
    return pod


def _pod_template(inp: EngineInput, engine: EngineContainer, container: Manifest, labels: dict[str, str]) -> Manifest:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(engine.metrics_port),
        "prometheus.io/path": engine.metrics_path,
    }
    if inp.pod_adapters:  # runtime-loaded sets are reported per pod (a pod condition), not templated
        annotations[ADAPTERS_ANNOTATION] = adapter_key(inp.pod_adapters)
    if engine.restricted_exception is not None:  # meets `baseline`, not `restricted`: say why on every pod
        annotations[RESTRICTED_EXCEPTION_ANNOTATION] = engine.restricted_exception
    return {
        "metadata": {"labels": dict(sorted(labels.items())), "annotations": annotations},
        "spec": _pod_spec(inp, engine, container),
    }


def _max_surge(inp: EngineInput) -> int | str:
    """Canary: the first `canaryReplicas` new pods are the canary (they stay unready until verified)."""
    policy = inp.spec.adapter_rollout
    return "100%" if policy.strategy == "AllAtOnce" and inp.adapters else canary_size(policy, inp.spec.replicas)


def render_deployment(inp: EngineInput, engine: EngineContainer, namespace: str, owner: Owner | None) -> Manifest:
    labels = common_labels(inp.name, inp.decision.request.engine)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(inp.name, namespace, labels, owner),
        "spec": {
            "replicas": inp.spec.replicas,
            "selector": {"matchLabels": selector_labels(inp.name)},
            # A new pod must be Ready before an old one goes: capacity never dips during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": _max_surge(inp), "maxUnavailable": 0}},
            "progressDeadlineSeconds": 3600,
            "revisionHistoryLimit": 5,
            "template": _pod_template(inp, engine, engine.container, labels),
        },
    }


def _ray_leader(container: Manifest) -> Manifest:
    serve = shlex.join([*container["command"], *container["args"]])
    leader = {k: v for k, v in container.items() if k not in ("command", "args")}
    leader["command"] = ["/bin/sh", "-c", f"ray start --head --port={RAY_PORT} && exec {serve}"]
    leader["ports"] = [*container["ports"], {"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"}]
    return leader


def _ray_worker(container: Manifest) -> Manifest:
    worker = {k: v for k, v in container.items() if k not in ("command", "args") and not k.endswith("Probe")}
    worker["command"] = ["/bin/sh", "-c", f"exec ray start --address=$(LWS_LEADER_ADDRESS):{RAY_PORT} --block"]
    return worker


def render_leader_worker_set(
    inp: EngineInput, engine: EngineContainer, namespace: str, owner: Owner | None
) -> Manifest:
    """One replica spans several nodes: a Ray head with `vllm serve` on the leader, Ray workers beside it."""
    labels = common_labels(inp.name, inp.decision.request.engine)
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _metadata(inp.name, namespace, labels, owner),
        "spec": {
            "replicas": inp.spec.replicas,
            "startupPolicy": "LeaderReady",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "leaderWorkerTemplate": {
                "size": inp.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod_template(inp, engine, _ray_leader(engine.container), labels),
                "workerTemplate": _pod_template(inp, engine, _ray_worker(engine.container), labels),
            },
        },
    }


def render_service(inp: EngineInput, engine: EngineContainer, namespace: str, owner: Owner | None) -> Manifest:
    labels = common_labels(inp.name, inp.decision.request.engine)
    selector = serving_selector(inp)
    ports = [{"name": HTTP_PORT_NAME, "port": SERVICE_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inp.name, namespace, labels, owner),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    }


def serving_selector(inp: EngineInput) -> dict[str, str]:
    """The pods that serve the API: every replica's pod, or only the leaders of multi-node replicas."""
    selector = selector_labels(inp.name)
    if inp.nodes > 1:
        selector[LWS_WORKER_INDEX] = "0"
    return selector


def render_inference_pool(inp: EngineInput, engine: EngineContainer, namespace: str, owner: Owner | None) -> Manifest:
    """An InferencePool (Gateway API Inference Extension v1) over the pods the Service selects, on the
    engine's API port; base-model and adapter requests reach the same pods."""
    routing = inp.spec.routing.inference_pool
    spec: Manifest = {"selector": {"matchLabels": serving_selector(inp)}, "targetPorts": [{"number": engine.port}]}
    picker = routing.endpoint_picker_ref
    if picker is not None:
        ref: Manifest = {"name": picker.name, "kind": picker.kind, "group": picker.group,
                         "failureMode": picker.failure_mode}  # fmt: skip
        if picker.port is not None:
            ref["port"] = {"number": picker.port}
        spec["endpointPickerRef"] = ref
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": _metadata(inp.name, namespace, common_labels(inp.name, inp.decision.request.engine), owner),
        "spec": spec,
    }


def render_pdb(inp: EngineInput, namespace: str, owner: Owner | None) -> Manifest:
    labels = common_labels(inp.name, inp.decision.request.engine)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(inp.name, namespace, labels, owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(inp.name)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_service_monitor(inp: EngineInput, engine: EngineContainer, namespace: str, owner: Owner | None) -> Manifest:
    labels = common_labels(inp.name, inp.decision.request.engine)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(inp.name, namespace, labels, owner),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(inp.name), "app.kubernetes.io/managed-by": MANAGED_BY}},
            "endpoints": [{"port": HTTP_PORT_NAME, "path": engine.metrics_path, "interval": "15s"}],
            # The autoscaler's queries select pods by this label (as `llamaops_io_deployment`).
            "podTargetLabels": [LABEL_DEPLOYMENT],
        },
    }


def render_claim_template(inp: EngineInput, namespace: str, owner: Owner | None) -> Manifest:
    """The ResourceClaimTemplate each serving pod claims its GPUs from (placement.deviceAllocation: DRA)."""
    labels = common_labels(inp.name, inp.decision.request.engine)
    return {
        "apiVersion": DRA_API,
        "kind": CLAIM_TEMPLATE_KIND,
        "metadata": _metadata(inp.claim_template, namespace, labels, owner),
        "spec": {"spec": inp.claim_spec},
    }


def render_keda(inp: EngineInput, namespace: str, owner: Owner | None, prometheus_url: str) -> list[Manifest]:
    """The ScaledObject (and, with a Prometheus token, its TriggerAuthentication) of autoscaling.mode: KEDA."""
    labels = common_labels(inp.name, inp.decision.request.engine)
    engine = inp.decision.request.engine
    found = []
    auth = render_trigger_authentication(inp.spec, _metadata(trigger_auth_name(inp.name), namespace, labels, owner))
    if auth is not None:
        found.append(auth)
    found.append(render_scaled_object(inp.spec, engine, name=inp.name, namespace=namespace,
                                      metadata=_metadata(inp.name, namespace, labels, owner),
                                      prometheus_url=prometheus_url))  # fmt: skip
    return found


def service_endpoint(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local/v1"


def render(
    name: str,
    namespace: str,
    spec: LlamaDeploymentSpec,
    decision: SizingDecision,
    *,
    options: RenderOptions | None = None,
    owner: Owner | None = None,
    adapters: Sequence[Adapter] | None = None,
) -> list[Manifest]:
    """The children of one LlamaDeployment whose sizing fits. Same input, same output, byte for byte."""
    if decision.chosen is None:
        raise ValueError("render needs a fitting sizing decision")
    opts = options or RenderOptions()
    serving = tuple(spec.adapters if adapters is None else adapters)
    if engine_named(decision.request.engine).loads_at_runtime(spec.adapters):
        # The operator loads the set into running pods: the template carries what loading needs (LoRA on,
        # the readiness gate), never the set itself, so no set change, rollback or first rollout restarts a pod.
        serving = tuple(spec.adapters)
    inp = EngineInput(
        name=name, spec=spec, decision=decision, images=opts.images, adapters=serving, hub_endpoint=opts.hub_endpoint,
        device_allocation=spec.placement.device_allocation or opts.device_allocation,
    )  # fmt: skip
    engine = render_engine_container(inp)
    workload = (
        render_leader_worker_set(inp, engine, namespace, owner)
        if inp.nodes > 1
        else render_deployment(inp, engine, namespace, owner)
    )
    children = [workload, render_service(inp, engine, namespace, owner), render_pdb(inp, namespace, owner)]
    if inp.dra:
        children.insert(0, render_claim_template(inp, namespace, owner))  # the pods name it: it comes first
    if opts.service_monitor:
        children.append(render_service_monitor(inp, engine, namespace, owner))
    if spec.routing.inference_pool.enabled and opts.inference_pool_api:
        children.append(render_inference_pool(inp, engine, namespace, owner))
    if keda_wanted(spec) and opts.keda_api and opts.prometheus_url is not None:
        children += render_keda(inp, namespace, owner, opts.prometheus_url)
    return children
