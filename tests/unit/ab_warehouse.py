"""A SQLite warehouse with a live A/B test in it, written by the monitoring code itself: simulated
windows of both arms (``tests.monitoring_window``), the test's ``model_deployments`` records, and
``monitor_window`` runs that write the ``ab_*`` rows of ``model_monitoring`` as the DAG does.

Shared by the monitoring dashboard's unit tests and its browser test (not a test module)."""

from __future__ import annotations

from factory_tasks.core.contracts import DeploymentRecord
from factory_tasks.core.schema import DEFAULT_ECONOMICS
from factory_tasks.loop.ab_monitoring import LiveTest
from factory_tasks.loop.alerts import alerts_of_run, monitor_window, record_alerts
from factory_tasks.loop.config import LoopConfig
from factory_tasks.loop.windows import MonitoringWindow, iso
from factory_tasks.warehouse.deployments import DEPLOYMENTS
from tests.monitoring_window import HOUR_MS, deployment_record, record_feed, simulate_window, write_window

TEST_CRN = "crn:cml:deployment/ab-test"


def champion_deploy(version: str, deployed_at: str, deployment_id: str | None = None) -> DeploymentRecord:
    """A plain deployment of ``version`` (the champion before a test, or a model alone)."""
    return deployment_record(version, deployment_id=deployment_id or f"deploy-{version}",
                             deployment_crn=f"crn:cml:deployment/{version}", deployed_at=deployed_at,
                             exploration_epsilon=0.1)


def ab_start(champion: str, challenger: str, deployed_at: str, share: float = 0.5) -> DeploymentRecord:
    """The ``ab_start`` record of a test of ``challenger`` (deciding for ``share``) against ``champion``."""
    return deployment_record(challenger, deployment_id=f"ab-{champion}-{challenger}", deployment_crn=TEST_CRN,
                             deployed_at=deployed_at, action="ab_start", champion_version=champion,
                             challenger_share=share, test_id=f"{champion}:{challenger}", exploration_epsilon=0.1,
                             chosen_by="automatic", gate_reason="policy value +0.2 [+0.05, +0.35] above the champion")


def verdict_record(start: DeploymentRecord, verdict: str, deployed_at: str, reason: str) -> DeploymentRecord:
    """The redeploy carrying out a verdict: ``promote`` (the challenger alone) or ``end`` (the champion)."""
    version = start.model_version if verdict == "promote" else start.champion_version
    what = "the A/B test promotes" if verdict == "promote" else "the A/B test ends with"
    return deployment_record(version, deployment_id=f"{verdict}-{start.test_id}", deployed_at=deployed_at,
                             action=f"ab_{verdict}", requested_by="model_monitoring",
                             request_reason=f"A/B test {start.test_id}: {reason}", exploration_epsilon=0.1,
                             gate_reason=f"{what} {version}: redeployed as it was, without review, retrain or gate")


def write_records(hook, *records: DeploymentRecord) -> None:
    for record in records:
        DEPLOYMENTS.append(hook, record)


def live_test(start: DeploymentRecord) -> LiveTest:
    """The test monitoring runs for ``start``, made as the DAG makes it (from the record's fields)."""
    test = LiveTest.of(start.model_dump(mode="json"))
    assert test is not None
    return test


def simulate_test(hook, start_ms: int, hours: int, champion: str = "v-a", challenger: str = "v-b",
                  challenger_noise: float = 0.0, per_hour: int = 2000, share: float = 0.5, seed: int = 0) -> None:
    """An hour of the champion alone before ``start_ms``, then ``hours`` hours of the test's
    deployment: ``per_hour`` customers an hour, ``share`` of them the challenger's. The champion's
    scores are noisy (worse offers), the challenger's ``challenger_noise``. The response feed runs
    4 h past the test's last hour."""
    write_window(hook, simulate_window(start_ms - HOUR_MS, per_hour, seed=seed + 99, model_version=champion,
                                       score_noise=1.5))
    challengers = round(per_hour * share)
    for h in range(hours):
        for version, n, arm_seed, noise in ((champion, per_hour - challengers, seed + 100 + h, 1.5),
                                            (challenger, challengers, seed + 200 + h, challenger_noise)):
            sim = simulate_window(start_ms + h * HOUR_MS, n, seed=arm_seed, model_version=version, score_noise=noise)
            sim.predictions["deployment_crn"] = TEST_CRN
            write_window(hook, sim)
    for h in range(hours + 5):
        record_feed(hook, start_ms + h * HOUR_MS)


def window_ending(end_ms: int) -> MonitoringWindow:
    return MonitoringWindow.from_interval(iso(end_ms - HOUR_MS), iso(end_ms), 180)


def run_monitoring(hook, ends_ms: list[int], test: LiveTest | None, config: LoopConfig | None = None) -> list[dict]:
    """The hourly ``model_monitoring`` runs of the windows ending at ``ends_ms`` (with the test's rows
    when ``test``), each run's alerts recorded as the DAG records them; the runs' summaries."""
    config = config or LoopConfig()
    summaries = []
    for end_ms in ends_ms:
        window = window_ending(end_ms)
        summaries.append(monitor_window(hook, window, config, DEFAULT_ECONOMICS, test=test))
        record_alerts(hook, alerts_of_run(hook, window, config), None)
    return summaries
