"""`llama-operator-dev` (`make demo`) is the dev distribution's command; the operator's `dev` only says where it went."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama_operator.cli import main as operator_main
from llama_operator_dev.cli import build_parser


@pytest.mark.parametrize("args", [["dev"], ["dev", "--workdir", "/tmp/somewhere", "--examples", "x"]])
def test_the_operators_dev_command_names_the_dev_distribution(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert operator_main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "install llama-operator-dev and run llama-operator-dev" in err


def test_the_operator_cli_loads_no_dev_harness() -> None:
    code = "import sys, llama_operator.cli; print(sorted(m for m in sys.modules if m.startswith('llama_operator_dev')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_llama_operator_dev_takes_the_old_options() -> None:
    args = build_parser().parse_args(["--workdir", "/tmp/dev", "--examples", "manifests/examples"])
    assert (args.workdir, args.examples) == (Path("/tmp/dev"), Path("manifests/examples"))
    assert build_parser().parse_args([]).workdir is None
