"""Text templates of the plan: `edge.{city}.example.net`, filled in from a probe's variables.

A field is a bare variable name; `{{` and `}}` are literal braces. Anything else (attributes, indexes,
format specs, conversions) is refused when the plan loads, so that filling a template can fail only on
a variable the probe's city does not define.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["TemplateSyntaxError", "MissingVariable", "template_fields", "fill", "fill_values"]

_VARIABLE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_formatter = string.Formatter()


class TemplateSyntaxError(ValueError):
    """A template that is not text with `{variable}` fields."""


class MissingVariable(KeyError):
    """A template names a variable the probe has no value for."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def template_fields(text: str) -> list[str]:
    """The variables `text` names, in order; raises TemplateSyntaxError."""
    fields = []
    try:
        parsed = list(_formatter.parse(text))
    except ValueError as error:
        raise TemplateSyntaxError(f"{error} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _VARIABLE.match(name) or spec or conversion:
            raise TemplateSyntaxError(f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                                      "is not a variable: write {name} with a lowercase name")  # fmt: skip
        fields.append(name)
    return fields


def fill(text: str, variables: Mapping[str, str]) -> str:
    """`text` with every field replaced; raises MissingVariable."""
    if "{" not in text and "}" not in text:
        return text
    parts = []
    for literal, name, _, _ in _formatter.parse(text):
        parts.append(literal)
        if name is not None:
            if name not in variables:
                raise MissingVariable(name)
            parts.append(variables[name])
    return "".join(parts)


def fill_values(value: Any, variables: Mapping[str, str]) -> Any:
    """`value` (settings from YAML: text, numbers, lists, mappings) with every text filled in."""
    if isinstance(value, str):
        return fill(value, variables)
    if isinstance(value, dict):
        return {key: fill_values(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_values(item, variables) for item in value]
    return value


def text_fields(value: Any) -> list[str]:
    """Every variable the texts in `value` name; raises TemplateSyntaxError."""
    if isinstance(value, str):
        return template_fields(value)
    if isinstance(value, dict):
        return [name for item in value.values() for name in text_fields(item)]
    if isinstance(value, list):
        return [name for item in value for name in text_fields(item)]
    return []
