"""The typed contracts between the factory's stages, jobs and services.

Every message that crosses a process or machine boundary is one of these pydantic models,
defined once and imported by both sides:

| contract | written by | read by | lives at |
| --- | --- | --- | --- |
| :class:`ExperimentSpec` | ``plan_experiments`` | the experiment job | the job run's ``MF_EXPERIMENT_SPEC`` |
| :class:`ExperimentResult` | the experiment job | planning (reuse), collection | project file ``experiments/<id>/result.json`` |
| :class:`RunPlan` | ``plan_experiments`` | ``record_outcomes``, the deploy DAG | project file ``factory_runs/<run>/plan.json`` |
| :class:`Promotion` | the dashboard | the deploy DAG | warehouse table ``model_promotions`` |
| :class:`RollbackRequest` | the monitoring dashboard | the DAG ``rollback_requests`` | warehouse table ``model_rollback_requests`` |
| :class:`MonitoringAlert` | ``model_monitoring`` | the monitoring dashboard, the retrain trigger | warehouse table ``model_alerts`` |

Each carries a ``schema_version``; a document that does not parse (truncated, a wrong type, a
missing field, an unknown version) raises :class:`ContractError` naming the document and the
field, never a bare ``JSONDecodeError`` or a ``.get()`` default.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory_tasks.core.config_types import Economics, EstimatorName, MetricName, ParamValue, Resources
from factory_tasks.core.estimators import get_estimator
from factory_tasks.core.names import job_name
from factory_tasks.core.schema import DEFAULT_INTERACTIONS_TABLE

#: project folders (relative to the CML project root)
EXPERIMENTS_DIR = "experiments"
FACTORY_RUNS_DIR = "factory_runs"
#: the libraries whose versions shape an experiment's result: a result computed under other
#: versions is not reused
RESULT_SHAPING_LIBRARIES: tuple[str, ...] = ("sklearn", "numpy", "pandas", "skops")
#: run statuses the factory records besides the CML job run states
REUSED_RUN_STATUS = "REUSED"

ExperimentId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class ContractError(ValueError):
    """A document that does not satisfy its contract. ``source`` names the document (a project
    path, a table row ...), ``problems`` each field and what is wrong with it."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source} is not a valid document: {'; '.join(self.problems)}")


def _field_path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        where = _field_path(tuple(p for p in error["loc"] if p not in ("function-after", "[key]")))
        out.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return out


