"""Golden renderings: every example's `plan -o json` output is committed; a change shows as a diff.

Regenerate after an intended change with: UPDATE_GOLDEN=1 make test (then review the diff).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from llama_operator.operator_config import OperatorConfig
from llama_operator.plan_output import load_documents, plan_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"


def _plan(path: Path) -> dict[str, object]:
    config = OperatorConfig()
    (manifest,) = load_documents(path.read_text())
    return plan_manifest(manifest, config.default_inventory(), config).output


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_golden(example: Path) -> None:
    rendered = yaml.safe_dump(_plan(example), sort_keys=False)
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file for {example.name}; run UPDATE_GOLDEN=1 make test"
    assert rendered == golden.read_text(), f"{example.name} renders differently from {golden}; review and regenerate"


def test_examples_cover_every_engine_and_cpu() -> None:
    sizings = [_plan(p)["sizing"] for p in EXAMPLES]
    assert {s["engine"] for s in sizings} == {"vllm", "tgi", "llamacpp"}  # type: ignore[index]
    assert any(s["gpuClass"] is None and s["gpusPerReplica"] == 0 for s in sizings)  # type: ignore[index]
    assert all(s["fits"] for s in sizings)  # type: ignore[index]


def test_rendering_is_deterministic() -> None:
    for example in EXAMPLES:
        assert json.dumps(_plan(example)) == json.dumps(_plan(example))
