"""Every pod the operator renders, checked against the Pod Security Standards.

``pod_security_violations`` is a small pure checker written from the Kubernetes Pod Security Standards
page (https://kubernetes.io/docs/concepts/security/pod-security-standards/): the `baseline` controls, and
the controls `restricted` adds. It looks at a pod template (metadata and spec) and returns one
``"<control>: <what>"`` line per violation, over containers, init containers and ephemeral containers.

It runs on every pod template of every example in ``manifests/examples/`` and of variants (adapters from
each source scheme, tensor parallel with /dev/shm, a LeaderWorkerSet leader and worker, tool calling, a
model on a claim): each meets `restricted`, except the engines that name their exception, which meet
`baseline`, fail `restricted` on exactly the controls they name, and say so in an annotation. Negative
cases show the checker refuses what it should; the real apiserver's admission is in
tests/integration/test_pod_security.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from llama_operator.api.parse import parse_spec
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.engines.pod import HOME_MOUNT, RESTRICTED_EXCEPTION_ANNOTATION, TMP_MOUNT
from llama_operator.model_cache import render_job
from llama_operator.planning import plan
from llama_operator.render import Owner, RenderOptions, render
from llama_operator_dev.process_pod_paths import (
    container_environment,
    container_mount_folders,
    container_path_map,
    map_pod_path,
    pod_volume_folders,
    process_environment,
    unbacked_volumes,
)
from tests.unit.render_cases import EXAMPLES, INVENTORY

Level = Literal["baseline", "restricted"]
Manifest = dict[str, Any]

# -- the standard ----------------------------------------------------------------------------------

BASELINE_CAPABILITIES = frozenset(
    {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
     "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
)  # fmt: skip
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset(
    {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
     "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
     "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
     "net.ipv4.tcp_keepalive_probes"}
)  # fmt: skip
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
CONFINED_SECCOMP = ("RuntimeDefault", "Localhost")


def all_containers(spec: Manifest) -> Iterator[Manifest]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _baseline(metadata: Manifest, spec: Manifest) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("hostProcess: the pod is a Windows HostProcess pod")
    out += [f"hostNamespaces: {key} is set" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    out += [f"hostPathVolumes: volume {v['name']} is a hostPath" for v in spec.get("volumes") or [] if "hostPath" in v]
    out += [
        f"sysctls: {s['name']} is not a safe sysctl"
        for s in pod_sc.get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]
    out += _profiles("pod", pod_sc)
    for name, value in (metadata.get("annotations") or {}).items():
        if name.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"appArmor: annotation {name} is {value!r}")
    for c in all_containers(spec):
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"hostProcess: {where} is a Windows HostProcess container")
        if sc.get("privileged"):
            out.append(f"privileged: {where} is privileged")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        out += [
            f"hostPorts: {where} binds host port {p['hostPort']}" for p in c.get("ports") or [] if p.get("hostPort")
        ]
        if sc.get("procMount", "Default") != "Default":
            out.append(f"procMount: {where} mounts /proc {sc['procMount']}")
        out += _profiles(where, sc)
    return out


def _profiles(where: str, sc: Manifest) -> list[str]:
    """AppArmor, SELinux and seccomp fields that `baseline` bounds, at pod or container level."""
    out: list[str] = []
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, *CONFINED_SECCOMP):
        out.append(f"appArmor: {where} runs {apparmor}")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        out.append(f"seLinux: {where} sets {selinux}")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append(f"seccomp: {where} runs Unconfined")
    return out


def _restricted(spec: Manifest) -> list[str]:
    out: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volumeTypes: volume {volume['name']} is {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        out.append("runAsUser: the pod runs as uid 0")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in CONFINED_SECCOMP
    for c in all_containers(spec):
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation: {where} does not set it to false")
        non_root = sc.get("runAsNonRoot", True if pod_non_root else None)
        if non_root is not True:
            out.append(f"runAsNonRoot: neither {where} nor the pod sets it to true")
        if sc.get("runAsUser") == 0:
            out.append(f"runAsUser: {where} runs as uid 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp not in CONFINED_SECCOMP and not (seccomp is None and pod_seccomp):
            out.append(f"seccompProfile: {where} is not RuntimeDefault or Localhost (nor is the pod)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"capabilities: {where} does not drop ALL")
        added = set(caps.get("add") or [])
        if added - RESTRICTED_CAPABILITIES:
            out.append(f"capabilities: {where} adds {sorted(added - RESTRICTED_CAPABILITIES)}")
    return out


def pod_security_violations(template: Manifest, level: Level) -> list[str]:
    """What keeps a pod template ({metadata, spec}) from meeting `level`; empty when it meets it."""
    metadata, spec = template.get("metadata") or {}, template["spec"]
    out = _baseline(metadata, spec)
    return out + _restricted(spec) if level == "restricted" else out


def controls(violations: list[str]) -> set[str]:
    return {v.split(":", 1)[0] for v in violations}


# -- what the operator renders ---------------------------------------------------------------------


def body(engine: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "engine": {"type": engine},
    }
    if engine == "llamacpp":
        spec["model"].update(source="hf://o/r/llama-3.1-8b.Q4_K_M.gguf", format="gguf", quantization="q4_k_m")
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def adapters(engine: str, scheme: str) -> list[dict[str, str]]:
    suffix = ".gguf" if engine == "llamacpp" else ""
    source = {
        "hf": f"hf://o/support{suffix}" if not suffix else "hf://o/support/support.gguf",
        "s3": f"s3://bucket/support{suffix}",
        "https": f"https://example.com/support{suffix or '.tar'}",
        "pvc": f"pvc://team-adapters/support{suffix}",
    }[scheme]
    return [{"name": "support", "source": source, "version": "v1"}]


VARIANTS: dict[str, dict[str, Any]] = {
    **{
        f"{engine}-adapters-{scheme}": body(engine, adapters=adapters(engine, scheme))
        for engine in ("vllm", "tgi", "llamacpp")
        for scheme in ("hf", "s3", "https", "pvc")
    },
    "vllm-tensor-parallel-dshm": body(
        "vllm",
        model={"catalogName": "llama-3.3-70b", "source": "hf://o/r", "quantization": "awq"},
        placement={"gpuClass": "gpu-48gb", "gpuCount": 4},
    ),
    "tgi-tensor-parallel-dshm": body(
        "tgi",
        model={"catalogName": "llama-3.1-70b", "quantization": "awq", "contextLength": 16384},
        placement={"gpuClass": "gpu-48gb", "gpuCount": 4},
    ),
    "vllm-multi-node": body("vllm", model={"catalogName": "llama-3.1-405b"}, placement={"maxNodesPerReplica": 2}),
    "vllm-tool-calling": body("vllm", serving={"toolCalling": True}, hubTokenSecretRef={"name": "hf-token"}),
    "llamacpp-tool-calling-cpu": body("llamacpp", serving={"toolCalling": True}, placement={"cpuOnly": True}),
    "llamacpp-gpu": body("llamacpp"),
    "vllm-model-from-pvc": body("vllm", model={"source": "pvc://models/llama-3.1-8b"}),
    "llamacpp-model-from-https": body(
        "llamacpp", model={"source": "https://example.com/m.gguf"}, placement={"cpuOnly": True}
    ),
    "vllm-model-from-s3": body("vllm", model={"source": "s3://bucket/llama-3.1-8b"}),
    # the model cache's download Job: curl for a GGUF file, the engine image's huggingface_hub for a checkpoint
    "llamacpp-model-cache": body(
        "llamacpp",
        model={
            "catalogName": "llama-3.2-3b",
            "source": "hf://o/r/m.gguf",
            "format": "gguf",
            "quantization": "q4_k_m",
            "cache": {},
        },
        placement={"cpuOnly": True},
    ),
    "vllm-model-cache": body("vllm", model={"source": "hf://o/r", "cache": {}}, hubTokenSecretRef={"name": "t"}),
    "tgi-model-cache": body("tgi", model={"source": "hf://o/r", "cache": {}}),
}


def pod_templates(name: str, spec: LlamaDeploymentSpec) -> dict[str, Manifest]:
    """{workload kind/template: pod template} of what the operator renders for `spec`."""
    decision = plan(spec, name, INVENTORY)
    assert decision.fits, decision.reason
    workload = render(name, "ns", spec, decision, options=RenderOptions(), owner=Owner(name, "uid-1"))[0]
    if spec.model.cache is not None:
        job = render_job(name, "ns", spec, decision, options=RenderOptions(), claim_uid="uid-2")
        return {f"{workload['kind']}/template": workload["spec"]["template"], "Job/template": job["spec"]["template"]}
    if workload["kind"] == "LeaderWorkerSet":
        lws = workload["spec"]["leaderWorkerTemplate"]
        return {"LeaderWorkerSet/leader": lws["leaderTemplate"], "LeaderWorkerSet/worker": lws["workerTemplate"]}
    return {f"{workload['kind']}/template": workload["spec"]["template"]}


def all_templates() -> dict[str, tuple[str, Manifest]]:
    """{case id: (engine, pod template)} for every example and variant."""
    cases: dict[str, tuple[str, Manifest]] = {}
    sources = [(f"example/{p.stem}", yaml.safe_load(p.read_text())) for p in EXAMPLES]
    sources += [(f"variant/{key}", {"metadata": {"name": "demo"}, "spec": s}) for key, s in VARIANTS.items()]
    for key, manifest in sources:
        spec = parse_spec(manifest["spec"])
        engine = plan(spec, manifest["metadata"]["name"], INVENTORY).request.engine
        for where, template in pod_templates(manifest["metadata"]["name"], spec).items():
            cases[f"{key}/{where}"] = (engine, template)
    return cases


TEMPLATES = all_templates()


def exception_of(engine: str) -> str | None:
    """The reason an engine gives for not meeting `restricted`, from a plain rendering of it."""
    _, template = next(t for t in TEMPLATES.values() if t[0] == engine)
    reason: str | None = template["metadata"]["annotations"].get(RESTRICTED_EXCEPTION_ANNOTATION)
    return reason


def test_the_cases_cover_what_the_brief_names() -> None:
    kinds = {key.rsplit("/", 2)[-2] for key in TEMPLATES}
    assert {"Deployment", "LeaderWorkerSet", "Job"} <= kinds
    specs = [t["spec"] for _, t in TEMPLATES.values()]
    assert any(v["name"] == "dshm" for s in specs for v in s["volumes"])
    assert any("persistentVolumeClaim" in v for s in specs for v in s["volumes"])
    images = {c["image"].split(":")[0] for s in specs for c in s.get("initContainers", [])}
    assert {"curlimages/curl", "amazon/aws-cli", "vllm/vllm-openai"} <= images
    assert {engine for engine, _ in TEMPLATES.values()} == {"vllm", "tgi", "llamacpp"}
    assert len([key for key in TEMPLATES if key.startswith("example/")]) == len(EXAMPLES)


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_every_pod_meets_restricted_or_names_its_exception(key: str) -> None:
    engine, template = TEMPLATES[key]
    reason = template["metadata"]["annotations"].get(RESTRICTED_EXCEPTION_ANNOTATION)
    assert pod_security_violations(template, "baseline") == []
    violations = pod_security_violations(template, "restricted")
    if reason is None:
        assert violations == [], "\n".join(violations)
        return
    # The one exception the operator makes: the engine's image cannot run as non-root. Nothing else gives.
    assert engine == "tgi", f"{engine} names an exception to `restricted`: {reason}"
    assert controls(violations) == {"runAsNonRoot"}, "\n".join(violations)
    assert template["spec"]["securityContext"]["runAsNonRoot"] is False  # explicit, not left to the image


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_the_engine_writes_only_to_volumes_where_its_root_filesystem_is_read_only(key: str) -> None:
    engine, template = TEMPLATES[key]
    spec = template["spec"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert spec["automountServiceAccountToken"] is False
    for c in all_containers(spec):
        read_only = c["securityContext"]["readOnlyRootFilesystem"]
        if c["name"] == "engine" and exception_of(engine) is not None:
            assert read_only is False  # the image's own HOME under /root: documented with the exception
            continue
        assert read_only is True, c["name"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert mounts.get(env["HOME"]) in empty_dirs, f"{c['name']}: HOME {env['HOME']} is not a writable volume"
        assert mounts.get(TMP_MOUNT) in empty_dirs, f"{c['name']}: /tmp is not a writable volume"
        if "HF_HOME" in env:
            assert env["HF_HOME"].startswith(HOME_MOUNT + "/")


def test_the_pods_run_as_a_fixed_non_root_identity() -> None:
    for engine, template in TEMPLATES.values():
        sc = template["spec"]["securityContext"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        if exception_of(engine) is None:
            assert sc["runAsNonRoot"] is True
            assert sc["runAsUser"] > 0
            assert sc["runAsGroup"] > 0
            assert sc["fsGroup"] == sc["runAsGroup"]


def test_only_tgi_needs_an_exception_and_it_says_why() -> None:
    assert exception_of("vllm") is None
    assert exception_of("llamacpp") is None
    reason = exception_of("tgi")
    assert reason is not None
    assert "/root" in reason


@pytest.mark.parametrize(
    "key", ["example/llama-3.2-3b-gguf-cpu/Deployment/template", "example/llama-3.1-8b-vllm-24gb/Deployment/template"]
)
def test_the_process_backed_kubelet_gives_home_and_tmp_the_pods_own_folders(key: str) -> None:
    """The dev harness runs these pods as local processes (securityContext means nothing there): HOME and
    HF_HOME are mounted emptyDirs, so its path rules point them into the pod's folder, as /tmp."""
    _, template = TEMPLATES[key]
    spec = template["spec"]
    pod_dir = Path("/pods/p1")
    folders = pod_volume_folders(spec, pod_dir)
    assert unbacked_volumes(spec, {}, folders) == []
    for c in all_containers(spec):
        path_map = container_path_map({}, container_mount_folders(c, folders))
        env, unresolved = container_environment(c)
        process_env = process_environment({"HOME": str(pod_dir)}, {}, env, path_map)
        assert process_env["HOME"] == str(pod_dir / "volumes" / "home"), c["name"]
        assert process_env.get("HF_HOME", str(pod_dir / "volumes" / "home")).startswith(process_env["HOME"])
        assert map_pod_path(TMP_MOUNT + "/x", path_map) == str(pod_dir / "volumes" / "tmp" / "x")
        assert set(unresolved) <= {"HF_TOKEN"}  # a Secret: the harness cannot resolve it, as before


