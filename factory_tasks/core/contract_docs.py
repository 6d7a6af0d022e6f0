"""The contracts section of ``docs/architecture.md``, rendered from the models' JSON schema.

    python -m factory_tasks.core.contract_docs            # print the section
    python -m factory_tasks.core.contract_docs --write    # replace it in docs/architecture.md

A test checks that the document holds what this renders, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from factory_tasks.core.contracts import (
    Contract,
    ExperimentResult,
    ExperimentSpec,
    MonitoringAlert,
    Promotion,
    RollbackRequest,
    RunPlan,
)
from factory_tasks.core.settings import REPO_ROOT

BEGIN = "<!-- contracts:begin (python -m factory_tasks.core.contract_docs --write) -->"
END = "<!-- contracts:end -->"
DOC = REPO_ROOT / "docs" / "architecture.md"

#: each contract and where it lives
CONTRACTS: tuple[tuple[type[Contract], str], ...] = (
    (ExperimentSpec, f"the job run's environment variable `{ExperimentSpec.ENV}`"),
    (ExperimentResult, f"project file `{ExperimentResult.path_for('<experiment_id>')}`"),
    (RunPlan, f"project file `{RunPlan.path_for('<factory run>').rsplit('/', 2)[0]}/<factory run>/plan.json`"),
    (Promotion, f"warehouse table `{Promotion.TABLE}` (append-only)"),
    (RollbackRequest, f"warehouse table `{RollbackRequest.TABLE}` (append-only)"),
    (MonitoringAlert, f"warehouse table `{MonitoringAlert.TABLE}` (append-only)"),
)


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " \\| ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " \\| ".join(_type(s, defs) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type(schema.get('items', {}), defs)}]"
    if kind == "object" and "additionalProperties" in schema:
        return f"dict[str, {_type(schema['additionalProperties'], defs)}]"
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}.get(kind, kind)


def _fields(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | type | required |", "| --- | --- | --- |"]
    for name, prop in schema.get("properties", {}).items():
        rows.append(f"| `{name}` | {_type(prop, defs)} | {'yes' if name in required else ''} |")
    return rows


def render() -> str:
    lines = [BEGIN, ""]
    nested: dict[str, dict[str, Any]] = {}
    for model, where in CONTRACTS:
        schema = model.model_json_schema()
        defs = schema.get("$defs", {})
        nested.update(defs)
        doc = " ".join((model.__doc__ or "").split())
        lines += [f"#### `{model.__name__}` — {where}", "", doc, ""] + _fields(schema, defs) + [""]
    lines += ["#### Nested types", ""]
    for name in sorted(nested):
        lines += [f"`{name}`:", ""] + _fields(nested[name], nested) + [""]
    return "\n".join(lines + [END])


def current_section(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN): text.index(END) + len(END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory_tasks.core.contract_docs")
    parser.add_argument("--write", action="store_true", help=f"replace the section in {DOC}")
    args = parser.parse_args(argv)
    section = render()
    if not args.write:
        print(section)
        return 0
    text = DOC.read_text(encoding="utf-8")
    old = current_section(text)
    if old is None:
        print(f"{DOC} has no contracts section (markers {BEGIN!r} ... {END!r})", file=sys.stderr)
        return 2
    DOC.write_text(text.replace(old, section), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