class Contract(BaseModel):
    """Closed (unknown fields are errors), immutable, strict about types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def parse(cls, raw: bytes | str, source: str):
        """Parse a JSON document, or raise :class:`ContractError` naming ``source`` and the field."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                first = exc.errors()[0]
                raise ContractError(source, [f"not valid JSON ({first['msg']}); the file may be truncated"]) from None
            raise ContractError(source, _problems(exc)) from None

    @classmethod
    def from_data(cls, data: Any, source: str):
        """Validate already-decoded data (a dict from a table row, XCom ...)."""
        try:
            return cls.model_validate(data, strict=False)
        except ValidationError as exc:
            raise ContractError(source, _problems(exc)) from None

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys; NaN and infinities are refused, as they are not JSON)."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1, allow_nan=False) + "\n").encode()


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def safe_run_name(factory_run_id: str) -> str:
    """A factory run id as one path segment: readable, and distinct for distinct ids."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", factory_run_id)[:80]
    return f"{readable}-{hashlib.sha256(factory_run_id.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------------
# The experiment: spec (orchestrator -> job) and result (job -> orchestrator)


class DataSnapshot(Contract):
    """The training data an experiment reads: project-relative parquet path and content hash."""

    path: str = Field(min_length=1)
    hash: str = Field(min_length=1)


def compute_experiment_id(
    *,
    estimator: str,
    params: Mapping[str, Any],
    cv_folds: int,
    metrics: list[str],
    random_state: int,
    economics: Economics,
    data_snapshot_hash: str,
) -> str:
    """First 16 hex of sha256 over the canonical JSON of what the experiment computes.

    Metrics are sorted (their order changes nothing computed); 1 and 1.0 stay different because
    scikit-learn can read them differently (``max_features``). The code and library versions are
    not part of the id: they decide whether a result may be *reused* (:func:`reuse_blocker`).
    """
    return _sha256({
        "estimator": estimator,
        "params": dict(params),
        "cv_folds": cv_folds,
        "metrics": sorted(metrics),
        "random_state": random_state,
        "economics": economics.model_dump(mode="json"),
        "data_snapshot_hash": data_snapshot_hash,
    })[:16]


class ExperimentSpec(Contract):
    """One experiment, as it travels to the job run (environment variable :attr:`ENV`)."""

    ENV: ClassVar[str] = "MF_EXPERIMENT_SPEC"

    schema_version: Literal[1] = 1
    experiment_id: ExperimentId
    family: str = Field(min_length=1)
    estimator: EstimatorName
    params: dict[str, ParamValue]
    cv_folds: int = Field(ge=2)
    metrics: list[MetricName] = Field(min_length=1)
    ranking_metric: MetricName
    resources: Resources
    economics: Economics
    random_state: int
    data_snapshot: DataSnapshot

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        if self.ranking_metric not in self.metrics:
            raise ValueError(f"ranking_metric {self.ranking_metric!r} is not one of the metrics {self.metrics}")
        entry = get_estimator(self.estimator)
        unknown = sorted(set(self.params) - entry.parameter_names())
        if unknown:
            raise ValueError(f"{self.estimator} has no parameter(s) {unknown}. "
                             f"Valid parameters are: {', '.join(sorted(entry.parameter_names()))}.")
        expected = compute_experiment_id(
            estimator=self.estimator, params=self.params, cv_folds=self.cv_folds, metrics=self.metrics,
            random_state=self.random_state, economics=self.economics, data_snapshot_hash=self.data_snapshot.hash)
        if expected != self.experiment_id:
            raise ValueError(f"experiment_id {self.experiment_id} does not match the spec's content "
                             f"(expected {expected}): the spec was altered")
        return self

    @property
    def result_path(self) -> str:
        return ExperimentResult.path_for(self.experiment_id)

    @property
    def job_name(self) -> str:
        return job_name(self.resources.model_dump())

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "ExperimentSpec":
        raw = environ.get(cls.ENV)
        if raw is None or not raw.strip():
            raise ContractError(cls.ENV, ["not set: the job needs the experiment spec as JSON"])
        return cls.parse(raw, f"the job's {cls.ENV}")


class MetricScores(Contract):
    mean: float | None
    std: float | None
    folds: list[float | None]


class Timing(Contract):
    mean: float
    std: float
    total: float


class ExperimentResult(Contract):
    """What one experiment run leaves in the project (:meth:`path_for`); written last, atomically."""

    schema_version: Literal[1] = 1
    experiment_id: ExperimentId
    status: Literal["succeeded", "failed"]
    error: str | None = None
    traceback: str | None = None
    family: str | None = None
    estimator: str | None = None
    params: dict[str, ParamValue] | None = None
    cv_folds: int | None = None
    ranking_metric: str | None = None
    metrics: dict[str, MetricScores] = Field(default_factory=dict)
    fit_time: Timing | None = None
    score_time: Timing | None = None
    wall_time_s: float | None = None
    n_rows: int | None = None
    threads: int | None = None
    artifact_path: str | None = None
    metadata_path: str | None = None
    data_snapshot_hash: str | None = None
    code_version: str | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    #: where the job's time went (``factory_tasks.jobs.experiment.TIMING_KEYS``); none in older results
    timings: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def path_for(cls, experiment_id: str) -> str:
        return f"{EXPERIMENTS_DIR}/{experiment_id}/result.json"

    @model_validator(mode="after")
    def _complete(self) -> "ExperimentResult":
        if self.status == "failed":
            if not self.error:
                raise ValueError("a failed result needs an error")
            return self
        missing = [name for name in ("family", "estimator", "params", "cv_folds", "ranking_metric", "fit_time",
                                     "score_time", "wall_time_s", "n_rows", "artifact_path", "metadata_path",
                                     "data_snapshot_hash", "code_version", "started_at", "finished_at")
                   if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a succeeded result needs {', '.join(missing)}")
        if self.error is not None:
            raise ValueError("a succeeded result has no error")
        ranking = self.metrics.get(self.ranking_metric)
        if ranking is None or ranking.mean is None or not math.isfinite(ranking.mean):
            raise ValueError(f"a succeeded result needs a finite score for its ranking metric {self.ranking_metric!r}")
        if len(ranking.folds) != self.cv_folds:
            raise ValueError(f"metrics.{self.ranking_metric} has {len(ranking.folds)} fold scores for {self.cv_folds} folds")
        absent = [lib for lib in RESULT_SHAPING_LIBRARIES if lib not in self.library_versions]
        if absent:
            raise ValueError(f"library_versions lacks {', '.join(absent)}")
        return self


class Provenance(Contract):
    """What computed a result: the experiment code's content hash and the shaping libraries."""

    code_version: str
    library_versions: dict[str, str]


