"""Load a YAML file into a typed Struct; every error names the file, the line, the field and the reason.

PyYAML builds the node tree (which knows lines); msgspec converts the plain data into the typed Struct
(which knows field paths such as `$.targets[2].kinds.icmp.count`); this module joins the two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from .errors import ConfigError
from .units import Duration, Size, parse_duration, parse_size

__all__ = ["YamlDocument", "load_struct", "decode_hook", "format_path"]

T = TypeVar("T")
PathPart = str | int

_AT_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def decode_hook(kind: type, value: object) -> object:
    """Turn readable config values into the project's custom types (durations, sizes)."""
    if kind is Duration:
        return parse_duration(value)
    if kind is Size:
        return parse_size(value)
    raise NotImplementedError(f"no conversion to {kind.__name__}")


def format_path(path: Sequence[PathPart]) -> str:
    """`targets[2].kinds.icmp` from ("targets", 2, "kinds", "icmp")."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# libyaml's parser where PyYAML was built with it: a probe's config of a thousand targets parses in a
# fraction of the time and of the peak memory (which a small box keeps: freed objects leave their arenas).
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """A safe loader that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (dict, list)):  # `{{}: x}`: not a key any config has; PyYAML would raise TypeError
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a name or a number, not a mapping or a list", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


class YamlDocument:
    """A parsed YAML file that can say on which line any field path sits."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        loader = _UniqueKeyLoader(text)
        try:
            # one parse: the node tree (which knows lines), then the data built from it
            self.root: yaml.Node | None = loader.get_single_node()
            self.data: Any = loader.construct_document(self.root) if self.root is not None else None
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError(file, f"not valid YAML: {error.problem or error}", line=line) from None
        except yaml.YAMLError as error:
            raise ConfigError(file, f"not valid YAML: {error}") from None
        finally:
            loader.dispose()

    @classmethod
    def of_data(cls, file: str, data: Any) -> YamlDocument:
        """A document for data that came without lines (JSON from the network): errors name `file` and
        the field, no line."""
        document = cls.__new__(cls)
        document.file, document.root, document.data = file, None, data
        return document

    def line_of(self, path: Sequence[PathPart]) -> int | None:
        """1-based line of the deepest node on `path` that exists (its key's line for mapping values)."""
        node, line = self.root, (self.root.start_mark.line + 1 if self.root is not None else None)
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        node, line = value_node, key_node.start_mark.line + 1
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, path: Sequence[PathPart], reason: str) -> ConfigError:
        """A ConfigError for the field at `path`."""
        return ConfigError(self.file, reason, field=format_path(path), line=self.line_of(path))

    def convert(self, data: Any, kind: type[T], path: Sequence[PathPart] = ()) -> T:
        """Convert `data` (found at `path`) into `kind`; a failure becomes a ConfigError with its line."""
        try:
            return msgspec.convert(data, kind, dec_hook=decode_hook, str_keys=True)
        except msgspec.ValidationError as error:
            raise self._validation_error(error, list(path)) from None

    def _validation_error(self, error: msgspec.ValidationError, base: list[PathPart]) -> ConfigError:
        match = _AT_PATH.match(str(error))
        assert match is not None  # the pattern matches any text
        reason, where = match["reason"], match["path"] or "$"
        path = base + [
            int(index) if index else name for name, index in _PATH_PART.findall(where[1:])
        ]
        if unknown := _UNKNOWN_FIELD.search(reason):
            path.append(unknown[1])
            reason = f"unknown key {unknown[1]!r}"
        elif missing := _MISSING_FIELD.search(reason):
            path.append(missing[1])
            reason = "missing required key"
        reason = reason.replace("Expected `", "expected `")
        return self.error(path, reason)


def load_struct(file: str | Path, kind: type[T]) -> tuple[T, YamlDocument]:
    """Read `file` and convert it into `kind`; raises ConfigError naming file, line, field and reason."""
    name = str(file)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(name, f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "not UTF-8 text") from None
    document = YamlDocument(name, text)
    if document.data is None:
        raise ConfigError(name, "empty file")
    if not isinstance(document.data, dict):
        raise ConfigError(name, "expected a mapping of keys at the top level", line=1)
    return document.convert(document.data, kind), document
