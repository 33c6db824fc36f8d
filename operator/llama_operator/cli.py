"""`llama-operator run | plan | crds | dev`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from llama_operator.operator_config import OperatorConfig, load_config
from llama_operator.plan_output import (
    InvalidSpecError,
    PlanInputError,
    describe_yaml_error,
    format_results,
    inventory_from_node_documents,
    load_documents,
    plan_manifest,
)

EXIT_INVALID = 2
STDIN_NAME = "<stdin>"
# The local control plane is its own distribution; the operator never imports it.
DEV_MOVED = "the local dev cluster is not part of the operator: install llama-operator-dev and run llama-operator-dev"


def _read_text(path: str) -> tuple[str, str]:
    """(the name to show, the text) of a file, or of stdin for `-`; PlanInputError names the file."""
    if path == "-":
        return STDIN_NAME, sys.stdin.read()
    try:
        return path, Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PlanInputError(f"{path}: cannot read: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise PlanInputError(f"{path}: not a YAML text file (byte {error.start} is not UTF-8)") from error


def _plan_config(path: Path | None) -> OperatorConfig:
    """The operator settings file, checked whole before planning; PlanInputError names the file."""
    try:
        config = load_config(path)
        config.engine_images()
    except OSError as error:
        raise PlanInputError(f"{path}: cannot read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise PlanInputError(describe_yaml_error(str(path), error)) from error
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        raise PlanInputError(f"{path}: {problems}") from error
    except ValueError as error:
        raise PlanInputError(f"{path}: {error}") from error
    return config


def _cmd_plan(args: argparse.Namespace) -> int:
    try:
        config = _plan_config(args.config)
        source, text = _read_text(args.file)
        docs = load_documents(text, source)
        if args.nodes:
            nodes_source, nodes_text = _read_text(args.nodes)
            inventory = inventory_from_node_documents(load_documents(nodes_text, nodes_source), config)
            for reason in inventory.skipped_nodes:
                print(f"warning: {nodes_source}: {reason}; planning without this node", file=sys.stderr)
        else:
            inventory = config.default_inventory()
        if not docs:
            raise PlanInputError(f"{source} holds no manifests")
        try:
            results = [plan_manifest(doc, inventory, config) for doc in docs]
        except (InvalidSpecError, PlanInputError) as error:
            raise PlanInputError(f"{source}: {error}") from error
    except PlanInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    text = format_results(results, args.output)
    sys.stdout.write(text if text.endswith("\n") else f"{text}\n")  # YAML ends in a newline already
    return 0 if all(r.output["sizing"]["fits"] for r in results) else 1


def _cmd_crds(_: argparse.Namespace) -> int:
    from llama_operator.api.crd import crd_yaml  # noqa: PLC0415 - only this command needs the generator

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from llama_operator.operator_main import run_operator  # noqa: PLC0415 - keeps `plan` free of kopf imports

    return run_operator(
        config_path=args.config,
        namespaces=args.namespace,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def _cmd_dev(_: argparse.Namespace) -> int:
    print(f"error: {DEV_MOVED}", file=sys.stderr)
    return EXIT_INVALID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llama-operator", description=__doc__)
    parser.add_argument("--config", type=Path, help="operator settings YAML (GPU classes, costs, images)")
    commands = parser.add_subparsers(dest="command", required=True)

    plan = commands.add_parser("plan", help="print the sizing decision and rendered children; no cluster needed")
    plan.add_argument("-f", "--file", required=True, help="LlamaDeployment manifest(s), or - for stdin")
    plan.add_argument("--nodes", help="Node objects (kubectl get nodes -o yaml); default: the default classes")
    plan.add_argument("-o", "--output", choices=("json", "yaml", "table"), default="table")
    plan.set_defaults(func=_cmd_plan)

    crds = commands.add_parser("crds", help="print the generated CRD YAML")
    crds.set_defaults(func=_cmd_crds)

    run = commands.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    run.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="same as the global --config")
    run.add_argument("-n", "--namespace", action="append", default=[], help="watch only these namespaces")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    run.add_argument("--metrics-port", type=int, default=9090, help="port of the operator's /metrics (0: off)")
    run.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics endpoint binds")  # noqa: S104
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    run.add_argument("--log-format", choices=("text", "json"), default="text", help="json: one object per line")
    run.set_defaults(func=_cmd_run)
    dev = commands.add_parser("dev", help="moved: install llama-operator-dev and run llama-operator-dev")
    for option in ("--examples", "--workdir"):  # the options it had, so an old command line gets the hint
        dev.add_argument(option, help=argparse.SUPPRESS)
    dev.set_defaults(func=_cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
