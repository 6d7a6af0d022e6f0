"""Synthetic monitoring rows with the real schemas, for demos, tests and benchmarks.

    .venv/bin/python -m dashboards.monitoring.sample_data WAREHOUSE.db [ROWS] [SEED]

writes ``ROWS`` rows of ``model_monitoring`` (hourly cohorts, each recomputed at four
``as_of_window``s while its labels mature: immature three times, then final), a few
``model_alerts`` (drift crossing the alert threshold, AUC under the floor) and the
``model_deployments`` rows of the two model versions (the later one is serving) into a SQLite
warehouse file — the one ``AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE`` names, e.g. ``var/warehouse.db``
for ``make dashboard``. A rerun with the same arguments gives the same rows (monitoring windows
are replaced, alerts and deployments added only when absent).
"""

from __future__ import annotations

import math
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from factory_tasks.core.contracts import DeploymentRecord, MonitoringAlert, PairedDifference
from factory_tasks.core.schema import CUSTOMER_COLUMNS, OFFERS
from factory_tasks.warehouse.contract_table import ContractTable
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import MODEL_MONITORING, MODEL_MONITORING_SCHEMA

START = datetime(2026, 12, 1, tzinfo=timezone.utc)
#: a cohort's values are recomputed at these hours after its start; the last one is final
AS_OF_HOURS = (1, 2, 3, 4)
LABEL_COMPLETENESS = (0.55, 0.84, 0.97, 1.0)
VERSIONS = ("v1", "v2")


@dataclass(frozen=True)
class SqliteFile:
    """The smallest DB-API hook over a SQLite file (what the dialects need of Airflow's SqliteHook)."""

    path: str
    conn_type: str = "sqlite"

    def get_conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)


def as_hook(target: Any) -> Any:
    """A hook as given (anything with ``get_conn``), or one over the SQLite file at ``target``."""
    if hasattr(target, "get_conn"):
        return target
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteFile(str(path))


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def cohorts_for(rows: int) -> int:
    """How many hourly cohorts make at least ``rows`` monitoring rows."""
    # the newest len(AS_OF_HOURS) - 1 cohorts have not reached all their as_of windows yet
    return max(2, math.ceil(rows / (len(AS_OF_HOURS) * _rows_per_as_of())) + len(AS_OF_HOURS) - 1)


def _rows_per_as_of() -> int:
    offers = len(OFFERS)
    return (1 + offers + 4 + (1 + offers) + 4 + 20 + 2 + 3 + 2 + offers + 1 + len(CUSTOMER_COLUMNS))


