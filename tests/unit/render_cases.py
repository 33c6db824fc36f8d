"""What the rendering tests share: the examples, the default inventory, and specs built from a base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llama_operator.api.parse import parse_spec
from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.operator_config import OperatorConfig
from llama_operator.planning import plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
INVENTORY = OperatorConfig().default_inventory()
LLAMA_8B = {"catalogName": "llama-3.1-8b", "source": "hf://meta-llama/Llama-3.1-8B-Instruct"}


def spec_from(base: dict[str, Any], **overrides: Any) -> LlamaDeploymentSpec:
    """``base`` with each top-level field overridden (mappings merged one level deep), parsed."""
    body: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in overrides.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_spec(body)


def example_specs(engine: str) -> dict[str, tuple[str, LlamaDeploymentSpec]]:
    """``example/<file stem>`` -> (name, spec) for every example whose plan picks ``engine``."""
    found = {}
    for path in EXAMPLES:
        manifest = yaml.safe_load(path.read_text())
        name, s = manifest["metadata"]["name"], parse_spec(manifest["spec"])
        if plan(s, name, INVENTORY).request.engine == engine:
            found[f"example/{path.stem}"] = (name, s)
    return found