def reuse_blocker(result: ExperimentResult | None, current: Provenance) -> str | None:
    """Why an earlier result of the same experiment cannot stand for this run (None: reuse it)."""
    if result is None:
        return "new experiment"
    if result.status != "succeeded":
        return "the earlier run failed"
    if result.code_version != current.code_version:
        return f"code changed ({result.code_version} -> {current.code_version})"
    changed = [f"{lib} {result.library_versions.get(lib)} -> {current.library_versions.get(lib)}"
               for lib in RESULT_SHAPING_LIBRARIES
               if result.library_versions.get(lib) != current.library_versions.get(lib)]
    if changed:
        return f"libraries changed ({', '.join(changed)})"
    return None


# --------------------------------------------------------------------------------------------
# The factory run: its plan and its collected outcomes (task -> task, through project files)


class GridRef(Contract):
    """The validated grid a factory run uses (what ``validate_grid`` hands on)."""

    grid_path: str
    grid_hash: str
    table: str
    max_parallel: int = Field(ge=1)
    #: the grid's ``data.interactions_table``, read when the run includes interactions
    interactions_table: str = DEFAULT_INTERACTIONS_TABLE


class SnapshotRef(Contract):
    """The training snapshot in the project (what ``snapshot_training_data`` hands on)."""

    table: str
    hash: str
    n_rows: int = Field(ge=0)
    project_path: str
    #: the interactions table whose matured rows the snapshot holds besides ``table``'s (then it
    #: has a ``propensity`` column); None: history only
    interactions_table: str | None = None
    #: how many of ``n_rows`` come from ``interactions_table``
    interaction_rows: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _interaction_rows_need_their_table(self) -> "SnapshotRef":
        if self.interaction_rows > self.n_rows:
            raise ValueError(f"interaction_rows {self.interaction_rows} exceeds n_rows {self.n_rows}")
        if self.interaction_rows and self.interactions_table is None:
            raise ValueError("interaction_rows without an interactions_table")
        return self


class RunPlan(Contract):
    """Every experiment of one factory run, which ones run now and why, which are reused."""

    schema_version: Literal[1] = 1
    factory_run_id: str
    grid: GridRef
    snapshot: SnapshotRef
    provenance: Provenance
    specs: list[ExperimentSpec]
    #: experiment id -> why it runs now ("new experiment", "code changed (...)", ...)
    to_run: dict[str, str]
    reused: list[str]

    @classmethod
    def path_for(cls, factory_run_id: str) -> str:
        return f"{FACTORY_RUNS_DIR}/{safe_run_name(factory_run_id)}/plan.json"


# --------------------------------------------------------------------------------------------
# Promotion: a reviewer's pick (dashboard -> deploy DAG, through the warehouse)


