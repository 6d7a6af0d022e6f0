"""The experiment grid: what data scientists edit in ``config/grid.yaml``.

* :func:`load_grid` reads and validates the whole file (pydantic models plus scikit-learn's own
  parameter constraints) and raises one :class:`GridError` listing *every* problem, each with
  the file, line, key path and what is wrong. Nothing is submitted before this passes.
* :func:`expand_grid` turns a valid config plus a data snapshot into one
  :class:`~factory_tasks.core.contracts.ExperimentSpec` per grid point (the cartesian product of each family's value lists),
  with stable experiment ids, heaviest families first.
* :func:`grid_hash` is a stable hash of the validated config.

Command line::

    python -m factory_tasks.training.grid validate config/grid.yaml   # exit 0, or 2 with every problem
    python -m factory_tasks.training.grid expand config/grid.yaml     # specs as JSON lines
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from factory_tasks.core.config_types import (
    Economics,
    EstimatorName,
    Loc,
    MetricName,
    ParamValue,
    Problem,
    Resources,
    StrictModel,
    raise_problems,
    validate_collecting,
)
from factory_tasks.core.estimators import ESTIMATORS, get_estimator
from factory_tasks.core.limits import MAX_PARALLEL
from factory_tasks.core.schema import DEFAULT_INTERACTIONS_TABLE, TRAINING_TABLE
from factory_tasks.training.grid_params import SCALARS, check_params, fit_problems, show_value
from factory_tasks.training.grid_yaml import UnsafeYamlError, YamlDocument, describe_yaml_error, parse_yaml

if TYPE_CHECKING:
    from factory_tasks.core.contracts import ExperimentSpec

DEFAULT_METRICS: tuple[str, ...] = ("roc_auc", "log_loss", "average_precision", "accuracy", "policy_value",
                                    "policy_uplift")
DEFAULT_RANKING_METRIC = "roc_auc"
DEFAULT_TABLE = TRAINING_TABLE
MAX_CV_FOLDS = 20
#: Largest grid file read (a real grid is a few KB): bigger files are refused before parsing.
MAX_GRID_FILE_BYTES = 1024 * 1024
#: Placeholder snapshot for ``expand`` on the command line (the DAG passes the real one).
PLACEHOLDER_SNAPSHOT = {"path": "snapshots/placeholder.parquet", "hash": "placeholder"}

# --------------------------------------------------------------------------------------------
# Error plumbing: several problems per validator, each with its own key path.


class GridError(ValueError):
    """An invalid grid file. ``problems`` lists every problem, each naming file, key and issue."""

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = str(source)
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(
            f"invalid grid config {self.source} ({count}):\n" + "\n".join(f"  {p}" for p in self.problems)
        )


def _canonical_json(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(payload: Any) -> str:
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Config models (what config/grid.yaml holds)


def _table_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", name):
        raise PydanticCustomError(
            "grid", "must be a table name like historical_customer_interactions or db.table "
            "(ASCII letters, digits and _)"
        )
    return name


def _family_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise PydanticCustomError("grid", f"family name {name!r} may use only ASCII letters, digits, _ and -")
    return name


FamilyName = Annotated[str, AfterValidator(_family_name)]


class CVConfig(StrictModel):
    """Stratified k-fold cross-validation shared by every experiment."""

    folds: int = Field(5, ge=2, le=MAX_CV_FOLDS)
    random_state: int = Field(42, ge=0, le=2**32 - 1)


class DataConfig(StrictModel):
    """Where the training rows come from: the snapshot step reads ``table`` (the randomized
    history) and, when a factory run includes interactions, ``interactions_table`` too."""

    table: Annotated[str, AfterValidator(_table_name)] = DEFAULT_TABLE
    interactions_table: Annotated[str, AfterValidator(_table_name)] = DEFAULT_INTERACTIONS_TABLE

    @model_validator(mode="after")
    def _two_tables(self) -> "DataConfig":
        if self.interactions_table.lower() == self.table.lower():
            raise PydanticCustomError(
                "grid", "interactions_table must differ from table (its rows would be counted twice)")
        return self


class Family(StrictModel):
    """One estimator with value lists; its grid points are the cartesian product of the lists."""

    estimator: EstimatorName
    resources: Resources
    params: dict[str, list[ParamValue]]

    @model_validator(mode="before")
    @classmethod
    def _not_empty_and_default_resources(cls, data: Any) -> Any:
        if data is None or data == {}:
            raise PydanticCustomError("grid", "family is empty: give it an estimator and params")
        if isinstance(data, Mapping) and "resources" not in data:
            # The registry's profile for this estimator (a placeholder while the name is wrong:
            # that is reported once, on `estimator`).
            entry = ESTIMATORS.get(data.get("estimator")) if isinstance(data.get("estimator"), str) else None
            data = {**data, "resources": {"cpu": entry.cpu if entry else 1.0,
                                          "memory_gb": entry.memory_gb if entry else 1.0}}
        return data

    @field_validator("params", mode="before")
    @classmethod
    def _check_params(cls, value: Any, info: ValidationInfo) -> Any:
        entry = get_estimator(info.data["estimator"]) if "estimator" in info.data else None
        params, problems = check_params(value, entry)
        raise_problems(problems)
        return params

    @property
    def size(self) -> int:
        """Number of grid points (experiments) of this family."""
        return math.prod(len(values) for values in self.params.values())

    def grid_points(self) -> Iterator[dict[str, Any]]:
        """Parameter dicts in a fixed order: keys as written, last key varying fastest."""
        names = list(self.params)
        for combo in itertools.product(*(self.params[n] for n in names)):
            yield dict(zip(names, combo))


class GridConfig(StrictModel):
    """The whole ``config/grid.yaml``. Build it with :func:`load_grid`."""

    cv: CVConfig = CVConfig()
    metrics: Annotated[list[MetricName], Field(min_length=1)] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    ranking_metric: MetricName = DEFAULT_RANKING_METRIC
    max_parallel: int = Field(4, ge=1, le=MAX_PARALLEL)
    max_experiments: int = Field(200, ge=1)
    economics: Economics
    data: DataConfig = DataConfig()
    families: dict[FamilyName, Family]

    @property
    def size(self) -> int:
        """Number of experiments the grid expands to."""
        return sum(f.size for f in self.families.values())

    def submission_order(self) -> list[tuple[str, Family]]:
        """Families heaviest first: CPU request, then the estimator's cost hint, then name.

        Submitting the longest jobs first packs them onto the workspace's cores with the least
        idle tail (longest-processing-time-first scheduling).
        """
        return sorted(self.families.items(), key=lambda item: (
            -item[1].resources.cpu, -get_estimator(item[1].estimator).relative_cost, item[0]))

    @field_validator("metrics", mode="wrap")
    @classmethod
    def _no_duplicate_metrics(cls, metrics: Any, handler: Callable[[Any], Any]) -> list[str]:
        problems: list[Problem] = []
        if isinstance(metrics, list):
            problems = [((i,), f"duplicate metric {m!r} (already at metrics[{metrics.index(m)}])")
                        for i, m in enumerate(metrics) if metrics.index(m) != i]
        return validate_collecting(handler, metrics, problems)

    @field_validator("ranking_metric")
    @classmethod
    def _rankable(cls, name: str, info: ValidationInfo) -> str:
        if name == "accuracy":
            raise PydanticCustomError(
                "grid", "accuracy cannot rank these models: about 85% of rows do not convert, so "
                "always predicting 'no conversion' scores ~0.85. Rank by roc_auc, log_loss, "
                "average_precision, brier_score, policy_value or policy_uplift")
        metrics = info.data.get("metrics")
        if metrics is not None and name not in metrics:
            raise PydanticCustomError("grid", f"ranking metric {name!r} is not among metrics "
                                              f"({', '.join(metrics)}): add it there or pick one of those")
        return name

    @field_validator("families", mode="before")
    @classmethod
    def _some_families_within_the_cap(cls, value: Any, info: ValidationInfo) -> Any:
        """At least one family, and no more experiments than ``max_experiments``.

        The cap is checked on the raw mapping, before any value is validated or fitted, so an
        oversized grid is refused at once instead of after checking each of its values.
        """
        if value is None or value == {}:
            raise PydanticCustomError("grid", "no families: define at least one classifier family")
        cap = info.data.get("max_experiments")
        if cap is not None and isinstance(value, Mapping):
            sizes = {name: _raw_family_size(family) for name, family in value.items()}
            total = sum(sizes.values())
            if total > cap:
                listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
                raise PydanticCustomError(
                    "grid", f"the grid has {total} experiments ({listed}), more than max_experiments "
                            f"({cap}): shorten value lists, or raise max_experiments if you mean it")
        return value

    @field_validator("families")
    @classmethod
    def _distinct(cls, families: dict[str, Family]) -> dict[str, Family]:
        problems: list[Problem] = []
        owner: dict[str, str] = {}  # (estimator, params) -> first family producing it
        for name, family in families.items():
            for params in family.grid_points():
                key = _canonical_json([family.estimator, params])
                if owner.setdefault(key, name) != name:
                    problems.append(((name,), f"repeats an experiment of family {owner[key]!r} "
                                              f"({family.estimator} with {_canonical_json(params)}); "
                                              "each grid point must appear once"))
                    break
        raise_problems(problems)
        return families


def _raw_family_size(family: Any) -> int:
    """Experiments a family as written (not yet validated) expands to: the product of its list
    lengths, a bare scalar counting as one value. Malformed parts count as one (they are
    reported by validation); nothing is expanded."""
    params = family.get("params") if isinstance(family, Mapping) else None
    if not isinstance(params, Mapping):
        return 1
    return math.prod(len(values) if isinstance(values, list) else 1 for values in params.values())


# --------------------------------------------------------------------------------------------
# Loading


def load_grid(path: str | Path, *, check_fit: bool = True) -> GridConfig:
    """Read and validate a grid file; raise :class:`GridError` with every problem found.

    ``check_fit`` also fits each grid point once on a tiny synthetic sample (a few ms each),
    catching combinations scikit-learn only rejects in ``fit`` (e.g. ``l1_ratio`` with the
    ``lbfgs`` solver).
    """
    source = str(path)
    text = _read_grid_text(path, source)
    try:
        doc = parse_yaml(text)
    except UnsafeYamlError as exc:
        raise GridError(source, [f"{source}:{exc.line}:{exc.column}: {exc.reason}"]) from None
    except yaml.YAMLError as exc:
        line, column, what = describe_yaml_error(exc)
        where = f"{source}:{line}:{column}" if line else source
        raise GridError(source, [f"{where}: YAML syntax error: {what}"]) from None
    if doc.data is None:
        raise GridError(source, [f"{source}: the file is empty; it needs at least economics and families"])
    not_a_grid = not_this_kind_of_file(doc.data, GridConfig.model_fields, "grid")
    if not_a_grid:
        raise GridError(source, [f"{source}:1: {not_a_grid}"])
    problems = [_format(source, doc, loc, msg, line=line) for loc, line, msg in doc.duplicate_keys]
    try:
        config = GridConfig.model_validate(doc.data)
    except ValidationError as exc:
        problems += [_format(source, doc, e["loc"], _describe(e)) for e in exc.errors()]
        raise GridError(source, _in_file_order(problems)) from None
    if check_fit and not problems:
        problems += [_format(source, doc, loc, msg) for loc, msg in fit_problems(config.families)]
    if problems:
        raise GridError(source, _in_file_order(problems))
    return config


def _read_grid_text(path: str | Path, source: str) -> str:
    """The file's text, refusing files over :data:`MAX_GRID_FILE_BYTES` without reading them whole."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_GRID_FILE_BYTES + 1)
            if len(data) > MAX_GRID_FILE_BYTES:
                size = os.fstat(handle.fileno()).st_size
                what = f"{size:,} bytes" if size > MAX_GRID_FILE_BYTES else f"more than {MAX_GRID_FILE_BYTES:,} bytes"
                raise GridError(source, [
                    f"{source}: the file is {what}, over the {MAX_GRID_FILE_BYTES:,}-byte "
                    f"({MAX_GRID_FILE_BYTES // 1024 // 1024} MiB) limit for a grid file; a grid is a few KB: "
                    "list a few values per hyperparameter, not thousands"])
        return data.decode("utf-8")
    except FileNotFoundError:
        raise GridError(source, [f"{source}: file not found (looked at {Path(path).resolve()})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(source, [f"{source}: cannot read the file: {exc}"]) from None


def not_this_kind_of_file(data: Any, settings: Mapping[str, Any], kind: str) -> str | None:
    """Why ``data`` is not a ``kind`` file at all (None when it may be one): not a mapping, or
    none of its top-level keys is one of ``settings``. The file's content is never quoted: it may
    be any file the worker can read, a password file included."""
    expected = ", ".join(settings)
    if not isinstance(data, dict):
        return (f"not a {kind} file: the top level must be a mapping of settings ({expected}), "
                f"got a {type(data).__name__}")
    if not any(isinstance(key, str) and key in settings for key in data):
        return f"not a {kind} file: none of its top-level keys is a {kind} setting ({expected})"
    return None


def _in_file_order(problems: list[tuple[int, str]]) -> list[str]:
    return [text for _, text in sorted(problems, key=lambda p: p[0])]


def _describe(error: Mapping[str, Any]) -> str:
    """A pydantic error in the scientist's words, with the offending value where useful."""
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "grid":
        return msg
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys to values (got {show_value(value)})"
    if kind == "list_type":
        return f"must be a list (got {show_value(value)})"
    if isinstance(value, SCALARS):
        return f"{msg} (got {show_value(value)})"
    return msg


def _format(source: str, doc: YamlDocument, loc: Loc, message: str, line: int | None = None) -> tuple[int, str]:
    """(line, "file:line: key.path: message"); the line sorts problems into file order."""
    loc = tuple(part for part in loc if part != "[key]")  # pydantic's marker for a bad dict key
    line = line or doc.line_of(loc)
    where = f"{source}:{line}" if line else source
    return line or 0, (f"{where}: {key_path(loc)}: {message}" if loc else f"{where}: {message}")


def key_path(loc: Loc) -> str:
    """``("families", "rf", "params", "max_depth", 2)`` -> ``families.rf.params.max_depth[2]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(part)):
            text += f".{part}" if text else str(part)
        else:
            name = str(part) if len(str(part)) <= 40 else str(part)[:40] + "..."  # a stray line, not a key
            text += f"[{json.dumps(name, ensure_ascii=False)}]"
    return text


# --------------------------------------------------------------------------------------------
# Expansion into experiment specs


def expand_grid(config: GridConfig, data_snapshot: Mapping[str, str]) -> list[ExperimentSpec]:
    """One spec per grid point, heaviest families first (:meth:`GridConfig.submission_order`).

    Within a family, points follow the file's order (the last key varies fastest).
    """
    from factory_tasks.core.contracts import DataSnapshot, ExperimentSpec, compute_experiment_id

    snapshot = DataSnapshot.model_validate(dict(data_snapshot))
    specs = []
    for name, family in config.submission_order():
        for params in family.grid_points():
            specs.append(ExperimentSpec(
                experiment_id=compute_experiment_id(
                    estimator=family.estimator,
                    params=params,
                    cv_folds=config.cv.folds,
                    metrics=config.metrics,
                    random_state=config.cv.random_state,
                    economics=config.economics,
                    data_snapshot_hash=snapshot.hash,
                ),
                family=name,
                estimator=family.estimator,
                params=params,
                cv_folds=config.cv.folds,
                metrics=list(config.metrics),
                ranking_metric=config.ranking_metric,
                resources=family.resources,
                economics=config.economics,
                random_state=config.cv.random_state,
                data_snapshot=snapshot,
            ))
    return specs


def grid_hash(config: GridConfig) -> str:
    """16 hex chars over the validated config (defaults filled in; comments and key order ignored)."""
    return _sha256(config.model_dump(mode="json"))[:16]


# --------------------------------------------------------------------------------------------
# Command line


def summary(config: GridConfig) -> str:
    """Experiments per family (submission order), total, and the parallelism cap."""
    rows = [("family", "estimator", "cpu", "memory_gb", "experiments")]
    for name, family in config.submission_order():
        rows.append((name, family.estimator, f"{family.resources.cpu:g}", f"{family.resources.memory_gb:g}",
                     str(family.size)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.append(f"  total {config.size} experiments (max_experiments {config.max_experiments}), "
                 f"at most {config.max_parallel} in flight at once (max_parallel)")
    lines.append(f"  {config.cv.folds}-fold CV, random_state {config.cv.random_state}; "
                 f"ranked by {config.ranking_metric}; metrics {', '.join(config.metrics)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory_tasks.training.grid", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a grid file and summarise it (exit 2 if invalid)")
    validate.add_argument("path")
    expand = commands.add_parser("expand", help="print the experiment specs as JSON lines")
    expand.add_argument("path")
    expand.add_argument("--data-path", default=PLACEHOLDER_SNAPSHOT["path"], help="snapshot path (placeholder)")
    expand.add_argument("--data-hash", default=PLACEHOLDER_SNAPSHOT["hash"], help="snapshot hash (placeholder)")
    args = parser.parse_args(argv)
    try:
        config = load_grid(args.path)
    except GridError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "validate":
        print(f"{args.path}: valid (grid hash {grid_hash(config)})\n{summary(config)}")
    else:
        for spec in expand_grid(config, {"path": args.data_path, "hash": args.data_hash}):
            print(spec.model_dump_json())
    return 0


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: the contracts embed the grid's
    # types, and two copies of a class never validate as one
    from factory_tasks.training.grid import main as imported_main

    sys.exit(imported_main())
