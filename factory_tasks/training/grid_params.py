"""Hyperparameter checks of the grid, in scikit-learn's own terms.

* names against the estimator's constructor (close matches via difflib), refusing the ones
  the factory sets itself;
* each value against the estimator's parameter constraints (``_validate_params``), so
  ``C: "abc"``, ``max_depth: -1`` and ``n_estimators: 1.5`` fail with scikit-learn's message;
* a fit check: every grid point fitted once on a tiny synthetic sample, for combinations only
  ``fit`` rejects (``l1_ratio`` with the ``lbfgs`` solver, ``oob_score`` without bootstrap...).

Problems are ``(key path, message)`` pairs; the caller decides where the path starts.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

from factory_tasks.core.config_types import Problem, suggest
from factory_tasks.core.estimators import EstimatorEntry, get_estimator

SCALARS = (bool, int, float, str, type(None))

#: Constructor arguments the factory sets itself, whatever the estimator, and why.
FACTORY_SET_PARAMS: dict[str, str] = {
    "random_state": "from cv.random_state, so every experiment is reproducible",
    "verbose": "quiet, so job logs stay readable",
    "n_jobs": "parallelism follows the family's resources.cpu",
}


def show_value(value: Any) -> str:
    """A value as the scientist wrote it in YAML (null, true, "text", 1.5)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def check_params(value: Any, entry: EstimatorEntry | None) -> tuple[Any, list[Problem]]:
    """Normalise ``params`` (a bare scalar means a one-value list) and list every problem in it.

    ``entry`` is None when the estimator name is wrong; then only the shape is checked.
    """
    if value is None:
        return value, [((), "params must be a mapping of hyperparameter name to a list of values "
                             "(write `params: {}` to run the estimator's defaults once)")]
    if not isinstance(value, Mapping):
        return value, [((), f"params must be a mapping of hyperparameter name to a list of values (got {show_value(value)})")]
    problems: list[Problem] = []
    params: dict[str, list] = {}
    for name, values in value.items():
        if not isinstance(name, str):
            problems.append(((name,), "hyperparameter names must be text"))
            continue
        if isinstance(values, Mapping):
            problems.append(((name,), f"must be a list of values, not a mapping (got {show_value(values)})"))
            continue
        values = values if isinstance(values, list) else [values]
        params[name] = values
        name_problem = _check_param_name(name, entry) if entry is not None else None
        if name_problem:
            problems.append(((name,), name_problem))
            continue
        if not values:
            problems.append(((name,), "empty list: give at least one value (or remove the key to use the default)"))
        first_at: dict[tuple[type, Any], int] = {}  # (type, value) -> first index: 1, 1.0, true differ
        for i, item in enumerate(values):
            problem = _check_param_value(name, item, entry)
            if problem is None:
                first = first_at.setdefault((type(item), item), i)
                if first != i:
                    problem = f"duplicate value {show_value(item)} (already at {name}[{first}])"
            if problem:
                problems.append(((name, i), problem))
    return params, problems


def _check_param_name(name: str, entry: EstimatorEntry) -> str | None:
    estimator = entry.cls.__name__
    if name in FACTORY_SET_PARAMS or name == entry.thread_param:
        why = FACTORY_SET_PARAMS.get(name, FACTORY_SET_PARAMS["n_jobs"])
        return f"{name!r} is set by the factory ({why}); remove it from the grid"
    valid = entry.parameter_names() - set(FACTORY_SET_PARAMS) - {entry.thread_param}
    if name not in valid:
        return f"{name!r} is not a hyperparameter of {estimator}.{suggest(name, valid)}"
    default = entry.cls().get_params()[name]
    if isinstance(default, str) and default == "deprecated":
        return (f"{name!r} is deprecated in scikit-learn and will be removed; leave it out "
                "(see the estimator's documentation for its replacement)")
    return None


def _check_param_value(name: str, value: Any, entry: EstimatorEntry | None) -> str | None:
    if not isinstance(value, SCALARS):
        return (f"values must be single numbers, text, true/false or null (got {show_value(value)}); "
                "list each alternative as its own item")
    if isinstance(value, float) and not math.isfinite(value):
        return (f"{show_value(value)} is not allowed: the experiment spec travels as JSON, which has no "
                "infinity or NaN; use a large finite number (e.g. 1.0e6)")
    if entry is None:
        return None
    constraints = getattr(entry.cls, "_parameter_constraints", {}).get(name, [])
    if isinstance(value, bool) and constraints and not any(c in ("boolean", bool) for c in constraints):
        return f"{name} takes no true/false value (got {show_value(value)})"
    # imported here: most tasks that read a grid never check one, and scikit-learn takes a second
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        entry.cls(**{name: value})._validate_params()
    except InvalidParameterError as exc:
        return str(exc) + _numeric_text_hint(value)
    return None


def _numeric_text_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (" This is text that looks like a number: drop the quotes, and write exponents "
                "with a decimal point (1.0e-3, not 1e-3, which YAML reads as text).")
    return ""


_FIT_CHECK_ROWS, _FIT_CHECK_COLUMNS = 60, 30
_ITERATION_CAP = 3  # n_estimators / max_iter during the check: it tests compatibility, not quality
_DATA_SIZE_PARAMS = ("validation_fraction", "max_samples")  # ints here count rows of the real data


def fit_problems(families: Mapping[str, Any]) -> list[Problem]:
    """Fit every grid point once on a tiny synthetic sample; one problem per family and cause.

    ``families`` maps names to :class:`factory_tasks.training.grid.Family` (estimator, size, grid_points).
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = rng.normal(size=(_FIT_CHECK_ROWS, _FIT_CHECK_COLUMNS))
    y = np.arange(_FIT_CHECK_ROWS) % 2
    problems: list[Problem] = []
    for name, family in families.items():
        entry = get_estimator(family.estimator)
        failures: dict[str, list[dict]] = {}
        for params in family.grid_points():
            kwargs = _fit_check_kwargs(params, entry)
            # One thread: on a busy machine OpenMP start-up would cost more than these tiny fits.
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                try:
                    entry.cls(**kwargs).fit(X, y)
                except Exception as exc:  # noqa: BLE001 -- any failure is the grid's problem to report
                    failures.setdefault(f"{type(exc).__name__}: {exc}", []).append(params)
        for cause, failed in failures.items():
            problems.append((("families", name, "params"),
                             f"{len(failed)} of {family.size} combinations fail in {family.estimator}.fit, e.g. "
                             f"{json.dumps(failed[0], sort_keys=True)}: {cause}"))
    return problems


def _fit_check_kwargs(params: dict[str, Any], entry: EstimatorEntry) -> dict[str, Any]:
    kwargs = {k: v for k, v in params.items()
              if not (k in _DATA_SIZE_PARAMS and isinstance(v, int) and not isinstance(v, bool))}
    defaults = entry.cls().get_params()
    for iterations in ("n_estimators", "max_iter"):
        if iterations in defaults:
            value = kwargs.get(iterations, defaults[iterations])
            kwargs[iterations] = min(value, _ITERATION_CAP) if isinstance(value, int) else _ITERATION_CAP
    if entry.thread_param:
        kwargs[entry.thread_param] = 1
    return kwargs