class Promotion(Contract):
    """A reviewer's pick of the experiment to deploy for a factory run. The table is
    append-only: the latest row for a factory run is the decision."""

    TABLE: ClassVar[str] = "model_promotions"

    schema_version: Literal[1] = 1
    experiment_id: ExperimentId
    factory_run_id: str = Field(min_length=1)
    reviewer: str = Field(min_length=1)  # the authenticated user, never typed in
    reason: str = Field(min_length=1)
    promoted_at: str = Field(min_length=1)  # ISO 8601, UTC
    family: str = Field(min_length=1)
    estimator: str = Field(min_length=1)
    ranking_metric: str = Field(min_length=1)
    ranking_score: float | None = None


# --------------------------------------------------------------------------------------------
# Deploy: the choice, the retrain job's request and result, the deployment record


MODELS_DIR = "models"
ChosenBy = Literal["promotion", "review", "automatic", "manual"]


class Choice(Contract):
    """Which experiment of a factory run goes to production, and who or what picked it."""

    schema_version: Literal[1] = 1
    factory_run_id: str
    experiment_id: ExperimentId
    #: promotion in the dashboard, the Airflow "required action" review, the best by the
    #: grid's ranking metric when nobody picked, or an id given to a manual DAG run
    chosen_by: ChosenBy
    chosen_by_user: str | None = None
    reason: str


class Lineage(Contract):
    """Where a deployed model comes from: data snapshot -> experiment -> choice -> model."""

    experiment_id: ExperimentId
    factory_run_id: str
    grid_hash: str
    data_snapshot_path: str
    data_snapshot_hash: str
    code_version: str
    library_versions: dict[str, str]
    chosen_by: ChosenBy
    chosen_by_user: str | None = None
    choice_reason: str


class ChampionRef(Contract):
    """The model now serving and its recipe (read from its model metadata). The retrain job
    refits the recipe on exactly the challenger's fit rows and scores both on the held-out
    slice, so the two are compared on rows neither trained on; the served artifact itself (fitted
    on its own snapshot, which overlaps this one) is never scored there."""

    model_version: str
    #: the served artifact, for the record (the retrain job does not load it)
    artifact_path: str
    experiment_id: ExperimentId
    estimator: EstimatorName
    params: dict[str, ParamValue]
    random_state: int

    def same_recipe(self, spec: "ExperimentSpec") -> bool:
        """Whether the challenger's spec fits exactly this recipe (its refit is the challenger's)."""
        return (self.estimator, dict(self.params), self.random_state) == (spec.estimator, dict(spec.params),
                                                                          spec.random_state)


class LiveTrafficRef(Contract):
    """The serving model's matured live decisions, exported to the project for the retrain job's
    shadow evaluation (columns of :data:`factory_tasks.loop.live_traffic.TRAFFIC_COLUMNS`)."""

    champion_version: str
    #: project path of the Parquet file
    path: str
    #: sha256 of the file's bytes: the job reads exactly what the deploy run exported
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    n_rows: int = Field(ge=0)


class RetrainRequest(Contract):
    """What the retrain job refits (environment variable :attr:`ENV`)."""

    ENV: ClassVar[str] = "MF_RETRAIN_REQUEST"

    schema_version: Literal[1] = 1
    model_version: str = Field(pattern=r"^[0-9a-z][0-9a-z._-]{0,99}$")
    spec: ExperimentSpec
    #: the experiment's cross-validated estimate of its ranking metric
    cv_estimate: MetricScores
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    #: the refit's held-out score must lie within max(tolerance_std * CV std, tolerance_floor)
    #: of the CV mean
    tolerance_std: float = Field(3.0, gt=0)
    tolerance_floor: float = Field(0.01, ge=0)
    champion: ChampionRef | None = None
    #: the champion's matured live traffic, when it has any (the shadow evaluation's rows)
    live_traffic: LiveTrafficRef | None = None
    lineage: Lineage

    @property
    def output_dir(self) -> str:
        return f"{MODELS_DIR}/{self.model_version}"

    @property
    def result_path(self) -> str:
        return RetrainResult.path_for(self.model_version)


