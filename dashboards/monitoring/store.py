"""The monitoring data store: what the ``model_monitoring`` DAG wrote, read from the warehouse.

Four tables, through the warehouse connection ``model_factory_warehouse`` (the one the DAGs and
the experiments dashboard use; SQLite or Hive): ``model_monitoring`` (long format, one row per
as_of_window × cohort × model_version × metric × dimension), ``model_alerts``
(``contracts.MonitoringAlert``), ``model_deployments`` (``contracts.DeploymentRecord``) and
``model_rollback_requests`` (``contracts.RollbackRequest``). The dashboard only reads them, but
for appending a signed-in reviewer's rollback request (:meth:`MonitoringStore.request_rollback`).

Everything a page shows is derived once per read, in :func:`load_monitoring`, into a
:class:`MonitoringData` shared by every session through a process-wide cache that lives
``$MODEL_FACTORY_MONITORING_REFRESH_S`` seconds (default 30): a 50,000-row table is read and
reduced once per refresh, not once per visitor. For a (cohort, model version, metric, dimension)
the row of the latest ``as_of_ms`` wins. A live A/B test's rows (metrics ``ab_*``, whose cohort is
the test's span, not an hour) are kept apart: they never reach the windows or the charts, and
become :attr:`MonitoringData.ab_test` (:func:`ab_test_of`). A warehouse that cannot be reached, a table that is
missing or of another layout, and rows that do not parse are :attr:`MonitoringData.problems`,
each naming the table (and row) and what is wrong; what can be shown still is.
"""

from __future__ import annotations

import functools
import html
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import param

from dashboards.experiments.warehouse import WAREHOUSE_ERRORS, warehouse_hook
from factory_tasks.core.contracts import DeploymentRecord, MonitoringAlert, RollbackRequest
from factory_tasks.loop.ab_monitoring import min_decisions
from factory_tasks.loop.config import ABTestConfig, LoopConfig, LoopConfigError, load_loop_config
from factory_tasks.warehouse.contract_table import ContractTable
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import MATURITIES, MODEL_MONITORING, MODEL_MONITORING_SCHEMA
from factory_tasks.warehouse.rollbacks import (
    ROLLBACK_REQUESTS,
    RequestStatus,
    deployed_versions,
    request_rollback,
    request_statuses,
)
from factory_tasks.warehouse.sql import connection_label

MONITORING_COLUMNS: tuple[str, ...] = tuple(c.name for c in MODEL_MONITORING_SCHEMA)
KEY = ["cohort_start", "model_version", "metric", "dimension"]
DRIFT_METRICS = {"psi": "drift_psi", "jensen_shannon": "drift_js"}
#: metrics computed from labels: their value changes until the cohort's labels have matured
REALISED = ("conversion_rate", "roc_auc", "log_loss", "calibration_error", "policy_value_dr")
#: the windows table: field -> column title
WINDOW_TITLES = {
    "cohort": "Cohort",
    "model_version": "Model",
    "volume": "Volume",
    "conversion": "Conversion",
    "roc_auc": "AUC",
    "estimated_roc_auc": "AUC est.",
    "label_completeness": "Labels",
    "policy_value_dr": "Policy (DR)",
    "max_drift": "Max drift",
    "alerts": "Alerts",
    "maturity": "Maturity",
}
ALERT_COLUMNS = ["raised_at", "model_version", "cohort_start", "kind", "metric", "dimension", "value",
                 "threshold", "message", "retrain_run_id"]
# Numeric alert columns; the rest are text. Kept when there is no alert: a table that goes from
# empty to rows with other dtypes gets other column definitions, and Tabulator rebuilds itself.
ALERT_NUMBERS = {"value": "float64", "threshold": "float64"}
#: the deployment history: field -> column title (newest first)
HISTORY_TITLES = {"model_version": "Model", "deployed_at": "Deployed (UTC)", "action": "Action",
                  "champion": "A/B champion", "split": "A/B split",
                  "chosen_by": "Chosen by", "gate_reason": "Gate", "deployment_id": "Deployment"}
#: the history's header tooltips: what the A/B columns hold
HISTORY_TOOLTIPS = {"champion": "ab_start: the champion deciding for the customers outside the challenger's share",
                    "split": "ab_start: the customers' shares, champion / challenger"}
#: the metrics of a live A/B test (factory_tasks.loop.ab_monitoring): their cohort is the test's
#: span, not an hourly cohort, so they never reach the windows table or the charts
AB_PREFIX = "ab_"
AB_ARMS = ("champion", "challenger")
AB_METHODS = ("dr", "snipw", "ipw")
#: a test's verdict in words (``ab_verdict``'s ``verdict=<state>``; continue: :func:`verdict_words`)
VERDICT_WORDS = {"promote": "challenger better: promote", "end": "champion better: end",
                 "expired": "expired: champion kept"}
