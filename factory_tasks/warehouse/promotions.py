"""Promotions: a reviewer's pick of the experiment to deploy for a factory run.

Each promotion is one :class:`~factory_tasks.core.contracts.Promotion` appended as one row to the
warehouse table ``model_promotions`` (``Promotion.TABLE``; SQLite or Hive, through the same
DB-API hook as ``experiment_outcomes``; every SQL difference lives in
the engine modules beside it, values are bound). The table is created if absent, never
dropped, and only ever appended to: the decision for a factory run is its promotion with the
latest ``promoted_at``. The dashboard writes it (the reviewer is the signed-in user), the
deploy DAG reads it. A row that does not parse against the contract is reported, as a
:class:`~factory_tasks.core.contracts.ContractError` naming the table, the row and the field;
it is never silently skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from factory_tasks.core.contracts import ContractError, Promotion
from factory_tasks.warehouse.contract_table import ContractTable
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.sql import Column

PROMOTIONS_TABLE = Promotion.TABLE

#: The table: one column per field of the contract, in the contract's order.
PROMOTIONS = ContractTable(Promotion)
PROMOTION_COLUMNS: tuple[Column, ...] = PROMOTIONS.columns
PROMOTION_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in PROMOTION_COLUMNS)
_NEVER = datetime.min.replace(tzinfo=timezone.utc)


class PromotionRefused(ValueError):
    """A promotion request that breaks a rule; the message says which, for the reviewer."""


@dataclass(frozen=True)
class PromotionLog:
    """Every valid promotion (oldest first) and a :class:`ContractError` per row that is not."""

    promotions: list[Promotion]
    problems: list[ContractError]

    def raise_for_problems(self) -> None:
        """Raise one :class:`ContractError` listing every invalid row, if there is any."""
        if self.problems:
            raise ContractError(
                f"table {PROMOTIONS_TABLE}",
                [f"{p.source}: {'; '.join(p.problems)}" for p in self.problems],
            )


def _text(value: object) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def ensure_schema(hook: Any) -> None:
    """Create ``model_promotions`` if it is absent; never drop or alter what exists."""
    PROMOTIONS.ensure_schema(hook)


def promote(
    summary_frame: pd.DataFrame,
    experiment_id: str,
    factory_run_id: str | None,
    reviewer: str,
    reason: str,
    warehouse_hook: Any,
    now: datetime,
) -> Promotion:
    """Record that ``reviewer`` picked ``experiment_id`` of ``factory_run_id`` for deployment:
    one row appended to ``model_promotions`` through ``warehouse_hook``.

    ``reviewer`` is the authenticated user, never typed in. ``factory_run_id`` may be None when
    the experiment appears in exactly one factory run. Raises :class:`PromotionRefused` (and
    writes nothing) for an empty reviewer or reason, an unknown experiment, an ambiguous one,
    or one that did not succeed.
    """
    reviewer = (reviewer or "").strip()
    reason = (reason or "").strip()
    if not reviewer:
        raise PromotionRefused("A promotion needs a signed-in reviewer: sign in to the dashboard first.")
    if not reason:
        raise PromotionRefused("A promotion needs a reason (why this experiment?).")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rows = summary_frame[summary_frame["experiment_id"] == experiment_id]
    if factory_run_id is not None:
        rows = rows[rows["factory_run_id"] == factory_run_id]
    if rows.empty:
        where = f" in factory run {factory_run_id}" if factory_run_id is not None else ""
        raise PromotionRefused(f"Experiment {experiment_id}{where} is not in the summary.")
    if len(rows) > 1:
        runs = sorted(rows["factory_run_id"].astype(str).unique())
        raise PromotionRefused(
            f"Experiment {experiment_id} appears in several factory runs ({', '.join(runs)}); "
            f"say which one."
        )
    row = rows.iloc[0]
    status = _text(row["status"])
    if status != "succeeded":
        error = _text(row.get("error"))
        raise PromotionRefused(
            f"Experiment {experiment_id} {status or 'has no status'} and cannot be promoted"
            + (f" (error: {error})." if error else ".")
        )
    score = row["ranking_score"]
    try:
        promotion = Promotion.from_data(
            {
                "experiment_id": str(experiment_id),
                "factory_run_id": _text(row["factory_run_id"]),
                "reviewer": reviewer,
                "reason": reason,
                "promoted_at": now.astimezone(timezone.utc).isoformat(),
                "family": _text(row["family"]),
                "estimator": _text(row["estimator"]),
                "ranking_metric": _text(row["ranking_metric"]),
                "ranking_score": None if pd.isna(score) else float(score),
            },
            f"the promotion of experiment {experiment_id}",
        )
    except ContractError as exc:
        raise PromotionRefused(
            f"Experiment {experiment_id} cannot be promoted: its summary row does not make a valid "
            f"promotion ({'; '.join(exc.problems)})."
        ) from exc
    PROMOTIONS.append(warehouse_hook, promotion)
    return promotion


def _row_source(number: int, record: dict[str, Any]) -> str:
    ident = ", ".join(f"{k}={record.get(k)!r}" for k in ("factory_run_id", "experiment_id", "promoted_at"))
    return f"{PROMOTIONS_TABLE} row {number} ({ident})"


def _parse_row(number: int, record: dict[str, Any]) -> Promotion:
    source = _row_source(number, record)
    # NULL columns are absent fields: the contract then says which required field is missing.
    promotion = Promotion.from_data({k: v for k, v in record.items() if v is not None}, source)
    try:
        promoted_at = datetime.fromisoformat(promotion.promoted_at)
    except ValueError:
        promoted_at = None
    if promoted_at is None or promoted_at.tzinfo is None:
        raise ContractError(source, [f"promoted_at: {promotion.promoted_at!r} is not an ISO 8601 time with a timezone"])
    return promotion


def load_promotions(hook: Any) -> PromotionLog:
    """Every promotion in ``model_promotions``, oldest first (by ``promoted_at``), and a
    :class:`ContractError` for each row that does not parse. No table yet: an empty log.

    Rows are numbered in that order (invalid times last) for the error messages; rows with the
    same ``promoted_at`` are in the order of their values.
    """
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, PROMOTIONS_TABLE):
        return PromotionLog([], [])
    records = [dict(zip(PROMOTION_COLUMN_NAMES, row))
               for row in dialect.select(hook, PROMOTIONS_TABLE, PROMOTION_COLUMN_NAMES)]

    def order(record: dict[str, Any]) -> tuple[int, datetime, tuple[str, ...]]:
        # Ties in promoted_at go by the row's values, not by the order the warehouse returns
        # rows in (Hive promises none): every reader then picks the same decision.
        values = tuple(str(record[c]) for c in PROMOTION_COLUMN_NAMES)
        try:
            stamp = datetime.fromisoformat(str(record["promoted_at"]))
        except ValueError:
            stamp = None
        if stamp is None or stamp.tzinfo is None:
            return (1, _NEVER, values)
        return (0, stamp, values)

    promotions: list[Promotion] = []
    problems: list[ContractError] = []
    for number, record in enumerate(sorted(records, key=order), start=1):
        try:
            promotions.append(_parse_row(number, record))
        except ContractError as exc:
            problems.append(exc)
    return PromotionLog(promotions, problems)


def latest_promotion(hook: Any, factory_run_id: str | None = None, *,
                     promoted_by: datetime | None = None) -> Promotion | None:
    """The decision: the latest promotion (of one factory run, if given; made no later than
    ``promoted_by``, if given — the end of a review window), or None.

    Raises :class:`ContractError` if any row of the table is invalid: a deploy must not act on
    a table it cannot fully read.
    """
    log = load_promotions(hook)
    log.raise_for_problems()
    return decision(log, factory_run_id, promoted_by=promoted_by)


def decision(log: PromotionLog, factory_run_id: str | None = None, *,
             promoted_by: datetime | None = None) -> Promotion | None:
    """:func:`latest_promotion` of a log already read (the dashboard shows the same one)."""
    matching = [p for p in log.promotions
                if (factory_run_id is None or p.factory_run_id == factory_run_id)
                and (promoted_by is None or datetime.fromisoformat(p.promoted_at) <= promoted_by)]
    return matching[-1] if matching else None
