"""The closed loop's settings (``config/closed_loop.yaml``): traffic, responses, drift, monitoring.

Validated like the grid: strict types, unknown keys named with the valid ones, every problem
reported as ``file:line: key.path: message``.

    .venv/bin/python -m factory_tasks.loop.config validate config/closed_loop.yaml
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from factory_tasks.core.config_types import StrictModel
from factory_tasks.core.limits import MAX_CHALLENGER_SHARE, MAX_REVIEW_WINDOW_MINUTES
from factory_tasks.core.schema import CHANNELS, CUSTOMER_COLUMNS, OFFERS, ZIP_CODES
from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.training.grid import _describe, _format, _in_file_order, not_this_kind_of_file
from factory_tasks.training.grid_yaml import UnsafeYamlError, describe_yaml_error, parse_yaml

DEFAULT_LOOP_CONFIG = REPO_ROOT / "config" / "closed_loop.yaml"
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Minutes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: a month: a longer cooldown would leave a drifting champion unanswered for longer than anyone watches
MAX_RETRAIN_COOLDOWN_MINUTES = 30 * 24 * 60


class LoopConfigError(ValueError):
    """The closed-loop file is missing, unreadable or invalid. ``problems``: each with its line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = str(source)
        self.problems = list(problems)
        super().__init__(f"invalid closed-loop config {self.source}:\n" + "\n".join(f"  {p}" for p in self.problems))


def _utc(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"must be an ISO-8601 time like 2026-12-01T00:00:00Z (got {text!r})") from None
    if moment.tzinfo is None:
        raise ValueError(f"must name its time zone, e.g. 2026-12-01T00:00:00Z (got {text!r})")
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


#: a key the caller's settings no longer have, and where its setting went
RETIRED_TRAFFIC_KEYS: dict[str, str] = {
    "exploration_share": ("exploration_share is no longer a caller's setting: the endpoint explores, with the "
                          "share its deployment sets (deploy_best_model's param exploration_epsilon, default 0.1; "
                          "MF_EXPLORATION_EPSILON). Remove the key"),
}


class TrafficConfig(StrictModel):
    """The simulated callers: how many, in which requests, from which seed. They only ask and log:
    the offer made, exploration and the arms are the deployed policy's."""

    customers_per_window: int = Field(2000, ge=1, le=1_000_000)
    request_batch: int = Field(200, ge=1, le=1000)
    seed: int = Field(11, ge=0, le=2**32 - 1)

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            retired = [RETIRED_TRAFFIC_KEYS[k] for k in data if k in RETIRED_TRAFFIC_KEYS]
            if retired:
                raise ValueError("; ".join(retired))
        return data


class ResponsesConfig(StrictModel):
    window_minutes: Minutes = 180.0
    delay_median_minutes: Minutes = 35.0
    delay_sigma: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] = 0.9
    duplicate_share: Share = 0.02
    unknown_share: Share = 0.005


class DriftConfig(StrictModel):
    """A change in the simulated world from ``start``: an offer's effect on a segment, a customer mix."""

    enabled: bool = False
    start: Annotated[str, AfterValidator(_utc)] = "2026-12-01T00:00:00Z"
    segment: dict[str, str | int] = Field(default_factory=lambda: {"channel": "Web"})
    offer: str = "Discount"
    log_odds_change: Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)] = -1.2
    channel_shares: dict[str, Share] | None = None

    @model_validator(mode="after")
    def _known_names(self) -> "DriftConfig":
        if self.offer not in OFFERS:
            raise ValueError(f"offer {self.offer!r} is not one of {list(OFFERS)}")
        unknown = set(self.segment) - set(CUSTOMER_COLUMNS)
        if unknown:
            raise ValueError(f"segment names unknown column(s) {sorted(unknown)}; valid: {list(CUSTOMER_COLUMNS)}")
        allowed = {"channel": CHANNELS, "zip_code": ZIP_CODES}
        for column, value in self.segment.items():
            if column in allowed and value not in allowed[column]:
                raise ValueError(f"segment.{column} {value!r} is not one of {list(allowed[column])}")
        if self.channel_shares is not None:
            if set(self.channel_shares) != set(CHANNELS):
                raise ValueError(f"channel_shares needs exactly {list(CHANNELS)}")
            if abs(sum(self.channel_shares.values()) - 1.0) > 1e-6:
                raise ValueError(f"channel_shares must sum to 1 (they sum to {sum(self.channel_shares.values()):g})")
        return self


