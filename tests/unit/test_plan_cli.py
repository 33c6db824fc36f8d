"""`llama-operator plan`: the JSON shape the issue promises, exit codes, and errors that say what to change."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llama_operator.cli import main
from tests.fixtures.alias_bomb import alias_bomb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GIB = 1024**3
SIZING_KEYS = {
    "fits", "engine", "gpuClass", "gpuMemoryBytes", "gpusPerReplica", "tensorParallel", "nodesPerReplica",
    "perGpuBytes", "contextLength", "maxConcurrentSequences", "engineArgs", "reason", "alternatives",
}  # fmt: skip


def run_plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith(("{", "[")) else out), err


def write(tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / "ld.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "llamaops.io/v1alpha1", "kind": "LlamaDeployment", **body}))
    return str(path)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_json_shape(capsys: pytest.CaptureFixture[str], example: Path) -> None:
    code, out, _ = run_plan(capsys, "-f", str(example), "-o", "json")
    assert code == 0
    assert set(out) >= {"sizing", "children"}
    sizing = out["sizing"]
    assert set(sizing) >= SIZING_KEYS
    assert set(sizing["perGpuBytes"]) == {"weights", "kvCache", "overhead", "total"}
    per = sizing["perGpuBytes"]
    assert per["total"] == per["weights"] + per["kvCache"] + per["overhead"]
    assert sizing["engine"] in {"vllm", "tgi", "llamacpp"}
    assert all(isinstance(a, str) for a in sizing["engineArgs"])
    assert out["children"], "a fitting plan renders children"
    if sizing["gpuClass"] is None:
        assert sizing["gpusPerReplica"] == 0


def test_8b_bf16_weights_about_15_gib(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_plan(capsys, "-f", str(ROOT / "manifests/examples/llama-3.1-8b-vllm-24gb.yaml"), "-o", "json")
    assert 14.5 < out["sizing"]["perGpuBytes"]["weights"] / GIB < 15.5
    assert out["sizing"]["gpuClass"] == "gpu-24gb"
    assert out["sizing"]["gpusPerReplica"] == 1


def test_8b_q4_k_m_about_4_6_gib(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = {
        "metadata": {"name": "q4"},
        "spec": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r/m.gguf", "format": "gguf",
                           "quantization": "q4_k_m"}, "placement": {"cpuOnly": True}},
    }  # fmt: skip
    _, out, _ = run_plan(capsys, "-f", write(tmp_path, body), "-o", "json")
    assert 4.4 < out["sizing"]["perGpuBytes"]["weights"] / GIB < 4.8


def test_70b_int4_is_about_38_gib_and_not_on_one_24gb_card(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = {
        "metadata": {"name": "big"},
        "spec": {
            "model": {"catalogName": "llama-3.1-70b", "source": "hf://o/r", "quantization": "awq"},
            "placement": {"gpuClass": "gpu-24gb", "gpuCount": 1},
        },
    }
    code, out, _ = run_plan(capsys, "-f", write(tmp_path, body), "-o", "json")
    assert code == 1
    sizing = out["sizing"]
    assert sizing["fits"] is False
    assert 37 < sizing["perGpuBytes"]["weights"] / GIB < 39
    assert out["children"] == []
    assert any("gpuClass/gpuCount auto" in a for a in sizing["alternatives"])


def test_405b_bf16_refused_on_one_node_with_alternatives(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = {"metadata": {"name": "huge"}, "spec": {"model": {"catalogName": "llama-3.1-405b", "source": "hf://o/r"}}}
    code, out, _ = run_plan(capsys, "-f", write(tmp_path, body), "-o", "json")
    assert code == 1
    alternatives = " ".join(out["sizing"]["alternatives"])
    assert "maxNodesPerReplica: 2" in alternatives
    assert "quantization: fp8" in alternatives
    assert "8 x h100-80gb" in out["sizing"]["reason"]


def test_scout_int4_on_one_h100(capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "manifests/examples/llama-4-scout-int4-h100-tools-lora.yaml"
    _, out, _ = run_plan(capsys, "-f", str(example), "-o", "json")
    assert out["sizing"]["gpuClass"] == "h100-80gb"
    assert out["sizing"]["gpusPerReplica"] == 1


def test_nodes_file_limits_the_classes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "l40s-1",
            "labels": {"nvidia.com/gpu.memory": "46068", "nvidia.com/gpu.product": "NVIDIA-L40S"},
        },
        "status": {"allocatable": {"nvidia.com/gpu": "2", "memory": "256Gi"}},
    }
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [node]}))
    body = {"metadata": {"name": "m"}, "spec": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}}}
    _, out, _ = run_plan(capsys, "-f", write(tmp_path, body), "--nodes", str(nodes), "-o", "json")
    assert out["sizing"]["gpuClass"] == "gpu-48gb"
    assert out["sizing"]["gpuMemoryBytes"] == 46068 * 1024**2


def test_nodes_file_with_an_unreadable_node_plans_on_the_others_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def node(name: str, memory_mib: str, gpus: str) -> dict[str, Any]:
        return {
            "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.memory": memory_mib}},
            "status": {"allocatable": {"nvidia.com/gpu": gpus, "memory": "256Gi"}},
        }

    nodes = tmp_path / "nodes.yaml"
    items = [node("l4-odd", "23034", "eight"), node("l40s-1", "46068", "1k")]
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    body = {"metadata": {"name": "m"}, "spec": {"model": {"catalogName": "llama-3.1-8b", "source": "hf://o/r"}}}
    code, out, err = run_plan(capsys, "-f", write(tmp_path, body), "--nodes", str(nodes), "-o", "json")
    assert code == 0
    assert out["sizing"]["gpuClass"] == "gpu-48gb"
    assert err.splitlines() == [
        f"warning: {nodes}: node l4-odd: allocatable nvidia.com/gpu 'eight' is not a Kubernetes quantity "
        "(a number with an optional suffix: Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent such as e3); "
        "planning without this node"
    ]


def test_invalid_spec_names_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = {"metadata": {"name": "bad"}, "spec": {"model": {"catalogName": "llama-3.1-8b", "source": "ftp://x"}}}
    code, _, err = run_plan(capsys, "-f", write(tmp_path, body), "-o", "json")
    assert code == 2
    assert "spec.model.source" in err


def test_wrong_kind_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}))
    code, _, err = run_plan(capsys, "-f", str(path))
    assert code == 2
    assert "expected kind LlamaDeployment" in err


def test_table_output_lists_every_example(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    combined = tmp_path / "all.yaml"
    combined.write_text("\n---\n".join(p.read_text() for p in EXAMPLES))
    code, out, _ = run_plan(capsys, "-f", str(combined), "-o", "table")
    assert code == 0
    for example in EXAMPLES:
        assert yaml.safe_load(example.read_text())["metadata"]["name"] in out


def assert_one_line_error(code: int, out: object, err: str, *names: str) -> None:
    """What a user sees for bad input: exit 2, nothing on stdout, one `error:` line naming what is wrong."""
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    for name in names:
        assert name in err, err


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("apiVersion: v1\nkind: [oops\n  metadata: {\n", "line 3, column 11"),
        ("apiVersion: v1\n\tkind: LlamaDeployment\n", "line 2, column 1"),
        ("kind: LlamaDeployment\nmetadata: {name: a\n", "line 3, column 1"),
        ("kind: LlamaDeployment\n---\nkind: x\n  y: z\n", "line 4, column 4"),
    ],
    ids=["flow-sequence", "tab-indent", "unclosed-mapping", "second-document"],
)
def test_malformed_yaml_is_one_line_naming_the_file_line_and_column(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    code, out, err = run_plan(capsys, "-f", str(path))
    assert_one_line_error(code, out, err, str(path), where)


def test_malformed_yaml_on_stdin_names_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("kind: [oops\n"))
    code, out, err = run_plan(capsys, "-f", "-")
    assert_one_line_error(code, out, err, "<stdin>", "line 2, column 1")


def test_malformed_nodes_file_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("items:\n- kind: Node\n  metadata: {name: [n1}\n")
    code, out, err = run_plan(capsys, "-f", str(EXAMPLES[0]), "--nodes", str(nodes))
    assert_one_line_error(code, out, err, str(nodes), "line 3")


def test_missing_file_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, err = run_plan(capsys, "-f", str(missing))
    assert_one_line_error(code, out, err, str(missing), "No such file")


def test_file_that_is_not_text_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe\x00")
    code, out, err = run_plan(capsys, "-f", str(path))
    assert_one_line_error(code, out, err, str(path))


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- a\n- b\n", "document 1 (line 1) is a list, expected a mapping"),
        ("just words\n", "document 1 (line 1) is a string, expected a mapping"),
        ("kind: LlamaDeployment\n---\n42\n", "document 2 (line 3) is a number, expected a mapping"),
        ("apiVersion: v1\nkind: List\nitems: [oops]\n", "items[0] is a string, expected a mapping"),
        ("apiVersion: v1\nkind: List\nitems: 7\n", "items is a number, expected a list of mappings"),
        (
            "apiVersion: llamaops.io/v1alpha1\nkind: LlamaDeployment\nmetadata: [x]\n",
            "metadata is a list, expected a mapping",
        ),
        (
            "apiVersion: llamaops.io/v1alpha1\nkind: LlamaDeployment\nmetadata: {name: x}\nspec: [model]\n",
            "spec is a list, expected a mapping",
        ),
    ],
    ids=["list", "scalar", "second-document", "list-item", "list-items", "metadata", "spec"],
)
def test_document_that_is_not_a_mapping_is_one_line_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, what: str
) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    code, out, err = run_plan(capsys, "-f", str(path))
    assert_one_line_error(code, out, err, str(path), what)


def test_invalid_config_file_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gpuClasses: [{name: x\n")
    code, out, err = run_plan_with_config(capsys, config, "-f", str(EXAMPLES[0]))
    assert_one_line_error(code, out, err, str(config), "line 2")
    config.write_text("images: {sglang: example/sglang:1}\n")
    code, out, err = run_plan_with_config(capsys, config, "-f", str(EXAMPLES[0]))
    assert_one_line_error(code, out, err, str(config), "sglang")


def run_plan_with_config(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any, str]:
    code = main(["--config", str(config), "plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("output", ["table", "json", "yaml"])
def test_alias_bomb_is_refused_at_once_naming_the_first_alias(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, output: str
) -> None:
    """It was planned (`-o table`: exit 0) and rendered into the pod template; `-o json` then spent minutes
    and gigabytes writing 387 million strings out."""
    path = tmp_path / "laughs.yaml"
    path.write_text(alias_bomb())  # 9 levels of 9 aliases: 387 million strings
    started = time.monotonic()
    code, out, err = run_plan(capsys, "-f", str(path), "-o", output)
    assert_one_line_error(code, out, err, str(path), "line 10, column 18", "YAML aliases (*l0) are not read")
    assert time.monotonic() - started < 5


def test_an_alias_in_the_nodes_or_config_file_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("items:\n- &node {kind: Node, metadata: {name: n1}}\n- *node\n")
    code, out, err = run_plan(capsys, "-f", str(EXAMPLES[0]), "--nodes", str(nodes))
    assert_one_line_error(code, out, err, str(nodes), "line 3, column 3", "YAML aliases (*node) are not read")
    config = tmp_path / "config.yaml"
    config.write_text("prometheusUrl: &p http://prometheus.monitoring:9090\nprometheusAllowedUrls: [*p]\n")
    code, out, err = run_plan_with_config(capsys, config, "-f", str(EXAMPLES[0]))
    assert_one_line_error(code, out, err, str(config), "line 2, column 25", "YAML aliases (*p) are not read")


def test_an_anchor_without_an_alias_is_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "anchored.yaml"
    path.write_text(EXAMPLES[0].read_text().replace("spec:", "spec: &spec", 1))
    code, out, _ = run_plan(capsys, "-f", str(path), "-o", "json")
    assert code == 0
    assert out["children"]


def test_plan_renders_the_claim_template_of_dra_from_the_spec_or_the_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`plan` (no cluster) shows every child the spec asks for: under DRA the ResourceClaimTemplate first."""
    manifest = yaml.safe_load((ROOT / "manifests/examples/llama-3.1-8b-vllm-24gb.yaml").read_text())
    _, plain, _ = run_plan(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert "ResourceClaimTemplate" not in [c["kind"] for c in plain["children"]]
    config = tmp_path / "config.yaml"
    config.write_text("deviceAllocation: DRA\n")
    assert main(["--config", str(config), "plan", "-f", write(tmp_path, manifest), "-o", "json"]) == 0
    by_default = json.loads(capsys.readouterr().out)
    assert [c["kind"] for c in by_default["children"]][:2] == ["ResourceClaimTemplate", "Deployment"]
    manifest["spec"]["placement"]["deviceAllocation"] = "DRA"
    _, by_spec, _ = run_plan(capsys, "-f", write(tmp_path, manifest), "-o", "json")
    assert by_spec["children"][0] == by_default["children"][0]