#: the A/B history table: field -> column title (newest first)
AB_HISTORY_TITLES = {"as_of_window": "Run (as_of_window)", "difference": "Challenger − champion",
                     "boundary": "Boundary ±", "n": "Matured", "state": "Verdict"}
#: the gate's evidence of each deployment that has some (``DeploymentRecord.gate_evidence``)
EVIDENCE_COLUMNS = ["model_version", "deployed_at", "measure", "source", "challenger", "champion", "difference",
                    "low", "high", "n_rows"]
MAX_PROBLEMS_SHOWN = 5


def refresh_seconds() -> float:
    """How long one read of the warehouse is shared (``$MODEL_FACTORY_MONITORING_REFRESH_S``)."""
    try:
        return max(0.2, float(os.environ.get("MODEL_FACTORY_MONITORING_REFRESH_S", "30")))
    except ValueError:
        return 30.0


class MonitoringTableError(ValueError):
    """``model_monitoring`` cannot be read as a whole (missing, another layout)."""


@dataclass(frozen=True)
class MonitoringData:
    """One read of the three tables, reduced to what the views show. Never mutated."""

    latest: pd.DataFrame  # the winning row per KEY, with cohort_dt (UTC, naive)
    windows: pd.DataFrame  # one row per cohort × model version (display text + has_alert)
    alerts: pd.DataFrame  # model_alerts, newest first
    deployments: tuple[DeploymentRecord, ...]  # by deployed_at; the last is serving
    rollback_requests: tuple[RollbackRequest, ...] = ()  # by requested_at
    problems: tuple[str, ...] = ()
    rows: int = 0  # model_monitoring rows read
    read_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    warehouse: str = ""
    fingerprint: int = 0  # of everything read: an unchanged warehouse gives the same number
    ab_test: "AbTest | None" = None  # the running or latest A/B test (None: none recorded)

    @property
    def serving(self) -> DeploymentRecord | None:
        return self.deployments[-1] if self.deployments else None

    @property
    def rollback_versions(self) -> list[str]:
        """The versions a reviewer can ask to serve again: every recorded one but the serving one."""
        serving = self.serving
        return [v for v in deployed_versions(list(self.deployments)) if serving is None or v != serving.model_version]

    @functools.cached_property
    def request_statuses(self) -> list[RequestStatus]:
        return request_statuses(list(self.rollback_requests), list(self.deployments))

    @functools.cached_property
    def alert_windows(self) -> int:
        """The windows with an alert (what "alerts only" shows): counted once per read, not per
        session and click."""
        return int(self.windows["has_alert"].sum())


# -- reading -----------------------------------------------------------------------------------

def _bad(where: pd.Series, column: str, text: str, frame: pd.DataFrame, reasons: pd.Series) -> None:
    """Record ``text`` as the reason of each row in ``where`` that has none yet."""
    fresh = where & reasons.isna()
    if fresh.any():
        values = frame.loc[fresh, column]
        reasons.loc[fresh] = [f"{column} {v!r} {text}" for v in values]


def _is_text(series: pd.Series, non_empty: bool) -> pd.Series:
    """Which values are (non-empty) texts; vectorised when the column is all strings."""
    if isinstance(series.dtype, pd.StringDtype) or (series.dtype != object and pd.api.types.is_string_dtype(series)):
        ok = series.notna()
        return (ok & (series.str.strip().str.len() > 0)).fillna(False).astype(bool) if non_empty else ok
    return series.map(lambda v: isinstance(v, str) and (not non_empty or v.strip() != "")).astype(bool)


