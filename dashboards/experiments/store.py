"""The experiments data store: the summary frame, the filters, and what derives from them.

One :class:`ExperimentsStore` per browser session. The summary is read from object storage
(``settings.summary_location()``, a ``file://`` or ``s3://`` ... URL); the parsed frame is shared
by all sessions through a process-wide cache keyed on the object's (location, mtime, size), so
a 50,000-row file is parsed once per change, and every filter runs in pandas on that cached
frame. What every session derives from the frame alone (the run and family choices, the score
and date bounds) is cached beside it, so a new session needs no pass over the rows.
Promotions are rows of the warehouse table ``model_promotions``.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import param

from dashboards.experiments.warehouse import WAREHOUSE_ERRORS, warehouse_hook
from factory_tasks.core import settings
from factory_tasks.core.contracts import Promotion
from factory_tasks.core.metrics import INCLUDES_ZERO_MARK, METRICS, fold_intervals
from factory_tasks.core.outcome_columns import folds_matrix
from factory_tasks.warehouse.promotions import PromotionLog, decision, load_promotions, promote
from factory_tasks.warehouse.summary import (
    SUMMARY_DTYPES,
    SummaryError,
    _display,
    rank_key,
    read_summary,
    summary_location,
    summary_version,
)

ALL_RUNS = "All runs"
STATUSES = ["succeeded", "failed"]

# Columns shown in the leaderboard (the full row is in the detail view); ``params`` and
# ``policy_uplift_ci`` are derived by :func:`prepare`.
LEADERBOARD_COLUMNS = [
    "experiment_id",
    "family",
    "roc_auc_mean",
    "policy_uplift_mean",
    "policy_uplift_ci",
    "params",
    "status",
    "ranking_metric",
    "ranking_score",
    "policy_value_mean",
    "log_loss_mean",
    "estimator",
    "wall_time_s",
    "factory_run_id",
    "recorded_at",
]


def file_signature(location: str) -> tuple[int, int] | None:
    """(mtime_ns, size) of the summary object, or None if it does not exist."""
    return summary_version(location)


_CACHE: dict[tuple[str, tuple[int, int] | None], pd.DataFrame | SummaryError] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 4


def load_summary(location: str) -> tuple[pd.DataFrame, tuple[int, int] | None]:
    """The prepared summary frame and the object signature it was read at.

    Cached on (location, mtime_ns, size); raises :class:`SummaryError` (also cached) when the
    object is missing, empty or corrupt.
    """
    where = summary_location(location)
    signature = summary_version(where)
    key = (str(where), signature)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        try:
            hit = prepare(read_summary(where))
        except SummaryError as exc:
            hit = exc
        with _CACHE_LOCK:
            while len(_CACHE) >= _CACHE_MAX:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = hit
    if isinstance(hit, SummaryError):
        raise hit
    return hit, signature


def prepare(summary: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns the views need (never mutate the cached frame afterwards)."""
    # numpy-backed object strings: every filter change masks and takes rows, which costs several
    # times less on them than on Arrow strings.
    frame = summary.astype({c: "object" for c in summary.columns if summary[c].dtype == "string"})
    frame = frame.astype({c: "float64" for c in frame.columns if str(frame[c].dtype) == "Int64"
                          and frame[c].isna().any()})
    recorded = pd.to_datetime(frame["recorded_at"], utc=True, errors="coerce", format="ISO8601")
    frame["recorded_dt"] = recorded.dt.tz_convert("UTC").dt.tz_localize(None)
    frame["rank_key"] = rank_key(frame)
    frame["row_key"] = frame["factory_run_id"].astype(str) + "/" + frame["experiment_id"].astype(str)
    frame["params"] = params_text(frame["params_json"])
    uplift = fold_intervals(folds_matrix(frame["policy_uplift_folds"]))
    frame["policy_uplift_low"], frame["policy_uplift_high"] = uplift.low, uplift.high
    frame["policy_uplift_ci"] = interval_text(uplift.low, uplift.high, index=frame.index)
    # Best first, once: filters are boolean masks, which keep this order.
    frame = frame.sort_values("rank_key", ascending=False, na_position="last", kind="stable")
    return frame.reset_index(drop=True)


