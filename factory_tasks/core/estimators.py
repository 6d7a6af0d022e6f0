"""Allow-list of classifiers a grid may name. Nothing outside this registry can be built.

The registry names its classes by import path, imported on first use: reading the allow-list
(names, resources, costs) costs no scikit-learn import, which takes most of a second.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import cache


@cache
def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class EstimatorEntry:
    """A classifier the factory may build.

    ``thread_param`` names the constructor argument that controls its parallelism (set from
    the run's CPU request), or None where threads follow OMP/BLAS limits alone.
    ``needs_scaling`` says whether numeric features should be standardized first.
    ``needs_interactions`` adds pairwise feature products, so a linear model can express
    offer x segment effects that trees find on their own.
    ``cpu`` and ``memory_gb`` are the default resource request of a grid family using it (a
    family's ``resources`` overrides them); ``relative_cost`` is a rough hint of fit time per
    experiment relative to logistic regression, used to submit the heaviest experiments first.
    """

    #: the class, or its ``module.Name`` path
    estimator: type | str
    thread_param: str | None = None
    needs_scaling: bool = False
    needs_interactions: bool = False
    cpu: float = 1.0
    memory_gb: float = 2.0
    relative_cost: float = 1.0

    @property
    def cls(self) -> type:
        return _import_class(self.estimator) if isinstance(self.estimator, str) else self.estimator

    def parameter_names(self) -> set[str]:
        return set(inspect.signature(self.cls.__init__).parameters) - {"self"}


# Resource defaults: HistGradientBoosting parallelises over OpenMP threads and RandomForest over
# trees (n_jobs), so both get two cores; GradientBoosting is single-threaded but slow; the
# forest keeps every tree in memory.
ESTIMATORS: dict[str, EstimatorEntry] = {
    "LogisticRegression": EstimatorEntry(
        "sklearn.linear_model.LogisticRegression", needs_scaling=True, needs_interactions=True, cpu=1.0,
        memory_gb=1.0, relative_cost=1.0,
    ),
    "HistGradientBoostingClassifier": EstimatorEntry(
        "sklearn.ensemble.HistGradientBoostingClassifier", cpu=2.0, memory_gb=2.0, relative_cost=3.0
    ),
    "GradientBoostingClassifier": EstimatorEntry(
        "sklearn.ensemble.GradientBoostingClassifier", cpu=1.0, memory_gb=2.0, relative_cost=8.0
    ),
    "RandomForestClassifier": EstimatorEntry(
        "sklearn.ensemble.RandomForestClassifier", thread_param="n_jobs", cpu=2.0, memory_gb=4.0, relative_cost=5.0
    ),
}


def get_estimator(name: str) -> EstimatorEntry:
    """Look an estimator up by name, with the valid names in the error (like sklearn's get_scorer)."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(ESTIMATORS))
        raise ValueError(f"{name!r} is not a known estimator. Valid options are: {valid}.") from None
