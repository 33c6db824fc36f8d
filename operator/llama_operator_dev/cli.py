"""`llama-operator-dev`: a local control plane with fake GPU pools, the operator and the examples (`make demo`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from llama_operator_dev.dev import run_dev


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-operator-dev",
        description="run a local control plane with fake GPU pools, the operator and the examples; Ctrl-C stops all",
    )
    parser.add_argument("--examples", type=Path, default=Path("manifests/examples"), help="LlamaDeployments to apply")
    parser.add_argument(
        "--workdir", type=Path, help="where certificates, logs and the kubeconfig go (default: a temp dir)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llama-operator-dev-"))
    return run_dev(workdir, args.examples, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