def synthetic_monitoring(rows: int, seed: int = 0, start: datetime = START) -> pd.DataFrame:
    """``rows`` rows of ``model_monitoring`` (the newest; the oldest cohort may be partial)."""
    rng = np.random.default_rng(seed)
    n_cohorts = cohorts_for(rows)
    switch = int(n_cohorts * 0.45)  # v2 serves from this cohort on
    drift_from = int(n_cohorts * 0.7)  # the customer mix moves (channel) from here
    last_as_of = start + timedelta(hours=n_cohorts)  # the newest monitoring run
    out: dict[str, list] = {c.name: [] for c in MODEL_MONITORING_SCHEMA}

    def add(as_of: datetime, cohort: datetime, version: str, metric: str, value: float,
            maturity: str, dimension: str = "", lower: float | None = None,
            upper: float | None = None, n: int | None = None) -> None:
        out["as_of_window"].append(_iso(as_of - timedelta(hours=1)))
        out["as_of_ms"].append(int(as_of.timestamp() * 1000))
        out["cohort_start"].append(_iso(cohort))
        out["cohort_end"].append(_iso(cohort + timedelta(hours=1)))
        out["model_version"].append(version)
        out["metric"].append(metric)
        out["dimension"].append(dimension)
        out["value"].append(float(value))
        out["lower"].append(None if lower is None else float(lower))
        out["upper"].append(None if upper is None else float(upper))
        out["n"].append(n)
        out["maturity"].append(maturity)

    for k in range(n_cohorts):
        cohort = start + timedelta(hours=k)
        version = VERSIONS[0] if k < switch else VERSIONS[1]
        volume = int(rng.normal(2000, 60))
        drift = max(0.0, (k - drift_from) / max(1, n_cohorts - drift_from))  # 0 → 1
        auc_true = (0.70 if version == "v1" else 0.735) - 0.07 * drift + rng.normal(0, 0.006)
        conv_true = 0.147 - 0.02 * drift + rng.normal(0, 0.004)
        shares = rng.dirichlet([60, 90, 30])
        psi = {f: abs(rng.normal(0.03, 0.015)) for f in CUSTOMER_COLUMNS}
        psi["channel"] += 0.42 * drift
        psi["zip_code"] += 0.12 * drift
        scores = np.sort(rng.beta(2, 11, 3))
        policy = 1.85 - 0.5 * drift + rng.normal(0, 0.05)
        blast = {o: 1.55 + d + rng.normal(0, 0.04) for o, d in zip(OFFERS, (0.05, 0.15, -0.25))}
        exploration = float(np.mean(list(blast.values()))) + rng.normal(0, 0.03)
        for step, hours in enumerate(AS_OF_HOURS):
            as_of = cohort + timedelta(hours=hours)
            if as_of > last_as_of:
                break
            maturity = "final" if step == len(AS_OF_HOURS) - 1 else "immature"
            done = LABEL_COMPLETENESS[step]
            labels = int(volume * done)
            noise = 0.02 * (1 - done) + 0.004
            add(as_of, cohort, version, "volume", volume, "final", n=volume)
            for offer, share in zip(OFFERS, shares):
                add(as_of, cohort, version, "offer_share", share, "final", f"offer={offer}", n=volume)
            add(as_of, cohort, version, "score_mean", float(np.mean(scores)) + 0.01, "final", n=volume)
            for name, value in zip(("score_p10", "score_p50", "score_p90"), scores):
                add(as_of, cohort, version, name, value, "final", n=volume)
            add(as_of, cohort, version, "label_completeness", done, maturity, n=labels)
            for offer in OFFERS:
                add(as_of, cohort, version, "label_completeness", min(1.0, done + rng.normal(0, 0.01)),
                    maturity, f"offer={offer}", n=labels // len(OFFERS))
            # Labels still open are mostly conversions not yet reported: an immature rate reads low.
            conv = conv_true * (0.75 + 0.25 * done) + rng.normal(0, noise / 4)
            add(as_of, cohort, version, "conversion_rate", conv, maturity, n=labels)
            auc = auc_true + rng.normal(0, noise)
            add(as_of, cohort, version, "roc_auc", auc, maturity, lower=auc - 0.03, upper=auc + 0.03, n=labels)
            add(as_of, cohort, version, "log_loss", 0.40 + (0.72 - auc) * 0.5 + rng.normal(0, noise / 2),
                maturity, n=labels)
            errors = []
            for decile in range(1, 11):
                expected = conv_true * (0.3 + 0.14 * decile)
                observed = expected * (1 + rng.normal(0, 0.05 + noise)) * (1 - 0.3 * drift)
                errors.append(abs(expected - observed))
                add(as_of, cohort, version, "calibration_expected", expected, maturity, f"decile={decile}",
                    n=labels // 10)
                add(as_of, cohort, version, "calibration_observed", observed, maturity, f"decile={decile}",
                    n=labels // 10)
            add(as_of, cohort, version, "calibration_error", float(np.mean(errors)), maturity, n=labels)
            add(as_of, cohort, version, "estimated_roc_auc", auc_true + 0.025 * drift + rng.normal(0, 0.004),
                "estimate", n=volume)
            add(as_of, cohort, version, "estimated_conversion_rate", conv_true + 0.015 * drift + rng.normal(0, 0.002),
                "estimate", n=volume)
            width = 0.18 + 0.4 * (1 - done)
            for name, shift in (("policy_value_ipw", 0.04), ("policy_value_snipw", 0.02), ("policy_value_dr", 0.0)):
                value = policy + shift + rng.normal(0, 0.03)
                add(as_of, cohort, version, name, value, maturity, lower=value - width, upper=value + width, n=labels)
            best = max(blast.values())
            diff = policy - best
            add(as_of, cohort, version, "policy_vs_best_blast_dr", diff, maturity,
                lower=diff - width, upper=diff + width, n=labels)
            diff = policy - exploration
            add(as_of, cohort, version, "policy_vs_exploration_dr", diff, maturity,
                lower=diff - width * 1.6, upper=diff + width * 1.6, n=labels)
            for offer, value in blast.items():
                add(as_of, cohort, version, "blast_value_dr", value, maturity, f"offer={offer}",
                    lower=value - width, upper=value + width, n=labels)
            add(as_of, cohort, version, "exploration_value", exploration, maturity,
                lower=exploration - width * 1.5, upper=exploration + width * 1.5, n=labels // 10)
            for feature, value in psi.items():
                add(as_of, cohort, version, "drift_psi", value, "final", f"feature={feature}", n=volume)
    frame = pd.DataFrame(out)
    frame = frame.sort_values(["as_of_ms", "cohort_start"], kind="stable").reset_index(drop=True)
    return frame.iloc[len(frame) - rows:].reset_index(drop=True) if len(frame) > rows else frame


def synthetic_alerts(frame: pd.DataFrame, drift_alert: float = 0.25, auc_floor: float = 0.60,
                     limit: int = 3) -> list[MonitoringAlert]:
    """The first ``limit`` crossings of each kind in ``frame``: drift over ``drift_alert``, realised AUC
    under the floor, a policy worse than the best blast offer (the interval's upper bound below 0)."""
    alerts: list[MonitoringAlert] = []
    finals = frame[frame["maturity"].isin(["final", "estimate"])]
    drift = finals[(finals["metric"] == "drift_psi") & (finals["value"] > drift_alert)]
    auc = finals[(finals["metric"] == "roc_auc") & (finals["value"] < auc_floor)]
    policy = finals[(finals["metric"] == "policy_vs_best_blast_dr") & (finals["upper"] < 0)]
    for kind, rows, threshold in (("feature_drift", drift, drift_alert), ("realised_performance", auc, auc_floor),
                                  ("policy_value", policy, 0.0)):
        rows = rows.drop_duplicates(["cohort_start", "model_version", "dimension"]).head(limit)
        for row in rows.itertuples():
            as_of = datetime.fromtimestamp(row.as_of_ms / 1000, tz=timezone.utc)
            what = {
                "feature_drift": f"{row.dimension.removeprefix('feature=')} PSI {row.value:.3f} > {threshold}",
                "realised_performance": f"realised ROC AUC {row.value:.3f} < {threshold}",
                "policy_value": f"policy worse than the best blast offer by {-row.value:.2f} (upper bound {row.upper:.2f} < 0)",
            }[kind]
            alerts.append(MonitoringAlert(
                alert_id=f"{row.as_of_window}/{row.model_version}/{kind}/{row.dimension}",
                as_of_window=row.as_of_window, cohort_start=row.cohort_start,
                model_version=row.model_version, kind=kind, metric=row.metric, dimension=row.dimension,
                value=float(row.value), threshold=float(threshold),
                message=f"{what} for cohort {row.cohort_start}", raised_at=_iso(as_of),
                retrain_run_id=f"alert__{row.as_of_window}" if kind == "feature_drift" else None,
            ))
    return alerts


def synthetic_deployments(frame: pd.DataFrame, seed: int = 0) -> list[DeploymentRecord]:
    """One deployment per model version in ``frame``, each at its first cohort (the last is serving)."""
    firsts = frame.groupby("model_version")["cohort_start"].min().sort_values()
    records = []
    for i, (version, first) in enumerate(firsts.items()):
        experiment = f"{(seed * 7919 + i * 104729) & 0xFFFFFFFF:08x}{i + 1:08x}"
        run = f"manual__2026-11-{20 + i:02d}T06:00:00+00:00"
        records.append(DeploymentRecord(
            model_version=version, model_name="next-best-offer", model_id=f"model-{i + 1:03d}",
            build_id=f"build-{version}", deployment_id=f"deployment-{version}",
            access_key_ref="var/secrets/model_access_key", artifact_path=f"models/{version}/model.skops",
            metadata_path=f"models/{version}/metadata.json", experiment_id=experiment, factory_run_id=run,
            grid_hash="grid0001", data_snapshot_hash=f"{(seed + 17 * (i + 1)) * 2654435761 & 0xFFFFFFFFFFFF:012x}",
            code_version="0.1.0", chosen_by="automatic" if i == 0 else "promotion",
            chosen_by_user=None if i == 0 else "reviewer", choice_reason="best roc_auc" if i == 0 else "promoted",
            gate_reason="no model serving" if i == 0 else "roc_auc 0.735 >= serving 0.700",
            gate_override=False, replaced_deployment_ids=[] if i == 0 else [f"deployment-{firsts.index[i - 1]}"],
            deployed_at=str(first).replace("Z", "+00:00"),
            gate_evidence=[] if i == 0 else [
                PairedDifference(measure="roc_auc", source="holdout", challenger=0.735, champion=0.700,
                                 difference=0.035, low=0.012, high=0.058, n_rows=800,
                                 method="paired bootstrap, 400 resamples"),
                PairedDifference(measure="policy_value", source="holdout", challenger=4.10, champion=3.85,
                                 difference=0.25, low=0.04, high=0.46, n_rows=800,
                                 method="paired bootstrap, 400 resamples")],
        ))
    return records


def write_sample_monitoring(target: Any, rows: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Write ``rows`` synthetic ``model_monitoring`` rows, their alerts and deployments.

    ``target``: the SQLite warehouse file the dashboard reads (the path in
    ``AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE``; for ``make dashboard`` and the browser tests'
    server, ``<var>/warehouse.db``), or any warehouse DB-API hook. Returns the monitoring rows.
    """
    hook = as_hook(target)
    frame = synthetic_monitoring(rows, seed)
    dialect = dialect_for(hook)
    dialect.create_table(hook, MODEL_MONITORING, MODEL_MONITORING_SCHEMA, partition_by="as_of_window")
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    by_window: dict[str, list[dict]] = {}
    for record in records:
        by_window.setdefault(record["as_of_window"], []).append(record)
    for window, window_rows in by_window.items():
        dialect.replace_partition(hook, MODEL_MONITORING, MODEL_MONITORING_SCHEMA, "as_of_window", window, window_rows)
    for table, documents, key in (
        (ContractTable(MonitoringAlert), synthetic_alerts(frame), "alert_id"),
        (ContractTable(DeploymentRecord), synthetic_deployments(frame, seed), "deployment_id"),
    ):
        existing, _ = table.read(hook)
        have = {getattr(d, key) for d in existing}
        for document in documents:
            if getattr(document, key) not in have:
                table.append(hook, document)
    return frame


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    rows = int(argv[1]) if len(argv) > 1 else 5000
    seed = int(argv[2]) if len(argv) > 2 else 0
    write_sample_monitoring(argv[0], rows, seed)
    print(f"wrote {rows} model_monitoring rows (and their alerts and deployments) to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