def read_monitoring(hook: Any) -> tuple[pd.DataFrame, list[str], int]:
    """The valid rows of ``model_monitoring`` (typed, with ``cohort_dt``), a problem per invalid
    row (``table model_monitoring row N: ...``), and how many rows were read.

    Raises :class:`MonitoringTableError` when the table is missing or lacks a column, and the
    warehouse's own errors when it cannot be reached.
    """
    dialect = dialect_for(hook)
    if not dialect.table_exists(hook, MODEL_MONITORING):
        raise MonitoringTableError(
            f"The table {MODEL_MONITORING} does not exist in the warehouse ({connection_label(hook)}): "
            "the model_monitoring DAG has not written any window yet.")
    have = set(dialect.columns(hook, MODEL_MONITORING))
    missing = [c for c in MONITORING_COLUMNS if c not in have]
    if missing:
        raise MonitoringTableError(
            f"The table {MODEL_MONITORING} ({connection_label(hook)}) has no column(s) {', '.join(missing)}: "
            "it is not the layout of factory_tasks.warehouse.loop_tables.MODEL_MONITORING_SCHEMA.")
    records = dialect.select(hook, MODEL_MONITORING, list(MONITORING_COLUMNS))
    frame = pd.DataFrame.from_records(records, columns=list(MONITORING_COLUMNS))
    total = len(frame)
    reasons = pd.Series(np.nan, index=frame.index, dtype=object)
    for column in ("as_of_window", "cohort_start", "model_version", "metric"):
        _bad(~_is_text(frame[column], True), column, "must be a non-empty text", frame, reasons)
    frame["dimension"] = frame["dimension"].where(frame["dimension"].notna(), "")
    _bad(~_is_text(frame["dimension"], False), "dimension", "must be a text", frame, reasons)
    _bad(~frame["maturity"].isin(MATURITIES), "maturity", f"is not one of {', '.join(MATURITIES)}", frame, reasons)
    numbers = {}
    for column in ("as_of_ms", "value", "lower", "upper", "n"):
        raw = frame[column]
        number = pd.to_numeric(raw, errors="coerce")
        required = column == "as_of_ms"
        broken = (raw.notna() & number.isna()) | (number.isin([np.inf, -np.inf]))
        if required:
            broken |= raw.isna()
        _bad(broken.astype(bool), column, "is not a number" if not required else "must be a number",
             frame, reasons)
        numbers[column] = number.astype("float64")
    cohorts = frame["cohort_start"].where(reasons.isna(), None)
    uniques = pd.Series(cohorts.dropna().unique())
    parsed = pd.to_datetime(uniques, utc=True, errors="coerce", format="ISO8601")
    lookup = dict(zip(uniques, parsed.dt.tz_localize(None)))
    cohort_dt = cohorts.map(lookup)
    _bad((cohorts.notna() & cohort_dt.isna()).astype(bool), "cohort_start", "is not an ISO-8601 time",
         frame, reasons)
    problems = [f"table {MODEL_MONITORING} row {i + 1}: {reason}" for i, reason in reasons.dropna().items()]
    for column, number in numbers.items():
        frame[column] = number
    frame["cohort_dt"] = pd.to_datetime(cohort_dt)
    good = frame[reasons.isna().to_numpy()]
    return good.reset_index(drop=True), problems, total


def is_ab_row(frame: pd.DataFrame) -> pd.Series:
    """Which rows are an A/B test's (metric ``ab_*``); vectorised: the names are few, the rows many."""
    metrics = frame["metric"]
    names = [m for m in pd.unique(metrics) if isinstance(m, str) and m.startswith(AB_PREFIX)]
    return metrics.isin(names) if names else pd.Series(False, index=frame.index)


def latest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """For each (cohort, model version, metric, dimension), the row of the latest ``as_of_ms``;
    an A/B test's rows (:func:`is_ab_row`) are left out: their cohort is the test's span."""
    ab = is_ab_row(frame)
    if ab.any():
        frame = frame[~ab.to_numpy()]
    ordered = frame.sort_values("as_of_ms", kind="stable")
    latest = ordered.drop_duplicates(KEY, keep="last")
    return latest.sort_values(["cohort_dt", "model_version"], kind="stable").reset_index(drop=True)


def _number(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _percent(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}%}"


def mark(text: str, maturity: Any) -> str:
    """A realised value as cell HTML: an immature one is marked so it is never read as final."""
    text = html.escape(text)
    if maturity == "immature" and text != "–":
        return (f'<span class="mf-immature" style="color:#9a5b00;font-style:italic">{text} '
                f'<span style="background:#fff1d6;border-radius:3px;padding:0 3px">immature</span></span>')
    return text


