"""Asking the deployed model about simulated customers, and how good its decisions truly are.

On the simulator the response model is known, so the value of the deployed model's next best
offers can be compared with the optimal policy's and with the best single offer sent to
everyone (:func:`policy_share`). Real data has no such oracle: there the monitoring DAG's
off-policy estimates stand in.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from factory_tasks.core.schema import CUSTOMER_COLUMNS, OFFERS
from factory_tasks.loop.simulator import optimal_offers, true_policy_value


def customer_requests(customers: pd.DataFrame, prefix: str = "sim") -> list[dict[str, Any]]:
    """The model-service request fields of each customer (JSON types, an id each)."""
    out = []
    for i, row in enumerate(customers[list(CUSTOMER_COLUMNS)].itertuples(index=False)):
        record = row._asdict()
        out.append({"customer_id": f"{prefix}-{i + 1}",
                    **{k: (v.item() if isinstance(v, np.generic) else v) for k, v in record.items()}})
    return out


def policy_share(customers: pd.DataFrame, chosen: list[str] | np.ndarray, economics: Mapping) -> dict[str, float]:
    """True value per customer of ``chosen`` offers, of the optimal policy and of the best
    blast, and the share of the optimum the chosen offers reach (blast = 0, optimum = 1 on the
    ``share_of_gain`` scale)."""
    value = true_policy_value(customers, np.asarray(chosen, dtype=object), economics)
    optimum = true_policy_value(customers, optimal_offers(customers, economics), economics)
    blasts = {offer: true_policy_value(customers, offer, economics) for offer in OFFERS}
    best_blast = max(blasts.values())
    gain = optimum - best_blast
    return {"value": value, "optimum": optimum, "best_blast": best_blast,
            "best_blast_offer": max(blasts, key=blasts.get),
            "share_of_optimum": value / optimum if optimum else float("nan"),
            "share_of_gain": (value - best_blast) / gain if gain > 0 else float("nan")}
