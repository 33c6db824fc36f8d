"""`llama-operator plan`: size and render LlamaDeployment manifests without a cluster."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from llama_operator.api.parse import InvalidSpecError, parse_spec
from llama_operator.api.spec import GROUP, KIND
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import placement_summary, plan, sizing_status
from llama_operator.render import RenderOptions, render
from llama_operator.sizing.gpu_classes import GIB, Inventory, inventory_from_nodes, node_facts_from_manifest
from llama_operator.yaml_input import AliasRefusedError, LoaderWithoutAliases

Manifest = dict[str, Any]


class PlanInputError(ValueError):
    """The input is not LlamaDeployment manifests (or Node objects); the message says what was found, and where."""


@dataclass(frozen=True)
class PlanResult:
    name: str
    namespace: str
    output: Manifest  # {"sizing": {...}, "children": [...]}
    placement: str


def describe_yaml_error(source: str, error: yaml.YAMLError) -> str:
    """One line: the source, where YAML found the problem (line, column, counted from 1), and the problem."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = error.problem or "unreadable"
        context = f" ({error.context})" if error.context else ""
        invalid = "" if isinstance(error, AliasRefusedError) else "not valid YAML: "
        return " ".join(f"{source}: {where}{invalid}{problem}{context}".split())
    return " ".join(f"{source}: not valid YAML: {error}".split())


def _described(value: object) -> str:
    """What a YAML value is, in YAML's words: 'a list', 'a string', ..."""
    if value is None:
        return "empty"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _documents_with_lines(text: str, source: str) -> list[tuple[int, object]]:
    """Each YAML document with the line it starts on; a YAML error (or an alias) names the source, line and
    column."""
    loader = LoaderWithoutAliases(text)
    documents: list[tuple[int, object]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                documents.append((node.start_mark.line + 1, loader.construct_document(node)))
    except yaml.YAMLError as error:
        raise PlanInputError(describe_yaml_error(source, error)) from error
    finally:
        loader.dispose()
    return documents


def load_documents(text: str, source: str = "<input>") -> list[Manifest]:
    """The objects of a YAML stream, with `kind: *List` documents unpacked into their items.

    PlanInputError names `source` (a file name) and where in it the YAML or its shape is wrong.
    """
    items: list[Manifest] = []
    for number, (line, doc) in enumerate(_documents_with_lines(text, source), start=1):
        where = f"{source}: document {number} (line {line})"
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise PlanInputError(f"{where} is {_described(doc)}, expected a mapping (a Kubernetes object)")
        if not str(doc.get("kind", "")).endswith("List"):
            items.append(doc)
            continue
        listed = doc.get("items") or []
        if not isinstance(listed, list):
            raise PlanInputError(f"{where}: items is {_described(listed)}, expected a list of mappings")
        for index, item in enumerate(listed):
            if not isinstance(item, dict):
                raise PlanInputError(f"{where}: items[{index}] is {_described(item)}, expected a mapping")
            items.append(item)
    return items


def _mapping_field(manifest: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = manifest.get(name) or {}
    if not isinstance(value, Mapping):
        raise PlanInputError(f"{name} is {_described(value)}, expected a mapping")
    return value


def inventory_from_node_documents(docs: Iterable[Manifest], config: OperatorConfig) -> Inventory:
    nodes = [node_facts_from_manifest(d) for d in docs if d.get("kind") == "Node"]
    if not nodes:
        raise PlanInputError("the --nodes file holds no Node objects (use `kubectl get nodes -o yaml`)")
    return inventory_from_nodes(nodes, config.class_list(), config.cpu_cost_per_replica)


def plan_manifest(manifest: Mapping[str, Any], inventory: Inventory, config: OperatorConfig) -> PlanResult:
    api_version = str(manifest.get("apiVersion", ""))
    if manifest.get("kind") != KIND or not api_version.startswith(f"{GROUP}/"):
        raise PlanInputError(
            f"expected kind {KIND} ({GROUP}/v1alpha1), found {manifest.get('kind')} ({api_version or 'no apiVersion'})"
        )
    metadata = _mapping_field(manifest, "metadata")
    name = str(metadata.get("name") or "")
    if not name:
        raise PlanInputError("metadata.name is required")
    namespace = str(metadata.get("namespace") or "default")
    spec = parse_spec(_mapping_field(manifest, "spec"))
    decision = plan(spec, name, inventory)
    children = (
        render(
            name,
            namespace,
            spec,
            decision,
            options=RenderOptions(
                images=config.engine_images(),
                hub_endpoint=config.hub_endpoint,
                device_allocation=config.device_allocation,
                # KEDA's Prometheus as the operator would choose it (its allow-list is checked in the cluster).
                prometheus_url=spec.autoscaling.prometheus_url or config.prometheus_url,
            ),
        )
        if decision.fits
        else []
    )
    sizing = sizing_status(decision).model_dump(by_alias=True, mode="json")
    if decision.chosen or decision.closest:
        shown = decision.chosen or decision.closest
        assert shown is not None
        sizing["budgetBytes"] = shown.memory.budget
        sizing["overheadParts"] = dict(sorted(shown.memory.overhead_parts.items()))
    return PlanResult(name, namespace, {"sizing": sizing, "children": children}, placement_summary(decision))


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def format_table(results: list[PlanResult]) -> str:
    header = ("NAME", "ENGINE", "FITS", "PLACEMENT", "WEIGHTS", "KV", "OVERHEAD", "TOTAL/BUDGET GiB")
    rows = [header]
    notes: list[str] = []
    for r in results:
        s = r.output["sizing"]
        per = s.get("perGpuBytes") or {}
        budget = s.get("budgetBytes")
        rows.append(
            (
                r.name,
                s["engine"],
                "yes" if s["fits"] else "NO",
                r.placement,
                _gib(per.get("weights")),
                _gib(per.get("kvCache")),
                _gib(per.get("overhead")),
                f"{_gib(per.get('total'))}/{_gib(budget)}",
            )
        )
        notes.append(f"{r.name}: {s['reason']}")
        notes.extend(f"  - {a}" for a in s["alternatives"])
        if s["engineArgs"]:
            notes.append("  args: " + " ".join(s["engineArgs"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, "", *notes])


def format_results(results: list[PlanResult], output: str) -> str:
    if output == "table":
        return format_table(results)
    payload: Any = results[0].output if len(results) == 1 else [r.output for r in results]
    if output == "yaml":
        return yaml.safe_dump(payload, sort_keys=False)
    return json.dumps(payload, indent=2)


__all__ = [
    "InvalidSpecError",
    "PlanInputError",
    "PlanResult",
    "describe_yaml_error",
    "format_results",
    "load_documents",
    "plan_manifest",
]
