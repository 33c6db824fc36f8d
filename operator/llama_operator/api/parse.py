"""Parse a LlamaDeployment spec once, at the edge, into typed models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from llama_operator.api.spec import LlamaDeploymentSpec


class InvalidSpecError(ValueError):
    """The spec cannot be served as written; the message names each bad field and what to change."""


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "spec"
        problems.append(f"spec.{path}: {item['msg']}")
    return "; ".join(problems)


def parse_spec(spec: Mapping[str, Any]) -> LlamaDeploymentSpec:
    try:
        return LlamaDeploymentSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise InvalidSpecError(describe_validation_error(error)) from error