def window_table(latest: pd.DataFrame, alerts: pd.DataFrame, config: LoopConfig) -> pd.DataFrame:
    """One row per cohort × model version, newest first: the columns of :data:`WINDOW_TITLES`
    as display text, plus ``has_alert`` (bool) and ``row_key``."""
    fields = [*WINDOW_TITLES, "has_alert", "row_key"]
    ab = is_ab_row(latest) if not latest.empty else None
    if ab is not None and ab.any():  # an A/B test's span is no window
        latest = latest[~ab.to_numpy()]
    if latest.empty:
        return pd.DataFrame({c: pd.Series(dtype="bool" if c == "has_alert" else "object") for c in fields})
    keys = ["cohort_dt", "model_version"]
    scalar = latest[latest["dimension"] == ""]
    wide = scalar.set_index([*keys, "metric"])[["value", "lower", "upper", "maturity"]].unstack("metric")
    index = latest[keys].drop_duplicates().set_index(keys).index
    wide = wide.reindex(index)

    def col(part: str, metric: str) -> pd.Series:
        if (part, metric) in wide.columns:
            return wide[(part, metric)]
        return pd.Series(np.nan if part != "maturity" else None, index=wide.index, dtype=object if part == "maturity" else float)

    out = pd.DataFrame(index=wide.index)
    out["cohort"] = [f"{c:%Y-%m-%d %H:%M}" for c in wide.index.get_level_values("cohort_dt")]
    out["model_version"] = wide.index.get_level_values("model_version").astype(str)
    volume = col("value", "volume")
    out["volume"] = ["–" if math.isnan(v) else f"{int(v):,}" for v in volume]
    out["conversion"] = [mark(_percent(v, 2), m) for v, m in zip(col("value", "conversion_rate"),
                                                                 col("maturity", "conversion_rate"))]
    out["roc_auc"] = [mark(_number(v), m) for v, m in zip(col("value", "roc_auc"), col("maturity", "roc_auc"))]
    out["estimated_roc_auc"] = [_number(v) for v in col("value", "estimated_roc_auc")]
    out["label_completeness"] = [_percent(v, 0) for v in col("value", "label_completeness")]
    policy = []
    for v, lo, hi, m in zip(col("value", "policy_value_dr"), col("lower", "policy_value_dr"),
                            col("upper", "policy_value_dr"), col("maturity", "policy_value_dr")):
        text = _number(v, 2)
        if text != "–" and not (math.isnan(lo) or math.isnan(hi)):
            text += f" [{lo:.2f}, {hi:.2f}]"
        policy.append(mark(text, m))
    out["policy_value_dr"] = policy
    drift_metric = DRIFT_METRICS[config.monitoring.drift_metric]
    drift = latest[latest["metric"].isin(list(DRIFT_METRICS.values()))]
    if not drift.empty:
        drift = drift.assign(_pick=drift["metric"] == drift_metric)
        drift = drift[drift["_pick"]] if drift["_pick"].any() else drift
        top = drift.loc[drift.groupby(keys)["value"].idxmax()].set_index(keys).reindex(wide.index)
        texts = []
        for v, dim in zip(top["value"], top["dimension"]):
            if isinstance(v, float) and math.isnan(v):
                texts.append("–")
                continue
            flag = " ⚠" if v >= config.monitoring.drift_alert else (" ·" if v >= config.monitoring.drift_warn else "")
            texts.append(f"{v:.3f} {str(dim).removeprefix('feature=')}{flag}")
        out["max_drift"] = texts
    else:
        out["max_drift"] = "–"
    counts = pd.Series(0, index=wide.index)
    if not alerts.empty:
        # an A/B verdict (kind ab_test) is the test's, not its cohort's: its cohort is the test's span
        per = alerts[alerts["kind"] != "ab_test"].dropna(subset=["cohort_dt"])
        per = per.groupby(["cohort_dt", "model_version"]).size()
        counts = per.reindex(wide.index, fill_value=0)
    out["alerts"] = ["" if c == 0 else f"⚠ {c}" for c in counts]
    out["has_alert"] = (counts.to_numpy() > 0)
    maturities = wide["maturity"].reindex(columns=[m for m in REALISED if m in wide["maturity"].columns])
    immature = (maturities == "immature").any(axis=1) if not maturities.empty else pd.Series(False, index=wide.index)
    has_realised = maturities.notna().any(axis=1) if not maturities.empty else pd.Series(False, index=wide.index)
    out["maturity"] = np.where(immature, "immature", np.where(has_realised, "final", "no labels yet"))
    out["row_key"] = out["cohort"] + "/" + out["model_version"]
    out = out.iloc[::-1]  # newest first
    return out[fields].reset_index(drop=True)


def read_alerts(hook: Any) -> tuple[pd.DataFrame, list[str]]:
    """``model_alerts`` newest first (with ``cohort_dt``), and a problem per row that does not parse."""
    documents, errors = ContractTable(MonitoringAlert).read(hook)
    frame = pd.DataFrame([d.model_dump() for d in documents], columns=[*MonitoringAlert.model_fields])
    frame = frame[ALERT_COLUMNS].astype(ALERT_NUMBERS)
    frame["cohort_dt"] = pd.to_datetime(frame["cohort_start"], utc=True, errors="coerce",
                                        format="ISO8601").dt.tz_localize(None)
    frame = frame.sort_values("raised_at", ascending=False, kind="stable").reset_index(drop=True)
    return frame, [str(e) for e in errors]


def read_deployments(hook: Any) -> tuple[tuple[DeploymentRecord, ...], list[str]]:
    documents, errors = ContractTable(DeploymentRecord).read(hook)
    return tuple(sorted(documents, key=lambda d: d.deployed_at)), [str(e) for e in errors]


def read_rollback_requests(hook: Any) -> tuple[tuple[RollbackRequest, ...], list[str]]:
    documents, errors = ROLLBACK_REQUESTS.read(hook)
    return tuple(sorted(documents, key=lambda r: (r.requested_at, r.request_id))), [str(e) for e in errors]


def split_text(share: float) -> str:
    """An A/B test's split as ``champion / challenger`` percentages (``80% / 20%``)."""
    return f"{(1 - share) * 100:.4g}% / {share * 100:.4g}%"