# -- the checker refuses what it should ----------------------------------------------------------


def compliant() -> Manifest:
    _, template = TEMPLATES["example/llama-4-scout-int4-h100-tools-lora/Deployment/template"]
    return copy.deepcopy(template)


def engine_sc(t: Manifest) -> Manifest:
    sc: Manifest = t["spec"]["containers"][0]["securityContext"]
    return sc


def init_sc(t: Manifest) -> Manifest:
    sc: Manifest = t["spec"]["initContainers"][0]["securityContext"]
    return sc


MUTATIONS: dict[str, tuple[Callable[[Manifest], object], str, Level]] = {
    "root pod": (
        lambda t: t["spec"]["securityContext"].update(runAsUser=0, runAsNonRoot=False), "runAsNonRoot", "restricted"
    ),
    "root uid with runAsNonRoot unset": (
        lambda t: [t["spec"]["securityContext"].pop("runAsNonRoot"), t["spec"]["securityContext"].update(runAsUser=0)],
        "runAsUser", "restricted",
    ),
    "an init container as root": (lambda t: init_sc(t).update(runAsUser=0), "runAsUser", "restricted"),
    "privilege escalation left to the default": (
        lambda t: engine_sc(t).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation", "restricted"
    ),
    "capabilities not dropped": (lambda t: engine_sc(t).pop("capabilities"), "capabilities", "restricted"),
    "a baseline capability added": (
        lambda t: engine_sc(t)["capabilities"].update(add=["CHOWN"]), "capabilities", "restricted"
    ),
    "SYS_ADMIN added": (lambda t: engine_sc(t)["capabilities"].update(add=["SYS_ADMIN"]), "capabilities", "baseline"),
    "seccomp unset": (lambda t: t["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile", "restricted"),
    "seccomp unconfined in a container": (
        lambda t: init_sc(t).update(seccompProfile={"type": "Unconfined"}), "seccomp", "baseline"
    ),
    "privileged": (lambda t: engine_sc(t).update(privileged=True), "privileged", "baseline"),
    "host network": (lambda t: t["spec"].update(hostNetwork=True), "hostNamespaces", "baseline"),
    "host PID": (lambda t: t["spec"].update(hostPID=True), "hostNamespaces", "baseline"),
    "hostPath volume": (
        lambda t: t["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPathVolumes",
        "baseline",
    ),
    "host port": (
        lambda t: t["spec"]["containers"][0]["ports"][0].update(hostPort=8000), "hostPorts", "baseline"
    ),
    "a gitRepo volume": (
        lambda t: t["spec"]["volumes"].append({"name": "g", "gitRepo": {"repository": "x"}}), "volumeTypes",
        "restricted",
    ),
    "an unsafe sysctl": (
        lambda t: t["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctls",
        "baseline",
    ),
    "an unconfined AppArmor annotation": (
        lambda t: t["metadata"]["annotations"].update({APPARMOR_ANNOTATION + "engine": "unconfined"}), "appArmor",
        "baseline",
    ),
    "an SELinux user": (
        lambda t: engine_sc(t).update(seLinuxOptions={"user": "system_u"}), "seLinux", "baseline"
    ),
}  # fmt: skip


def test_the_checker_passes_the_unmutated_pod() -> None:
    assert pod_security_violations(compliant(), "restricted") == []


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_the_checker_refuses(case: str) -> None:
    mutate, control, level = MUTATIONS[case]
    template = compliant()
    mutate(template)
    assert control in controls(pod_security_violations(template, "restricted"))
    assert (control in controls(pod_security_violations(template, "baseline"))) is (level == "baseline")


def test_net_bind_service_is_the_one_capability_restricted_allows() -> None:
    template = compliant()
    engine_sc(template)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert pod_security_violations(template, "restricted") == []


def test_a_container_may_leave_what_the_pod_sets_but_not_contradict_it() -> None:
    template = compliant()
    engine_sc(template)["runAsNonRoot"] = False
    assert controls(pod_security_violations(template, "restricted")) == {"runAsNonRoot"}
    template = compliant()
    template["spec"]["securityContext"].pop("runAsNonRoot")
    for c in all_containers(template["spec"]):
        c["securityContext"]["runAsNonRoot"] = True
    assert pod_security_violations(template, "restricted") == []
