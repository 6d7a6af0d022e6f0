"""An append-only warehouse table of one contract: a column per field, a row per document.

Columns follow the contract's fields in order (``int`` → bigint, ``float`` → double, lists,
dicts and booleans as JSON text, the rest as string). Rows go through the same DB-API hook and
dialects as ``experiment_outcomes`` (SQLite or Hive; values bound, never pasted into SQL). A
row that does not parse against the contract is a :class:`ContractError` naming the table, the
row and the field — never silently skipped.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from factory_tasks.core.contracts import Contract, ContractError
from factory_tasks.warehouse.dialects import add_missing_columns, dialect_for
from factory_tasks.warehouse.sql import Column

C = TypeVar("C", bound=Contract)


def _base(annotation: Any) -> Any:
    """The type under an optional (``X | None``), its origin for generics, a Literal's value type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return typing.get_origin(annotation) or annotation


def _column_type(annotation: Any) -> str:
    kind = _base(annotation)
    return "bigint" if kind is int else "double" if kind is float else "string"


def _is_json(annotation: Any) -> bool:
    return _base(annotation) in (list, dict, bool)


class ContractTable(Generic[C]):
    """The table of ``model`` (its ``TABLE`` name unless given)."""

    def __init__(self, model: type[C], table: str | None = None):
        self.model = model
        self.table = table or model.TABLE
        fields = model.model_fields
        self.columns: tuple[Column, ...] = tuple(Column(n, _column_type(f.annotation)) for n, f in fields.items())
        self._json = {n for n, f in fields.items() if _is_json(f.annotation)}

    def ensure_schema(self, hook: Any) -> list[Column]:
        """Create the table if it is absent. A table written by an older version lacking columns
        of optional fields gains them (old rows read the field's default); one lacking a required
        field is an error naming it. Nothing is ever dropped. Returns the columns in the table's
        order (added columns come last), which positional inserts (Hive) must follow."""
        dialect_for(hook).create_table(hook, self.table, self.columns)
        optional = {name for name, f in self.model.model_fields.items() if not f.is_required()}
        columns, required = add_missing_columns(hook, self.table, self.columns, optional)
        if required:
            raise ContractError(f"table {self.table}", [
                f"created by an older Model Factory without the required column(s) {', '.join(required)}; "
                "on the embedded default `make clean` starts afresh"])
        return columns

    def append(self, hook: Any, document: C) -> None:
        self.append_all(hook, [document])

    def append_all(self, hook: Any, documents: Iterable[C]) -> None:
        """The documents as one append (on Hive one ``INSERT``: readers see all or none)."""
        records = [d.model_dump(mode="json") for d in documents]
        if not records:
            return
        columns = self.ensure_schema(hook)
        rows = [tuple(json.dumps(r[c.name]) if c.name in self._json else r[c.name] for c in columns) for r in records]
        dialect_for(hook).append_rows(hook, self.table, columns, rows)

    def read(self, hook: Any) -> tuple[list[C], list[ContractError]]:
        """Every row as a document (table order) and a ContractError per row that does not parse."""
        dialect = dialect_for(hook)
        if not dialect.table_exists(hook, self.table):
            return [], []
        existing = set(dialect.columns(hook, self.table))
        names = [c.name for c in self.columns if c.name in existing]  # an older table lacks new optional fields
        documents: list[C] = []
        problems: list[ContractError] = []
        for number, values in enumerate(dialect.select(hook, self.table, names), start=1):
            record = {n: v for n, v in zip(names, values) if v is not None}
            source = f"table {self.table} row {number}"
            try:
                for name in self._json & set(record):
                    record[name] = json.loads(record[name])
                documents.append(self.model.from_data(record, source))
            except json.JSONDecodeError as exc:
                problems.append(ContractError(source, [f"a JSON column is not valid JSON ({exc})"]))
            except ContractError as exc:
                problems.append(exc)
        return documents, problems

    def read_all(self, hook: Any) -> list[C]:
        """Every row; a table holding any invalid row is an error (nothing may act on half of it)."""
        documents, problems = self.read(hook)
        if problems:
            raise ContractError(f"table {self.table}", [f"{p.source}: {'; '.join(p.problems)}" for p in problems])
        return documents
