"""Allow-list of classifiers a grid may name. Nothing outside this registry can be built."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class EstimatorEntry:
    """A classifier the factory may build.

    ``thread_param`` names the constructor argument that controls its parallelism (set from
    the run's CPU request), or None where threads follow OMP/BLAS limits alone.
    ``needs_scaling`` says whether numeric features should be standardized first.
    """

    cls: type
    thread_param: str | None = None
    needs_scaling: bool = False

    def parameter_names(self) -> set[str]:
        return set(inspect.signature(self.cls.__init__).parameters) - {"self"}


ESTIMATORS: dict[str, EstimatorEntry] = {
    "LogisticRegression": EstimatorEntry(LogisticRegression, needs_scaling=True),
    "HistGradientBoostingClassifier": EstimatorEntry(HistGradientBoostingClassifier),
    "GradientBoostingClassifier": EstimatorEntry(GradientBoostingClassifier),
    "RandomForestClassifier": EstimatorEntry(RandomForestClassifier, thread_param="n_jobs"),
}


def get_estimator(name: str) -> EstimatorEntry:
    """Look an estimator up by name, with the valid names in the error (like sklearn's get_scorer)."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(ESTIMATORS))
        raise ValueError(f"{name!r} is not a known estimator. Valid options are: {valid}.") from None