def deployment_history(deployments: tuple[DeploymentRecord, ...]) -> pd.DataFrame:
    """One row per deployment, newest first: the columns of :data:`HISTORY_TITLES` as text. An
    ``ab_start`` (``model_version`` the challenger) names its champion and split; an
    ``ab_promote`` / ``ab_end`` (the verdict's redeploy) who carried it out and why."""
    rows = []
    for d in reversed(deployments):
        if d.action == "rollback":
            chosen = f"rollback asked by {d.requested_by or 'someone'}: {d.request_reason or ''}".rstrip(": ")
        elif d.action in ("ab_promote", "ab_end"):
            chosen = f"A/B verdict by {d.requested_by or 'someone'}: {d.request_reason or ''}".rstrip(": ")
        else:
            chosen = d.chosen_by + (f" by {d.chosen_by_user}" if d.chosen_by_user else "")
            if d.action == "ab_start":
                chosen += f" · A/B test {d.test_id}"
        test = d.action == "ab_start"
        rows.append({"model_version": d.model_version, "deployed_at": d.deployed_at, "action": d.action,
                     "champion": (d.champion_version or "") if test else "",
                     "split": split_text(d.challenger_share) if test else "",
                     "chosen_by": chosen, "gate_reason": d.gate_reason + (" (overridden)" if d.gate_override else ""),
                     "deployment_id": d.deployment_id})
    return pd.DataFrame(rows, columns=list(HISTORY_TITLES), dtype=object)


def gate_evidence(deployments: tuple[DeploymentRecord, ...]) -> pd.DataFrame:
    """The paired comparisons behind each deployment's gate, newest deployment first."""
    rows = [{"model_version": d.model_version, "deployed_at": d.deployed_at, **e.model_dump(include=set(EVIDENCE_COLUMNS))}
            for d in reversed(deployments) for e in d.gate_evidence]
    frame = pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)
    numbers = ["challenger", "champion", "difference", "low", "high"]
    return frame.astype({**{c: "float64" for c in numbers}, "n_rows": "Int64"})


# -- the A/B test ------------------------------------------------------------------------------

def _utc_naive(text: str) -> pd.Timestamp:
    """A record's ISO-8601 time as naive UTC, the form of ``cohort_dt``."""
    moment = pd.Timestamp(text)
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo is not None else moment


def verdict_words(state: str | None, matured: int, needed: int) -> str:
    """Where a test stands, in words: ``state`` of its latest ``ab_verdict`` (None: no run yet)."""
    if state is None:
        return "no monitoring run has reported on the test yet"
    if state in VERDICT_WORDS:
        return VERDICT_WORDS[state]
    if matured < needed:
        return f"not distinguishable yet — no verdict before {needed:,} matured decisions"
    return "not distinguishable yet — the always-valid interval still holds 0"


@dataclass(frozen=True, eq=False)
class AbTest:
    """The running or latest A/B test: its ``ab_start`` record, the record that replaced it
    (None while it runs) and what the monitoring runs wrote of it. Never mutated."""

    start: DeploymentRecord
    end: DeploymentRecord | None
    #: per arm (index champion, challenger): version, decisions (so far), matured, and
    #: ``<method>_value/_lower/_upper`` of each of :data:`AB_METHODS` (the latest run's)
    arms: pd.DataFrame
    #: one row per monitoring run, oldest first: as_of_window, as_of_dt, value, lower, upper, half_width, n, state
    history: pd.DataFrame
    min_decisions: int
    max_decisions: int
    alpha: float
    conclude: bool
    #: of the rows shown (history and arms): equal between two reads, nothing to redraw
    content: int = 0

    @property
    def running(self) -> bool:
        return self.end is None

    @property
    def test_id(self) -> str:
        return self.start.test_id or ""

    @property
    def champion(self) -> str:
        return self.start.champion_version or ""

    @property
    def challenger(self) -> str:
        return self.start.model_version

    @property
    def share(self) -> float:
        return self.start.challenger_share

    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest run's difference (value, lower, upper, half_width, n, state, as_of_window)."""
        return None if self.history.empty else self.history.iloc[-1].to_dict()

    @property
    def state(self) -> str | None:
        latest = self.latest
        return None if latest is None else latest["state"]

    @property
    def verdict(self) -> str:
        """The latest run's verdict in words (:func:`verdict_words`)."""
        latest = self.latest
        matured = 0 if latest is None or pd.isna(latest["n"]) else int(latest["n"])
        return verdict_words(self.state, matured, self.min_decisions)

    @property
    def outcome(self) -> str:
        """How a concluded test ended, in words (what ``end`` did; '' while the test runs)."""
        end = self.end
        if end is None:
            return ""
        if end.action == "ab_promote":
            return VERDICT_WORDS["promote"]
        if end.action == "ab_end":
            # the verdict carried out is the reason's (model_monitoring writes the rule's words),
            # else the last run's
            reason = end.request_reason or ""
            if "not distinguishable" in reason:
                return VERDICT_WORDS["expired"]
            if "champion is better" in reason:
                return VERDICT_WORDS["end"]
            if self.state in ("expired", "end"):
                return VERDICT_WORDS[self.state]
            return "ended: champion kept"
        return f"stopped without a verdict: {end.action} of {end.model_version}"

    @property
    def key(self) -> tuple:
        """What a page shows of the test: equal keys, nothing to redraw."""
        return (self.start.deployment_id, None if self.end is None else self.end.deployment_id, self.content,
                self.min_decisions, self.max_decisions, self.conclude)


