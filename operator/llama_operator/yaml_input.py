"""YAML that a user hands the operator (manifests and Node lists for `plan`, the settings file), read without
aliases.

A YAML alias (`*name`) repeats the value its anchor (`&name`) marks. Nine levels of nine aliases ("billion
laughs") fit in a screen of text and stand for 387 million strings: PyYAML builds them as shared objects,
cheaply, but whatever walks them afterwards (validation, `json.dumps`, a hash of the pod template) walks every
one. A Kubernetes manifest never needs an alias, so the first one is refused, naming its line and column,
before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml


class AliasRefusedError(yaml.MarkedYAMLError):
    """The text holds a YAML alias; `problem` says so and what to write instead."""


def alias_problem(anchor: str) -> str:
    return (
        f"YAML aliases (*{anchor}) are not read: write the value out in full "
        "(an alias repeats a value, and a few of them can stand for billions)"
    )


class LoaderWithoutAliases(yaml.SafeLoader):
    """PyYAML's safe loader, refusing the first alias it meets."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.current_event  # the event check_event peeked at
            mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
            raise AliasRefusedError(problem=alias_problem(event.anchor or ""), problem_mark=mark)
        return super().compose_node(parent, index)


def safe_load(text: str) -> Any:
    """`yaml.safe_load` of one document, refusing aliases (AliasRefusedError, a yaml.YAMLError)."""
    loader = LoaderWithoutAliases(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