class MonitoringConfig(StrictModel):
    min_labels: int = Field(1000, ge=1)
    drift_metric: Literal["psi", "jensen_shannon"] = "psi"
    drift_warn: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.10
    drift_alert: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.25
    drift_bins: int = Field(10, ge=2, le=100)
    roc_auc_floor: Share = 0.56
    calibration_error_ceiling: Share = 0.05
    policy_confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    retrain_on_alert: bool = True
    #: the review window of the deploy that follows an alert's retrain (None: the deploy DAG's default)
    retrain_review_window_minutes: Annotated[
        float | None, Field(ge=0, le=MAX_REVIEW_WINDOW_MINUTES, allow_inf_nan=False)] = None
    #: above 0, the retrain's challenger, once through the gate, starts an A/B test on this share
    #: of the customers instead of replacing the champion (the deploy's challenger_share)
    retrain_challenger_share: Annotated[float, Field(ge=0, le=MAX_CHALLENGER_SHARE, allow_inf_nan=False)] = 0.0
    #: a retrain asked for by a model version's alerts answers that version's alerts of the
    #: windows starting less than this after its own (they name it and start none; 0: every
    #: alerting window retrains)
    retrain_cooldown_minutes: Annotated[float, Field(ge=0, le=MAX_RETRAIN_COOLDOWN_MINUTES, allow_inf_nan=False)] = 360.0

    @model_validator(mode="after")
    def _warn_below_alert(self) -> "MonitoringConfig":
        if self.drift_warn > self.drift_alert:
            raise ValueError(f"drift_warn ({self.drift_warn}) must not exceed drift_alert ({self.drift_alert})")
        return self


class ABTestConfig(StrictModel):
    """When ``model_monitoring`` concludes a live A/B test (docs/ab-test.md): its always-valid
    interval of challenger − champion, checked every hour, gives a verdict once at least
    ``min_decisions`` matured decisions are in; a test that reaches ``max_decisions`` without one
    ends with the champion kept."""

    alpha: Annotated[float, Field(gt=0, le=0.2, allow_inf_nan=False)] = 0.05
    min_decisions: int = Field(1000, ge=10, le=10_000_000)
    max_decisions: int = Field(50_000, ge=10, le=10_000_000)
    #: where the interval is tightest: roughly the decisions the test expects to need
    planned_decisions: int = Field(5000, ge=10, le=10_000_000)
    #: redeploy on a verdict (off: the verdict is recorded as an alert and the test goes on)
    conclude: bool = True

    @model_validator(mode="after")
    def _min_below_max(self) -> "ABTestConfig":
        if self.min_decisions > self.max_decisions:
            raise ValueError(f"min_decisions ({self.min_decisions}) must not exceed max_decisions "
                             f"({self.max_decisions})")
        return self


class LoopConfig(StrictModel):
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    ab_test: ABTestConfig = Field(default_factory=ABTestConfig)


def load_loop_config(path: str | Path = DEFAULT_LOOP_CONFIG) -> LoopConfig:
    """Read and validate the closed-loop file; raise :class:`LoopConfigError` with every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoopConfigError(source, [f"{source}: file not found (looked at {Path(path).resolve()})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoopConfigError(source, [f"{source}: cannot read the file: {exc}"]) from None
    try:
        doc = parse_yaml(text)
    except UnsafeYamlError as exc:
        raise LoopConfigError(source, [f"{source}:{exc.line}:{exc.column}: {exc.reason}"]) from None
    except yaml.YAMLError as exc:
        line, column, what = describe_yaml_error(exc)
        raise LoopConfigError(source, [f"{source}:{line}:{column}: YAML syntax error: {what}"]) from None
    if doc.data is None:
        return LoopConfig()
    not_a_loop_config = not_this_kind_of_file(doc.data, LoopConfig.model_fields, "closed-loop config")
    if not_a_loop_config:
        raise LoopConfigError(source, [f"{source}:1: {not_a_loop_config}"])
    problems = [_format(source, doc, loc, msg, line=line) for loc, line, msg in doc.duplicate_keys]
    try:
        config = LoopConfig.model_validate(doc.data)
    except ValidationError as exc:
        problems += [_format(source, doc, e["loc"], _describe(e).removeprefix("Value error, ")) for e in exc.errors()]
        raise LoopConfigError(source, _in_file_order(problems)) from None
    if problems:
        raise LoopConfigError(source, _in_file_order(problems))
    return config


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "validate":
        print("usage: python -m factory_tasks.loop.config validate <file>", file=sys.stderr)
        return 2
    try:
        config = load_loop_config(args[1])
    except LoopConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    print(f"{args[1]} is valid: {config.traffic.customers_per_window} customers per window, "
          f"drift {'on' if config.drift.enabled else 'off'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