def params_text(params_json: pd.Series) -> pd.Series:
    """Each row's hyperparameters as ``k=v, …`` (sorted by name; empty without any). Each
    distinct JSON text is parsed once: a grid's points repeat over the factory runs."""
    codes, uniques = pd.factorize(params_json.to_numpy(dtype=object))  # missing: -1
    texts = np.array([", ".join(f"{k}={v}" for k, v in sorted(parse_params(u).items())) for u in uniques] + [""],
                     dtype=object)
    return pd.Series(texts[codes], index=params_json.index, dtype=object)  # -1 takes the last, ""


def interval_text(low: np.ndarray, high: np.ndarray, index: pd.Index) -> pd.Series:
    """``[-0.0123, +0.0456] ≈0`` per row (the mark where the interval includes 0), empty where
    there is no interval."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    texts = np.full(len(low), "", dtype=object)
    known = ~np.isnan(low) & ~np.isnan(high)
    mark = f" {INCLUDES_ZERO_MARK}"
    texts[known] = [f"[{lo:+.4f}, {hi:+.4f}]{mark if lo <= 0 <= hi else ''}"  # Python floats: fast
                    for lo, hi in zip(low[known].tolist(), high[known].tolist())]
    return pd.Series(texts, index=index, dtype=object)


@cache
def empty_frame() -> pd.DataFrame:
    """A prepared frame without rows, with the columns and dtypes of a real one (never mutate it).

    A table emptied to other dtypes gets other column definitions, and Tabulator then rebuilds
    itself in the browser instead of swapping the rows.
    """
    return prepare(pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in SUMMARY_DTYPES.items()}))


@dataclass(frozen=True)
class FrameFacts:
    """What the filters need to know about one prepared frame, computed once per frame."""

    runs: tuple[str, ...]  # newest first
    families: tuple[str, ...]
    score_bounds: tuple[float, float] | None
    date_bounds: tuple[datetime, datetime] | None
    keys: frozenset[str]
    only_known_statuses: bool  # every row's status is one of STATUSES


_FACTS: dict[int, tuple[pd.DataFrame, FrameFacts]] = {}


def frame_facts(frame: pd.DataFrame) -> FrameFacts:
    """The :class:`FrameFacts` of a prepared (never mutated) frame, cached on its identity."""
    with _CACHE_LOCK:
        hit = _FACTS.get(id(frame))
    if hit is not None and hit[0] is frame:
        return hit[1]
    scores = frame["ranking_score"].dropna()
    dates = frame["recorded_dt"].dropna()
    facts = FrameFacts(
        runs=tuple(sorted(frame["factory_run_id"].dropna().astype(str).unique(), reverse=True)),
        families=tuple(sorted(frame["family"].dropna().astype(str).unique())),
        score_bounds=None if scores.empty else (float(scores.min()), float(scores.max())),
        date_bounds=None if dates.empty else (dates.min().to_pydatetime(), dates.max().to_pydatetime()),
        keys=frozenset(frame["row_key"]),
        only_known_statuses=bool(frame["status"].isin(STATUSES).all()),
    )
    with _CACHE_LOCK:
        while len(_FACTS) >= _CACHE_MAX * 2:
            _FACTS.pop(next(iter(_FACTS)))
        _FACTS[id(frame)] = (frame, facts)  # the frame is held, so its id is not reused
    return facts


def best_per_family(frame: pd.DataFrame) -> pd.DataFrame:
    """The best succeeded experiment of each family (by its ranking metric's direction).

    Only the three columns the choice needs are touched before the winners are picked, so
    this stays cheap on 50,000 rows (it runs on every filter change).
    """
    codes, families = pd.factorize(frame["family"].to_numpy(dtype=object))  # NaN: -1
    keys = frame["rank_key"].to_numpy(dtype=float, na_value=np.nan)
    ok = (frame["status"].to_numpy(dtype=object) == "succeeded") & ~np.isnan(keys) & (codes >= 0)
    if not ok.any():
        return frame.iloc[0:0]
    positions = np.flatnonzero(ok)
    # Best first, ties in frame order (the earlier row wins), then the first row of each family.
    order = positions[np.lexsort((positions, -keys[positions]))]
    _, first = np.unique(codes[order], return_index=True)
    winners = order[first]
    winners = winners[np.argsort(np.asarray(families, dtype=object)[codes[winners]].astype(str), kind="stable")]
    counts = np.bincount(codes[codes >= 0], minlength=len(families))
    best = frame.iloc[winners]
    return best.assign(experiments=counts[codes[winners]].astype("int64")).reset_index(drop=True)


def parse_params(params_json: Any) -> dict[str, Any]:
    if not isinstance(params_json, str) or not params_json:
        return {}
    try:
        value = json.loads(params_json)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_folds(folds_json: Any) -> list[float | None]:
    if not isinstance(folds_json, str) or not folds_json:
        return []
    try:
        value = json.loads(folds_json)
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    out: list[float | None] = []
    for v in value:
        out.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
    return out


def hyperparameter_frame(frame: pd.DataFrame, max_rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One column per hyperparameter plus ``rank_key``/``ranking_score`` for a (sampled) frame.

    Only the sampled rows' JSON is parsed, so this stays cheap on 50,000 rows.
    """
    ok = frame[(frame["status"] == "succeeded") & frame["ranking_score"].notna()]
    if len(ok) > max_rows:
        ok = ok.sample(n=max_rows, random_state=seed)
    params = pd.DataFrame.from_records([parse_params(s) for s in ok["params_json"]], index=ok.index)
    return pd.concat(
        [ok[["experiment_id", "ranking_metric", "ranking_score", "rank_key"]], params], axis=1
    )


class ExperimentsStore(param.Parameterized):
    """The summary, the leaderboard filters and the current selection for one session."""

    summary_url = param.String(
        default=None, allow_None=True,
        doc="Where the summary CSV is read from: a URL (file://, s3:// ...) or a local path "
            "(default: settings.summary_location()).")
    warehouse = param.Parameter(
        default=None, doc="DB-API hook of the warehouse holding model_promotions "
                          "(default: the Airflow connection model_factory_warehouse, on first use).")

    data = param.DataFrame(doc="The whole prepared summary (shared cache; never mutated).")
    error = param.String(default="", doc="Why the summary cannot be shown; empty when it can.")
    notice = param.String(default="", doc="Said when the summary is valid but has no rows yet "
                                          "(the header-only file of a fresh var/); empty otherwise.")
    signature = param.Tuple(default=None, allow_None=True, length=2, doc="(mtime_ns, size) loaded.")
    data_as_of = param.Date(default=None, allow_None=True, doc="Modification time of the loaded file (UTC).")

    factory_run = param.Selector(default=ALL_RUNS, objects=[ALL_RUNS], doc="Show one factory run, or all.")
    families = param.ListSelector(default=[], objects=[], doc="Grid families to show (none selected = all).")
    statuses = param.ListSelector(default=list(STATUSES), objects=list(STATUSES), doc="Experiment statuses to show.")
    score_range = param.Range(default=None, allow_None=True, doc="Keep experiments whose ranking score lies in this range.")
    date_range = param.DateRange(default=None, allow_None=True, doc="Keep experiments recorded in this range (UTC).")

    filtered = param.DataFrame(doc="The rows that pass every filter, best first.")
    selected_keys = param.List(default=[], item_type=str, doc="row_key of the experiments selected in the leaderboard.")
    promotion_log = param.ClassSelector(class_=PromotionLog, default=None, allow_None=True,
                                        doc="The promotions read from model_promotions.")
    promotion_error = param.String(default="", doc="Why model_promotions could not be read; empty when it could.")

    def __init__(self, **params):
        self._unreachable = False  # the last look-up of the summary failed
        if params.get("summary_url") is None:
            params["summary_url"] = str(settings.summary_location())
        super().__init__(**params)
        self.reload(force=True)
        if self.filtered is None:
            self._refilter()
        self.reload_promotions()

    # -- loading -------------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Re-read the summary if the object changed; True if anything changed."""
        try:
            signature = file_signature(self.summary_url)
        except OSError as exc:  # the store is unreachable: say so, keep polling
            message = f"The experiments summary {self.summary_url} could not be looked up: {exc}"
            if message == self.error:
                return False
            self._unreachable = True
            with param.parameterized.batch_call_watchers(self):
                self.signature, self.error, self.data, self.data_as_of = None, message, None, None
                self.notice = ""
            return True
        force, self._unreachable = force or self._unreachable, False
        if not force and signature == self.signature and (self.data is not None or self.error):
            return False
        try:
            frame, signature = load_summary(self.summary_url)
        except SummaryError as exc:
            with param.parameterized.batch_call_watchers(self):
                self.signature = signature
                self.error = str(exc)
                self.notice = ""
                self.data = None
                self.data_as_of = None
            return True
        self._set_data(frame, signature)
        return True

    def _set_data(self, frame: pd.DataFrame, signature: tuple[int, int] | None) -> None:
        facts = frame_facts(frame)
        runs, families = list(facts.runs), list(facts.families)
        with param.parameterized.discard_events(self):
            self.param.factory_run.objects = [ALL_RUNS, *runs]
            if self.factory_run not in self.param.factory_run.objects:
                self.factory_run = ALL_RUNS
            self.param.families.objects = families
            self.families = [f for f in self.families if f in families]
            if facts.score_bounds is None:
                self.param.score_range.bounds = None
                self.score_range = None
            else:
                lo, hi = facts.score_bounds
                if hi - lo < 1e-12:  # a slider needs a non-empty span
                    lo, hi = lo - 0.001, hi + 0.001
                old_bounds = self.param.score_range.bounds
                self.param.score_range.bounds = (lo, hi)
                # Keep a reviewer's narrowed range; follow the data when the range was "all".
                if self.score_range is None or old_bounds is None or tuple(self.score_range) == tuple(old_bounds):
                    self.score_range = (lo, hi)
                else:
                    self.score_range = (max(lo, self.score_range[0]), min(hi, self.score_range[1]))
            if facts.date_bounds is None:
                self.param.date_range.bounds = None
                self.date_range = None
            else:
                lo_d, hi_d = facts.date_bounds
                if lo_d == hi_d:
                    lo_d, hi_d = lo_d - timedelta(minutes=1), hi_d + timedelta(minutes=1)
                old_bounds = self.param.date_range.bounds
                self.param.date_range.bounds = (lo_d, hi_d)
                if self.date_range is None or old_bounds is None or tuple(self.date_range) == tuple(old_bounds):
                    self.date_range = (lo_d, hi_d)
                else:
                    self.date_range = (max(lo_d, self.date_range[0]), min(hi_d, self.date_range[1]))
        keys = facts.keys
        with param.parameterized.batch_call_watchers(self):
            self.signature = signature
            self.error = ""
            self.notice = "" if len(frame) else self.no_experiments_message()
            self.data_as_of = (
                datetime.fromtimestamp(signature[0] / 1e9, tz=timezone.utc).replace(tzinfo=None)
                if signature else None
            )
            self.selected_keys = [k for k in self.selected_keys if k in keys]
            self.data = frame
            # Widgets follow the (silently) updated values and bounds.
            self.param.trigger("factory_run", "families", "score_range", "date_range")

    def no_experiments_message(self) -> str:
        """What a valid summary without rows means: the experiments_summary DAG has run
        (it writes a header-only file when there are no outcomes) but nothing is recorded yet."""
        return (
            f"The experiments summary {_display(summary_location(self.summary_url))} has no rows: "
            "the experiments_summary DAG writes the experiments there once a factory run records "
            "outcomes."
        )

    def warehouse_hook(self) -> Any:
        if self.warehouse is None:
            self.warehouse = warehouse_hook()
        return self.warehouse

    def reload_promotions(self) -> None:
        """Re-read ``model_promotions``; a failure is kept in :attr:`promotion_error`. The views
        are told only when something changed (the page re-reads on a timer)."""
        try:
            log = load_promotions(self.warehouse_hook())
        except WAREHOUSE_ERRORS as exc:
            error = f"The promotions could not be read from the warehouse: {exc}"
            if error != self.promotion_error or self.promotion_log is not None:
                with param.parameterized.batch_call_watchers(self):
                    self.promotion_error = error
                    self.promotion_log = None
            return
        old = self.promotion_log
        if (not self.promotion_error and old is not None and old.promotions == log.promotions
                and [str(p) for p in old.problems] == [str(p) for p in log.problems]):
            return
        with param.parameterized.batch_call_watchers(self):
            self.promotion_error = ""
            self.promotion_log = log

    def current_promotion(self, factory_run_id: str) -> Promotion | None:
        """The promotion of a run the deploy step reads (``latest_promotion``), as last read."""
        return None if self.promotion_log is None else decision(self.promotion_log, factory_run_id)

    # -- derived state -------------------------------------------------------------------
    @param.depends("data", "factory_run", "families", "statuses", "score_range", "date_range", watch=True)
    def _refilter(self) -> None:
        self.filtered = self.apply_filters(self.data)

    def apply_filters(self, frame: pd.DataFrame | None) -> pd.DataFrame:
        """The rows of ``frame`` that pass every filter, in its order (``frame`` itself when
        no filter narrows it: no copy of 50,000 rows for the common case)."""
        if frame is None:
            return empty_frame()
        mask = np.ones(len(frame), dtype=bool)
        narrowed = False
        if self.factory_run != ALL_RUNS:
            mask &= (frame["factory_run_id"] == self.factory_run).to_numpy()
            narrowed = True
        if self.families:
            mask &= frame["family"].isin(self.families).to_numpy()
            narrowed = True
        if set(self.statuses) != set(STATUSES) or not frame_facts(frame).only_known_statuses:
            mask &= frame["status"].isin(self.statuses).to_numpy()
            narrowed = True
        bounds = self.param.score_range.bounds
        if self.score_range is not None and bounds is not None and tuple(self.score_range) != tuple(bounds):
            lo, hi = self.score_range
            # A narrowed score range hides rows without a score (failed runs).
            mask &= frame["ranking_score"].between(lo, hi).fillna(False).astype(bool).to_numpy()
            narrowed = True
        d_bounds = self.param.date_range.bounds
        if self.date_range is not None and d_bounds is not None and tuple(self.date_range) != tuple(d_bounds):
            lo_d, hi_d = self.date_range
            mask &= frame["recorded_dt"].between(pd.Timestamp(lo_d), pd.Timestamp(hi_d)).fillna(False).astype(bool).to_numpy()
            narrowed = True
        if not narrowed or mask.all():
            return frame
        return frame[mask]

    def rows_for(self, keys: list[str]) -> pd.DataFrame:
        if self.data is None or not keys:
            return pd.DataFrame(columns=[] if self.data is None else self.data.columns)
        frame = self.data
        picked = frame[frame["row_key"].isin(keys)]
        order = {k: i for i, k in enumerate(keys)}
        return picked.iloc[picked["row_key"].map(order).argsort().to_numpy()]

    @property
    def focus(self) -> pd.Series | None:
        """The experiment shown in the detail view: the last one selected."""
        rows = self.rows_for(self.selected_keys[-1:])
        return None if rows.empty else rows.iloc[0]

    # -- actions ---------------------------------------------------------------------------
    def promote_focus(self, reviewer: str, reason: str, now: datetime | None = None):
        """Promote the focused experiment as ``reviewer`` (the signed-in user): one row appended
        to ``model_promotions``, then the table re-read (another reviewer's may be the latest).
        Returns the Promotion; raises PromotionRefused, or one of ``WAREHOUSE_ERRORS`` when the
        warehouse cannot take it."""
        from factory_tasks.warehouse.promotions import PromotionRefused

        row = self.focus
        if row is None:
            raise PromotionRefused("Select an experiment in the leaderboard first.")
        if self.data is None:
            raise PromotionRefused("There is no summary loaded.")
        promotion = promote(
            self.data,
            experiment_id=str(row["experiment_id"]),
            factory_run_id=str(row["factory_run_id"]),
            reviewer=reviewer,
            reason=reason,
            warehouse_hook=self.warehouse_hook(),
            now=now or datetime.now(timezone.utc),
        )
        self.reload_promotions()
        return promotion


def metric_direction(metric: str) -> str:
    m = METRICS.get(metric)
    if m is None:
        return ""
    return "higher is better" if m.greater_is_better else "lower is better"