def _number_or_nan(value: Any) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def ab_test_of(rows: pd.DataFrame, deployments: tuple[DeploymentRecord, ...], config: ABTestConfig) -> AbTest | None:
    """The latest A/B test of ``deployments`` (by ``deployed_at``) — its last ``ab_start`` and the
    record after it, if any — with what the monitoring runs wrote of it; None when none ever ran.

    ``rows``: the ``ab_*`` rows of ``model_monitoring`` (all runs). The test's are those of its two
    versions (an arm's rows its version, the others the challenger's) whose cohort (the test's
    span: from its first decision, or its deployment, to the run's window end) starts after the
    record before its ``ab_start`` and before the record after it, written by a run whose window
    ends after the ``ab_start``: so a test of the same versions run again later, or a backfill of
    a window before the test, is not this one's. Values are of the latest run (``as_of_ms``).
    """
    starts = [i for i, d in enumerate(deployments) if d.action == "ab_start"]
    if not starts:
        return None
    i = starts[-1]
    start = deployments[i]
    end = deployments[i + 1] if i + 1 < len(deployments) else None
    started_ms = _utc_naive(start.deployed_at).value / 1e6  # epoch ms, as as_of_ms
    low = _utc_naive(deployments[i - 1].deployed_at) if i > 0 else None
    high = _utc_naive(end.deployed_at) if end is not None else None
    champion, challenger = start.champion_version or "", start.model_version
    arm_dims = {f"arm={arm}": version for arm, version in zip(AB_ARMS, (champion, challenger))}
    ours = rows.iloc[0:0]
    if not rows.empty:
        # a row of the champion's arm is the champion's, every other row the challenger's
        mine = (rows["dimension"].map(arm_dims).fillna(challenger) == rows["model_version"]) \
            & (rows["as_of_ms"] > started_ms)
        if low is not None:
            mine &= rows["cohort_dt"] > low
        if high is not None:
            mine &= rows["cohort_dt"] < high
        ours = rows[mine.to_numpy()]

    difference = ours[ours["metric"] == "ab_difference_dr"].sort_values("as_of_ms", kind="stable")
    difference = difference.drop_duplicates("as_of_window", keep="last")
    verdicts = ours[ours["metric"] == "ab_verdict"].drop_duplicates("as_of_window", keep="last")
    states = verdicts.set_index("as_of_window")["dimension"].astype(str).str.removeprefix("verdict=")
    history = pd.DataFrame({
        "as_of_window": difference["as_of_window"].to_numpy(dtype=object),
        "as_of_dt": pd.to_datetime(difference["as_of_ms"].to_numpy(), unit="ms"),
        "value": difference["value"].to_numpy(dtype="float64"),
        "lower": difference["lower"].to_numpy(dtype="float64"),
        "upper": difference["upper"].to_numpy(dtype="float64"),
        "n": difference["n"].to_numpy(dtype="float64"),
        "state": pd.Series([None if pd.isna(v) else v for v in states.reindex(difference["as_of_window"])],
                           dtype=object),
    })
    history["half_width"] = (history["upper"] - history["lower"]) / 2

    arms = pd.DataFrame(index=pd.Index(AB_ARMS, name="arm"))
    arms["version"] = [champion, challenger]
    for column in ("decisions", "matured", *(f"{m}_{part}" for m in AB_METHODS for part in ("value", "lower", "upper"))):
        arms[column] = float("nan")
    if not ours.empty:
        last = ours[ours["as_of_ms"] == ours["as_of_ms"].max()]
        per_arm = last[last["dimension"].isin(list(arm_dims))]
        for row in per_arm.itertuples(index=False):  # at most 8 rows: an arm's decisions and values
            arm = row.dimension.removeprefix("arm=")
            if row.metric == "ab_decisions":
                arms.loc[arm, "decisions"] = _number_or_nan(row.value)
            elif row.metric.startswith("ab_value_"):
                method = row.metric.removeprefix("ab_value_")
                if method in AB_METHODS:
                    for part in ("value", "lower", "upper"):
                        arms.loc[arm, f"{method}_{part}"] = _number_or_nan(getattr(row, part))
                    if method == "dr":
                        arms.loc[arm, "matured"] = _number_or_nan(row.n)
        # an arm without a matured row has no value rows: none of its decisions has matured
        arms.loc[arms["decisions"].notna() & arms["matured"].isna(), "matured"] = 0.0
    needed = min_decisions(config, start.challenger_share) if 0 < start.challenger_share < 1 else config.min_decisions
    history = history.reset_index(drop=True)
    content = hash((int(pd.util.hash_pandas_object(history, index=False).sum()),
                    int(pd.util.hash_pandas_object(arms, index=False).sum())))
    return AbTest(start=start, end=end, arms=arms, history=history, min_decisions=needed,
                  max_decisions=config.max_decisions, alpha=config.alpha, conclude=config.conclude, content=content)


