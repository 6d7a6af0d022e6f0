"""Metric registry: the names a grid may ask for and whether higher is better.

The computations live beside the names so an experiment and a validator agree on one list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    greater_is_better: bool
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("roc_auc", True, "area under the ROC curve of P(conversion)"),
        Metric("log_loss", False, "log loss of P(conversion)"),
        Metric("average_precision", True, "area under the precision-recall curve"),
        Metric("accuracy", True, "accuracy at threshold 0.5 (misleading on imbalanced data)"),
        Metric("brier_score", False, "mean squared error of P(conversion)"),
        Metric(
            "policy_value",
            True,
            "IPW estimate of value per customer of the model's next-best-action policy",
        ),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        valid = ", ".join(METRICS)
        raise ValueError(f"{name!r} is not a valid metric. Valid options are: {valid}.") from None
