"""Parse a LlamaDeployment spec and status once, at the edge, into typed models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from llama_operator.api.spec import LlamaDeploymentSpec
from llama_operator.api.status import Condition, LlamaDeploymentStatus


class InvalidSpecError(ValueError):
    """The spec cannot be served as written; the message names each bad field and what to change."""


# Pydantic's type errors, in the apiserver's words ("spec.replicas in body must be of type integer"), so that a
# string where a number goes reads the same from `kubectl apply` and from the operator.
OPENAPI_TYPES = {
    "int_type": "integer",
    "float_type": "number",
    "bool_type": "boolean",
    "string_type": "string",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
}
JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}


def field_path(loc: tuple[int | str, ...]) -> str:
    """`spec.engine.env[0].value`: the dotted path with list indexes in brackets, as the apiserver writes it."""
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        expected = OPENAPI_TYPES.get(item["type"])
        if expected is None:
            problems.append(f"{field_path(item['loc'])}: {item['msg']}")
            continue
        found = JSON_TYPES.get(type(item["input"]), "null" if item["input"] is None else type(item["input"]).__name__)
        problems.append(f"{field_path(item['loc'])}: must be of type {expected}, not {found}")
    return "; ".join(problems)


def parse_spec(spec: Mapping[str, Any]) -> LlamaDeploymentSpec:
    try:
        return LlamaDeploymentSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise InvalidSpecError(describe_validation_error(error)) from error


def parse_status(status: Mapping[str, Any]) -> LlamaDeploymentStatus:
    """The status the object carries, typed. A field we cannot read (hand-edited, or written by another
    version) is dropped, so the next write replaces it; a condition we cannot read is dropped alone."""
    raw = dict(status)
    raw["conditions"] = [c for c in raw.get("conditions") or [] if _readable(Condition, c)]
    known = LlamaDeploymentStatus.model_fields
    aliases = {info.alias or name: name for name, info in known.items()}
    kept = {key: value for key, value in raw.items() if key in aliases and _readable_field(key, value)}
    return LlamaDeploymentStatus.model_validate(kept)


def _readable(model: type[BaseModel], value: object) -> bool:
    try:
        model.model_validate(value)
    except ValidationError:
        return False
    return True


def _readable_field(alias: str, value: object) -> bool:
    try:
        LlamaDeploymentStatus.model_validate({alias: value})
    except ValidationError:
        return False
    return True