def _summarise(problems: list[str], what: str) -> list[str]:
    if len(problems) <= MAX_PROBLEMS_SHOWN:
        return problems
    return [*problems[:MAX_PROBLEMS_SHOWN], f"… and {len(problems) - MAX_PROBLEMS_SHOWN:,} more invalid {what} rows"]


def empty_alerts() -> pd.DataFrame:
    return pd.DataFrame({**{c: pd.Series(dtype=ALERT_NUMBERS.get(c, "object")) for c in ALERT_COLUMNS},
                         "cohort_dt": pd.Series(dtype="datetime64[ns]")})


def load_monitoring(hook: Any, config: LoopConfig, config_problems: tuple[str, ...] = ()) -> MonitoringData:
    """Read and reduce the three tables. Never raises for what a page should say instead."""
    problems: list[str] = list(config_problems)
    label = connection_label(hook)
    latest = pd.DataFrame(columns=[*MONITORING_COLUMNS, "cohort_dt"])
    total, content = 0, 0
    ab_rows = latest
    try:
        good, bad, total = read_monitoring(hook)
        content = int(pd.util.hash_pandas_object(good[list(MONITORING_COLUMNS)], index=False).sum())
        if bad:
            problems.append(f"{len(bad):,} of {total:,} rows of {MODEL_MONITORING} are invalid and not shown:")
            problems += _summarise(bad, MODEL_MONITORING)
        ab = is_ab_row(good).to_numpy()
        ab_rows = good[ab]
        latest = latest_rows(good[~ab])
    except MonitoringTableError as exc:
        problems.append(str(exc))
    except WAREHOUSE_ERRORS as exc:
        problems.append(f"The warehouse ({label}) could not be read for {MODEL_MONITORING}: {exc}")
    def read(reader: Any, table: str, empty: Any) -> Any:
        """``reader(hook)``'s documents; its invalid rows and a warehouse error become problems."""
        try:
            documents, bad = reader(hook)
        except WAREHOUSE_ERRORS as exc:
            problems.append(f"The warehouse ({label}) could not be read for {table}: {exc}")
            return empty
        problems.extend(_summarise(bad, table))
        return documents

    alerts = read(read_alerts, MonitoringAlert.TABLE, empty_alerts())
    deployments: tuple[DeploymentRecord, ...] = read(read_deployments, DeploymentRecord.TABLE, ())
    requests: tuple[RollbackRequest, ...] = read(read_rollback_requests, RollbackRequest.TABLE, ())
    try:
        windows = window_table(latest, alerts, config)
    except (KeyError, ValueError, TypeError) as exc:  # a layout nobody foresaw: say so, show the rest
        problems.append(f"The windows of {MODEL_MONITORING} could not be tabulated: {type(exc).__name__}: {exc}")
        windows = window_table(latest.iloc[0:0], alerts, config)
    try:
        ab_test = ab_test_of(ab_rows, deployments, config.ab_test)
    except (KeyError, ValueError, TypeError) as exc:  # as for the windows: say so, show the rest
        problems.append(f"The A/B test rows of {MODEL_MONITORING} could not be read: {type(exc).__name__}: {exc}")
        ab_test = None
    fingerprint = hash((content, total, tuple(problems), tuple(d.deployment_id for d in deployments),
                        tuple(alerts["message"]) if not alerts.empty else (), len(alerts),
                        tuple(r.request_id for r in requests)))
    return MonitoringData(latest=latest, windows=windows, alerts=alerts, deployments=deployments,
                          rollback_requests=requests, problems=tuple(problems), rows=total, warehouse=label,
                          fingerprint=fingerprint, ab_test=ab_test)


@functools.lru_cache(maxsize=1)
def empty_windows() -> pd.DataFrame:
    """The windows table of no rows (what a session shows without a read), made once: treat
    it as read-only, like every frame of :class:`MonitoringData`."""
    return window_table(pd.DataFrame(columns=[*MONITORING_COLUMNS, "cohort_dt"]), empty_alerts(), LoopConfig())


_CACHE: dict[Any, tuple[float, MonitoringData]] = {}
_CACHE_LOCK = threading.Lock()


