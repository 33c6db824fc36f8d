"""Where a source lands in the pod: an admitted source stays inside its mount and names a real claim.

`pvc://../../etc` rendered `claimName: ..`, and `pvc://models/../../etc` put the model at
`/models/../../etc`. Here any source the spec admits, hostile characters included, is rendered and the
pod is checked: every claim is a PersistentVolumeClaim name, every subPath is relative and stays in its
claim, the path the engine loads and every download target lie inside their mount. Sources the spec
refuses are refused with the field's name.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import shlex
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan
from llama_operator.render import RenderOptions, render

INVENTORY = OperatorConfig().default_inventory()
PROPERTY = settings(max_examples=150, deadline=None)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
ARCHITECTURE = {
    "layers": 16,
    "hiddenSize": 2048,
    "attentionHeads": 32,
    "kvHeads": 8,
    "intermediateSize": 8192,
    "vocabSize": 128256,
    "maxContextLength": 131072,
    "parametersBillions": 1.24,
}
# Path pieces that have escaped a mount before, and characters a shell would act on.
PIECES = st.sampled_from(["a", "models", "b.gguf", "..x", "$(id)", "`id`", ";", "'", '"', "é", "A_B", "..", ".", ""])
paths = st.lists(PIECES, min_size=0, max_size=5).map("/".join)


def spec_with(model_source: str, model_format: str, adapter_sources: list[str]) -> LlamaDeploymentSpec:
    model: dict[str, Any] = {"architecture": ARCHITECTURE, "source": model_source, "format": model_format}
    if model_format == "gguf":
        model["quantization"] = "q4_k_m"
    adapters = [{"name": f"a{i}", "source": s, "version": "v1"} for i, s in enumerate(adapter_sources)]
    return parse_spec({"model": model, "adapters": adapters, "engine": {"type": "auto"}})


def rendered_pod(spec: LlamaDeploymentSpec) -> dict[str, Any]:
    decision = plan(spec, "demo", INVENTORY)
    assert decision.chosen is not None, decision.reason
    workload = render("demo", "ns", spec, decision, options=RenderOptions())[0]
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def engine_model_path(container: dict[str, Any]) -> str:
    args: list[str] = container["args"]
    for flag in ("--model", "--model-id"):
        if flag in args:
            return args[args.index(flag) + 1]
    return args[0]  # vllm serve MODEL


def inside(path: str, mount: str) -> bool:
    return posixpath.normpath(path) == path and (path == mount or path.startswith(mount + "/"))


def assert_stays_inside(pod: dict[str, Any]) -> None:
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    for claim in claims.values():
        assert len(claim) <= 253, claim
        assert DNS_SUBDOMAIN.fullmatch(claim), f"claimName {claim!r} is not a claim name"
    engine = pod["containers"][0]
    for mount in engine["volumeMounts"]:
        sub_path = mount.get("subPath")
        if sub_path is not None:
            segments = sub_path.split("/")
            assert not ({"", ".", ".."} & set(segments)), f"subPath {sub_path!r} leaves its claim"
    assert inside(engine_model_path(engine), "/models"), engine_model_path(engine)
    for init in pod.get("initContainers", []):
        script = init["command"][-1]
        lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        targets = [word for flag, word in itertools.pairwise(words) if flag in ("-o", "-p", "-C")]
        assert targets, script
        for target in targets:
            assert inside(target.removesuffix(".part"), "/models") or inside(target, "/adapters"), script


@pytest.mark.parametrize(
    ("model_source", "model_format", "adapter_sources"),
    [
        ("pvc://../../etc", "safetensors", []),
        ("pvc://models/../../etc", "safetensors", []),
        ("pvc://models//etc", "safetensors", []),
        ("pvc:///etc", "safetensors", []),
        ("hf://org/repo/..", "gguf", []),
        ("https://example.com/..", "gguf", []),
        ("pvc://models/llama", "safetensors", ["pvc://adapters/../../etc"]),
        ("pvc://models/llama", "safetensors", ["pvc://adapters//etc"]),
        ("pvc://models/llama", "safetensors", ["pvc://../adapters"]),
    ],
)
def test_a_source_that_escapes_its_mount_is_refused_naming_the_field(
    model_source: str, model_format: str, adapter_sources: list[str]
) -> None:
    with pytest.raises(InvalidSpecError) as refused:
        spec_with(model_source, model_format, adapter_sources)
    assert ("model.source" if not adapter_sources else "adapters[].source") in str(refused.value)


@PROPERTY
@given(
    scheme=st.sampled_from(["pvc", "hf", "s3", "https"]),
    path=paths,
    model_format=st.sampled_from(["safetensors", "gguf"]),
    adapter_scheme=st.sampled_from(["pvc", "s3", "https"]),
    adapter_path=paths,
)
@example(scheme="pvc", path="../../etc", model_format="safetensors", adapter_scheme="pvc", adapter_path="a")
@example(scheme="pvc", path="models/../../etc", model_format="safetensors", adapter_scheme="pvc", adapter_path="a")
@example(scheme="pvc", path="models/a", model_format="safetensors", adapter_scheme="pvc", adapter_path="a/../../..")
def test_a_source_is_refused_by_name_or_stays_inside_its_mount(
    scheme: str, path: str, model_format: str, adapter_scheme: str, adapter_path: str
) -> None:
    model_source = f"{scheme}://{path}"
    adapter_source = f"{adapter_scheme}://{adapter_path}"
    try:
        spec = spec_with(model_source, model_format, [adapter_source])
    except InvalidSpecError as error:
        refused = str(error)
    else:
        event("rendered")
        assert_stays_inside(rendered_pod(spec))
        return
    event("refused")
    assert "model.source" in refused or "adapters" in refused, refused
