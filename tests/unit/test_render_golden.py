"""Golden renderings: `llama-operator plan -f EXAMPLE -o yaml` for every example is committed; a change shows as a diff.

Each example is planned in two fresh interpreters with different hash seeds (set and dict-of-set
orders change with PYTHONHASHSEED), and both outputs must equal the committed file byte for byte.
Regenerate after an intended change with: UPDATE_GOLDEN=1 make golden (then review the diff).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
HASH_SEEDS = ("0", "4242")
PLAN_TIMEOUT_SECONDS = 120

# Runs the CLI's entry point for each example in one interpreter, saving stdout per example.
PLAN_EACH = """
import contextlib, io, sys
from pathlib import Path
from llama_operator.cli import main

out_dir = Path(sys.argv[1])
for example in sys.argv[2:]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["plan", "-f", example, "-o", "yaml"])
    if code not in (0, 1):
        sys.exit(f"plan -f {example} exited {code}")
    (out_dir / Path(example).name).write_text(stdout.getvalue())
"""


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """{hash seed: {example file name: what `plan -o yaml` printed}}, from one fresh interpreter per seed."""
    outputs: dict[str, dict[str, str]] = {}
    for seed in HASH_SEEDS:
        out_dir = tmp_path_factory.mktemp(f"plan-seed-{seed}")
        subprocess.run(
            [sys.executable, "-c", PLAN_EACH, str(out_dir), *map(str, EXAMPLES)],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            timeout=PLAN_TIMEOUT_SECONDS,
        )
        outputs[seed] = {example.name: (out_dir / example.name).read_text() for example in EXAMPLES}
    return outputs


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_plan_output_does_not_depend_on_the_hash_seed(renders: dict[str, dict[str, str]], example: Path) -> None:
    first, second = HASH_SEEDS
    assert renders[first][example.name] == renders[second][example.name], (
        f"`plan -f {example.name}` prints differently under PYTHONHASHSEED={first} and {second}: "
        "something iterates a set or an unsorted dict"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_plan_output_matches_golden(renders: dict[str, dict[str, str]], example: Path) -> None:
    golden = GOLDEN / example.name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(renders[HASH_SEEDS[0]][example.name])
    assert golden.exists(), f"no golden file for {example.name}; run UPDATE_GOLDEN=1 make golden"
    for seed in HASH_SEEDS:
        assert renders[seed][example.name] == golden.read_text(), (
            f"`plan -f {example.name} -o yaml` (PYTHONHASHSEED={seed}) differs from {golden}; review and regenerate"
        )


def test_examples_cover_every_engine_and_cpu(renders: dict[str, dict[str, str]]) -> None:
    sizings = [yaml.safe_load(text)["sizing"] for text in renders[HASH_SEEDS[0]].values()]
    assert {s["engine"] for s in sizings} == {"vllm", "tgi", "llamacpp"}
    assert any(s["gpuClass"] is None and s["gpusPerReplica"] == 0 for s in sizings)
    assert all(s["fits"] for s in sizings)
