"""Reading the grid file: safe YAML, duplicate keys, and the line each key sits on.

PyYAML keeps the *last* of two equal keys without a word, so a family or a hyperparameter
written twice would silently vanish; here every duplicate is reported. The line map lets
error messages point at ``config/grid.yaml:23`` as well as at the key path.

Anchors and aliases are refused while composing, before anything follows them: nine levels
of ``&a [*b, *b, ...]`` fit in a few hundred bytes yet expand to 9**9 values. So is nesting
deeper than any grid needs, which would otherwise end in a RecursionError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from factory_tasks.core.config_types import Loc, short_name

#: Deepest nesting of YAML nodes a grid file may use; deeper input is refused, never recursed
#: into. A grid needs 6: the top-level mapping, ``families``, ``rf``, ``params``, ``max_depth``
#: and one of its values.
MAX_NESTING = 32


class UnsafeYamlError(ValueError):
    """YAML that is well-formed but refused in a grid file (aliases, anchors, deep nesting).

    ``line`` and ``column`` are 1-based; ``reason`` is a one-line explanation.
    """

    def __init__(self, line: int, column: int, reason: str):
        self.line, self.column, self.reason = line, column, reason
        super().__init__(f"line {line}, column {column}: {reason}")


class _GridLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases, anchors and deep nesting as it composes each node."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent) or event.anchor is not None:
            sigil = "*" if isinstance(event, AliasEvent) else "&"
            raise _refused(event.start_mark, f"YAML aliases/anchors are not allowed in a grid file "
                                             f"(found {sigil}{event.anchor}): write each value out in full")
        if self._depth >= MAX_NESTING:
            raise _refused(event.start_mark, f"nested more than {MAX_NESTING} levels deep "
                                             "(a grid file needs 6, down to families.NAME.params.KEY[i])")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refused(mark: Any, reason: str) -> UnsafeYamlError:
    return UnsafeYamlError(mark.line + 1, mark.column + 1, reason)


@dataclass(frozen=True)
class YamlDocument:
    """The parsed data plus where each key path starts (1-based lines)."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicate_keys: list[tuple[Loc, int, str]] = field(default_factory=list)  # (path, line, message)

    def line_of(self, loc: Loc) -> int | None:
        """Line of the deepest known prefix of ``loc`` (a value's key when the value has none)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None


def parse_yaml(text: str) -> YamlDocument:
    """``yaml.safe_load`` with a line map; raises ``yaml.YAMLError`` on bad syntax and
    :class:`UnsafeYamlError` on an alias, an anchor or nesting deeper than :data:`MAX_NESTING`."""
    loader = _GridLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    doc = YamlDocument(data)
    if node is not None:
        _index(node, (), doc)
    return doc


def _index(node: Node, loc: Loc, doc: YamlDocument) -> None:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, MappingNode):
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_seen:
                doc.duplicate_keys.append(
                    (loc + (key,), line, f"duplicate key {short_name(key)} (first written on line {first_seen[key]}); "
                     "YAML would keep only the last one")
                )
                continue
            first_seen[key] = line
            doc.lines[loc + (key,)] = line
            _index(value_node, loc + (key,), doc)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, loc + (i,), doc)


def describe_yaml_error(exc: yaml.YAMLError) -> tuple[int | None, int | None, str]:
    """(line, column, text) of a YAML syntax error, 1-based, for a one-line message."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context else problem
    if mark is None:
        return None, None, text
    return mark.line + 1, mark.column + 1, text