class PairedDifference(Contract):
    """One measure of the gate's evidence: challenger and champion on the *same* rows, and the
    interval of their difference (challenger − champion), so shared noise cancels."""

    #: the metric compared (``roc_auc``, ``policy_value``, …)
    measure: str
    #: ``holdout``: rows neither model trained on; ``live``: the champion's logged traffic
    #: (the challenger evaluated off-policy)
    source: Literal["holdout", "live"]
    challenger: float | None
    champion: float | None
    #: challenger − champion, in the metric's own units (not sign-flipped for lower-is-better)
    difference: float | None
    low: float | None
    high: float | None
    confidence: float = Field(0.95, gt=0, lt=1)
    greater_is_better: bool = True
    n_rows: int = Field(ge=0)
    #: how the interval was computed, e.g. "paired bootstrap, 400 resamples" or "DR influence function"
    method: str


class HoldoutScores(Contract):
    metrics: dict[str, float | None]
    n_rows: int = Field(ge=1)


class RetrainResult(Contract):
    """What the retrain job leaves in ``models/<model_version>/retrain.json``."""

    schema_version: Literal[1] = 1
    model_version: str
    status: Literal["succeeded", "failed"]
    error: str | None = None
    traceback: str | None = None
    ranking_metric: str | None = None
    #: the refit (on all rows but the held-out slice) scored on that slice
    holdout: HoldoutScores | None = None
    #: the champion's recipe (:class:`ChampionRef`) refitted on the same rows as the refit and
    #: scored on the same slice (None for the first deployment)
    champion_holdout: HoldoutScores | None = None
    #: challenger − champion on the slice, paired (the same resampled rows for both), with
    #: intervals: the ranking metric and ``policy_value`` (empty for the first deployment)
    comparison: list[PairedDifference] = Field(default_factory=list)
    #: the refit's decisions minus the champion's on the champion's live traffic it did not
    #: train on, valued off-policy (None for the first deployment)
    live: PairedDifference | None = None
    consistent: bool | None = None
    consistency_note: str | None = None
    artifact_path: str | None = None  # fitted on every row
    metadata_path: str | None = None
    onnx_path: str | None = None
    compiled_note: str | None = None
    n_rows: int | None = None
    code_version: str | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def path_for(cls, model_version: str) -> str:
        return f"{MODELS_DIR}/{model_version}/retrain.json"

    @model_validator(mode="after")
    def _complete(self) -> "RetrainResult":
        if self.status == "failed":
            if not self.error:
                raise ValueError("a failed retrain result needs an error")
            return self
        missing = [name for name in ("ranking_metric", "holdout", "consistent", "consistency_note",
                                     "artifact_path", "metadata_path", "n_rows", "code_version")
                   if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a succeeded retrain result needs {', '.join(missing)}")
        return self


class GateDecision(Contract):
    """Whether the challenger replaces the model now serving, and why."""

    deploy: bool
    reason: str
    override: bool = False
    ranking_metric: str
    challenger: dict[str, float | None]
    champion: dict[str, float | None] | None = None
    champion_version: str | None = None
    #: the paired comparisons the decision rests on (empty for a first deployment)
    evidence: list[PairedDifference] = Field(default_factory=list)
    #: a kept champion a reviewer may still replace (the evidence fell short); never for an
    #: inconsistent refit or a version already serving
    overridable: bool = False


class DeploymentRecord(Contract):
    """One deployment of the model to production (append-only table :attr:`TABLE`)."""

    TABLE: ClassVar[str] = "model_deployments"

    schema_version: Literal[1] = 1
    model_version: str
    model_name: str
    model_id: str
    model_crn: str | None = None
    build_id: str
    deployment_id: str
    deployment_crn: str | None = None
    #: where the model's access key is kept; never the key itself
    access_key_ref: str
    artifact_path: str
    metadata_path: str
    experiment_id: ExperimentId
    factory_run_id: str
    grid_hash: str
    data_snapshot_hash: str
    code_version: str
    chosen_by: ChosenBy
    chosen_by_user: str | None = None
    choice_reason: str
    gate_reason: str
    gate_override: bool
    #: the gate's paired comparisons (:class:`PairedDifference`), shown where the decision is reviewed
    gate_evidence: list[PairedDifference] = Field(default_factory=list)
    replaced_deployment_ids: list[str] = Field(default_factory=list)
    deployed_at: str
    #: ``deploy``: a chosen experiment, retrained and gated; ``rollback``: a version recorded here
    #: before, redeployed from its files as it was (no review, retrain or gate); ``ab_start``: a
    #: gated challenger (``model_version``) deployed beside the champion (``champion_version``),
    #: deciding for ``challenger_share`` of the customers; ``ab_promote`` / ``ab_end``: the test's
    #: verdict, the challenger or the champion redeployed alone (as a rollback is)
    action: Literal["deploy", "rollback", "ab_start", "ab_promote", "ab_end"] = "deploy"
    #: who asked for the rollback and why (None for a deploy)
    requested_by: str | None = None
    request_reason: str | None = None
    #: the share of customers the endpoint offers a uniformly random offer (None: recorded
    #: before the deployment carried it)
    exploration_epsilon: float | None = None
    #: during an A/B test (``ab_start``), the champion deciding for the other customers
    champion_version: str | None = None
    challenger_share: float = 0.0
    #: the test's id: the endpoint's arm hash salt (``MF_POLICY_TEST_ID``)
    test_id: str | None = None

    @model_validator(mode="after")
    def _test_fields(self) -> "DeploymentRecord":
        if self.action == "ab_start":
            if not self.champion_version or not self.test_id or not 0 < self.challenger_share < 1:
                raise ValueError("an ab_start record needs champion_version, test_id and a challenger_share in (0, 1)")
            if self.champion_version == self.model_version:
                raise ValueError(f"an A/B test needs two versions; both are {self.model_version}")
        elif self.champion_version or self.challenger_share or self.test_id:
            raise ValueError(f"only an ab_start record has champion_version, challenger_share and test_id "
                             f"(this one is {self.action})")
        return self

    @property
    def champion(self) -> str:
        """The version deciding for the champion arm (every customer outside an A/B test)."""
        return self.champion_version or self.model_version


class RollbackRequest(Contract):
    """A reviewer's request to serve an earlier model version again (append-only table
    :attr:`TABLE`). The dashboard records it; the DAG ``rollback_requests`` has
    ``deploy_best_model`` carry it out. It is handled once a rollback
    :class:`DeploymentRecord` of its version is recorded at or after ``requested_at``."""

    TABLE: ClassVar[str] = "model_rollback_requests"

    schema_version: Literal[1] = 1
    #: 16 hex of sha256 over (model_version, requested_by, requested_at): the deploy run's id
    request_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    model_version: str = Field(pattern=r"^[0-9a-z][0-9a-z._-]{0,99}$")
    requested_by: str = Field(min_length=1)  # the authenticated user, never typed in
    reason: str = Field(min_length=1)
    requested_at: str = Field(min_length=1)  # ISO 8601, UTC
    #: the version serving when the request was made
    serving_version: str | None = None


# --------------------------------------------------------------------------------------------
# Monitoring: an alert raised on a window, and the retrain it asks for

AlertKind = Literal["feature_drift", "estimated_performance", "realised_performance", "calibration", "policy_value",
                    "ab_test"]


class MonitoringAlert(Contract):
    """A monitoring threshold crossed for a model version (append-only table :attr:`TABLE`).

    ``model_monitoring`` raises it; the DAG then triggers ``model_factory`` on history plus
    ``customer_interactions`` and records that run's id in ``retrain_run_id`` (or the earlier
    retrain that still answers the model version's alerts: ``monitoring.retrain_cooldown_minutes``).
    """

    TABLE: ClassVar[str] = "model_alerts"

    schema_version: Literal[1] = 1
    alert_id: str = Field(min_length=1)  # stable: "<as_of_window>/<model_version>/<kind>/<dimension>"
    as_of_window: str = Field(min_length=1)
    cohort_start: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    kind: AlertKind
    metric: str = Field(min_length=1)
    dimension: str = ""
    value: float
    threshold: float
    message: str = Field(min_length=1)
    raised_at: str = Field(min_length=1)  # ISO 8601, UTC
    retrain_run_id: str | None = None