def cached_monitoring(hook: Any, config: LoopConfig, config_problems: tuple[str, ...] = (),
                      max_age: float | None = None) -> MonitoringData:
    """:func:`load_monitoring`, shared by every session for ``max_age`` seconds. When a new read
    finds what the last one found, the last one is returned (the same object), so the pages
    that hold it redraw nothing."""
    max_age = refresh_seconds() if max_age is None else max_age
    key = (id(hook), connection_label(hook))
    now = time.monotonic()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and now - hit[0] < max_age:
            return hit[1]
        data = load_monitoring(hook, config, config_problems)
        if hit is not None and hit[1].fingerprint == data.fingerprint:
            data = hit[1]
        _CACHE[key] = (time.monotonic(), data)
        return data


def loop_config() -> tuple[LoopConfig, tuple[str, ...]]:
    """The thresholds of ``config/closed_loop.yaml`` (``$MODEL_FACTORY_LOOP_CONFIG`` to point
    elsewhere); when it is invalid, the defaults and the problem."""
    path = os.environ.get("MODEL_FACTORY_LOOP_CONFIG")
    try:
        return (load_loop_config(path) if path else load_loop_config()), ()
    except LoopConfigError as exc:
        return LoopConfig(), (f"{exc} — the default thresholds are shown.",)


class MonitoringStore(param.Parameterized):
    """One session's view of the monitoring tables and its one filter."""

    warehouse = param.Parameter(default=None, doc="DB-API hook of the warehouse (default: the Airflow "
                                                  "connection model_factory_warehouse, on first use).")
    config = param.ClassSelector(class_=LoopConfig, default=None, allow_None=True,
                                 doc="The closed-loop settings (thresholds); default config/closed_loop.yaml.")
    data = param.ClassSelector(class_=MonitoringData, default=None, allow_None=True,
                               doc="The last read of the tables (shared; never mutated).")
    problems = param.List(default=[], item_type=str, doc="What is wrong, each naming the table or connection.")
    alerts_only = param.Boolean(default=False, doc="Show only the windows with an alert.")
    shown = param.Integer(default=0, doc="Windows that pass the filter.")

    def __init__(self, **params):
        super().__init__(**params)
        self._config_problems: tuple[str, ...] = ()
        self.checked_at: datetime | None = None  # when the warehouse was last looked at
        if self.config is None:
            self.config, self._config_problems = loop_config()
        self.reload()

    @property
    def drift_metric(self) -> str:
        return DRIFT_METRICS[self.config.monitoring.drift_metric]

    def request_rollback(self, model_version: str, requested_by: str, reason: str,
                         now: datetime | None = None) -> RollbackRequest:
        """Record ``requested_by``'s request to serve ``model_version`` again (checked against
        ``model_deployments`` as it is now, not as last shown), then read the tables again.
        Raises :class:`~factory_tasks.warehouse.rollbacks.RollbackRefused` for a request that
        breaks a rule, and the warehouse's errors when it cannot take it."""
        if self.warehouse is None:
            self.warehouse = warehouse_hook()
        deployments = ContractTable(DeploymentRecord).read_all(self.warehouse)
        request = request_rollback(self.warehouse, deployments, model_version, requested_by, reason,
                                   now or datetime.now(timezone.utc))
        self.reload(max_age=0)
        return request

    def reload(self, max_age: float | None = None) -> bool:
        """Take the shared read (refreshed when it is older than the refresh interval, or
        ``max_age`` seconds); True if new."""
        try:
            if self.warehouse is None:
                self.warehouse = warehouse_hook()
        except WAREHOUSE_ERRORS as exc:
            message = f"The warehouse cannot be reached: {exc}"
            if self.problems == [message] and self.data is None:
                return False
            with param.parameterized.batch_call_watchers(self):
                self.data, self.problems = None, [*self._config_problems, message]
                self._recount()
            return True
        data = cached_monitoring(self.warehouse, self.config, self._config_problems, max_age=max_age)
        self.checked_at = datetime.now(timezone.utc)
        if data is self.data:
            return False
        with param.parameterized.batch_call_watchers(self):
            self.data = data
            self.problems = list(data.problems)
            self._recount()
        return True

    @property
    def windows(self) -> pd.DataFrame:
        return empty_windows() if self.data is None else self.data.windows

    @property
    def total(self) -> int:
        return len(self.windows)

    @param.depends("alerts_only", watch=True)
    def _recount(self) -> None:
        if self.data is None:
            self.shown = 0
        else:
            self.shown = self.data.alert_windows if self.alerts_only else len(self.data.windows)

    def filter_windows(self, frame: pd.DataFrame, alerts_only: bool) -> pd.DataFrame:
        """The Tabulator filter: the rows with an alert, or all."""
        if not alerts_only or frame.empty:
            return frame
        return frame[frame["has_alert"].astype(bool).to_numpy()]
