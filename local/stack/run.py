"""`make run`: the factory end to end on the embedded default.

Starts the local CML workspace, makes sure the Airflow metadata DB and the simulated training
table exist, runs the ``model_factory`` DAG with ``airflow dags test`` while showing the
experiments' progress, then prints what became of *this* DAG run: its leaderboard, or the
error of the task that failed, and where everything is. Exits 0 only if the DAG run succeeded.
Stops what it started, also on Ctrl-C (exit 130) and SIGTERM (exit 143).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from stack.airflow_cli import (
    AirflowCommandError,
    TaskState,
    dags_test,
    find_dag_run,
    log_errors,
    task_errors,
    task_states,
)
from stack.closed_loop import closed_loop_demo
from stack.deploy import deploy_and_ask
from stack.env import PROJECT_NAME, REPO, StackPaths, stack_paths
from stack.local import StackBusyError, local_stack

DAG_ID = "model_factory"
DEFAULT_ROWS = 64_000
DEFAULT_SEED = 7
RUN_TIMEOUT_S = 45 * 60
#: the DAG's waits (dags/model_factory.py) fail when their experiment failed: that is an
#: outcome (in the leaderboard), not the cause of a failed run
EXPERIMENT_WAIT_TASKS = ("wait_for_long_experiment", "wait_for_short_experiment")


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _indented(text: str, prefix: str = "  ") -> str:
    return textwrap.indent(text, prefix)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: unwinds like KeyboardInterrupt, so everything started is stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interruptible() -> Iterator[None]:
    """The first SIGINT/SIGTERM raises :class:`Interrupted`; later ones, while stopping, are
    only acknowledged, so the clean-up is not cut short."""

    def stopping(_signum, _frame):
        _say("  (stopping, please wait…)")

    def first(signum, _frame):
        signal.signal(signal.SIGINT, stopping)
        signal.signal(signal.SIGTERM, stopping)
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = {s: signal.signal(s, first) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class WorkspaceStopped(RuntimeError):
    """The local workspace server ended while the DAG ran."""


class Progress:
    """Counts this factory run's experiment job runs by state, printing a line when it changes.

    Goes through the provider's hook (``CmlHook``) and its state enum. ``since`` (epoch
    seconds) keeps earlier runs out: only this command uses the workspace (``stack_lock``).
    Raises :class:`WorkspaceStopped` if the local server has died: the DAG cannot finish then.
    """

    def __init__(self, cml, since: float, workspace=None):
        self.cml = cml
        self.since = since
        self.workspace = workspace
        self.last = ""
        self.problem = ""

    def __call__(self) -> None:
        if self.workspace is not None and not self.workspace.is_running():
            code = self.workspace.returncode
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            raise WorkspaceStopped(
                f"the local CML workspace stopped during the run ({how}), so the DAG run was stopped too; "
                f"the workspace's log: {self.workspace.log_path}"
            )
        try:
            counts = self.counts()
        except Exception as exc:  # a missed tick is harmless; say why once
            if str(exc) != self.problem:
                self.problem = str(exc)
                _say(f"  (progress unavailable: {exc})")
            return
        if not counts:
            return
        line = (f"  experiments: {sum(counts.values())} submitted | {counts['queued']} queued | "
                f"{counts['running']} running | {counts['succeeded']} succeeded | {counts['failed']} failed")
        if line != self.last:
            self.last = line
            _say(f"{time.strftime('%H:%M:%S')} {line}")

    def counts(self) -> Counter:
        from cml_provider.states import JobRunStatus

        counts: Counter = Counter()
        for status in self._states():
            if status.is_successful:
                counts["succeeded"] += 1
            elif status.is_terminal:
                counts["failed"] += 1
            elif status is JobRunStatus.SCHEDULING:
                counts["queued"] += 1
            else:
                counts["running"] += 1
        return counts

    def _states(self):
        from factory_tasks.core.names import EXPERIMENT_JOB_PREFIX

        for job in self.cml.list_jobs():
            if not job.name.startswith(EXPERIMENT_JOB_PREFIX):
                continue
            for run in self.cml.list_job_runs(job.id, max_pages=20):
                if _epoch(run.created_at) >= self.since:
                    yield run.status


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run(grid_path: str = "config/grid.yaml", rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> int:
    """`make run`; returns the exit code (0: the DAG run succeeded)."""
    from cml_workspace.server_process import WorkspaceBusyError, WorkspaceStartError

    logging.basicConfig(level=logging.WARNING)
    paths = stack_paths()
    try:
        with _interruptible():
            return _run(paths, grid_path, rows, seed)
    except Interrupted as exc:
        _say(f"\n{'Interrupted (Ctrl-C)' if exc.signum == signal.SIGINT else 'Terminated'}: the DAG run, "
             "the local CML workspace and its experiment runs are stopped.")
        _say("Run `make run` again to start a new factory run (finished experiments are reused).")
        return 128 + exc.signum
    except (StackBusyError, WorkspaceBusyError) as exc:
        _say(f"make run refused: {exc}.")
        _say("Wait for it to end (or stop it), or set MODEL_FACTORY_VAR to another folder.")
        return 75  # EX_TEMPFAIL: try again later
    except WorkspaceStartError as exc:
        _say(f"The local CML workspace did not start: {str(exc).splitlines()[0]}")
        _say(f"Its log: {paths.workspace_root / 'server.log'}")
        return 1
    except (WorkspaceStopped, AirflowCommandError) as exc:
        _say(f"make run failed: {exc}")
        return 1


def _run(paths: StackPaths, grid_path: str, rows: int, seed: int) -> int:
    from factory_tasks.core.settings import summary_location
    from factory_tasks.loop.history import ensure_training_table
    from factory_tasks.warehouse.outcomes import OutcomeStore
    from factory_tasks.warehouse.summary import refresh_summary

    started = time.time()
    _say(f"Model Factory — embedded default stack under {paths.var}")
    with local_stack(paths) as stack:
        _say(f"[1/8] local CML workspace up at {stack.workspace.url} "
             f"(project {PROJECT_NAME!r}, budget {stack.workspace.cpus} cores)")
        _say(f"[2/8] Airflow metadata DB {'created' if stack.migrated_now else 'ready'} in {paths.airflow_home}")
        os.environ["MODEL_FACTORY_ARTIFACTS"] = stack.env["MODEL_FACTORY_ARTIFACTS"]
        warehouse = stack.warehouse_hook()
        created = ensure_training_table(warehouse, n_rows=rows, seed=seed)
        _say(f"[3/8] training table historical_customer_interactions "
             f"{f'simulated ({rows} rows, seed {seed})' if created else 'already present'} in {paths.warehouse_db}")
        run_log = paths.logs / f"{DAG_ID}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        log_offset = run_log.stat().st_size if run_log.exists() else 0
        _say(f"[4/8] running DAG {DAG_ID} (airflow dags test); log: {run_log}")
        # the run is found afterwards by its logical date (one run per DAG and logical date)
        logical_date = datetime.now(timezone.utc)
        progress = Progress(stack.cml_hook(retry_limit=1, timeout=10), since=time.time() - 1, workspace=stack.workspace)
        # the grid named on this command line is the operator's own choice: its folder is a
        # config folder of this run (a trigger's conf is still held to the configured ones)
        grid_folder = (REPO / grid_path).resolve().parent
        stack.env["MODEL_FACTORY_CONFIG_DIRS"] += os.pathsep + str(grid_folder)
        rc = dags_test(DAG_ID, {"grid_path": grid_path}, stack.env, run_log, logical_date=logical_date,
                       timeout_s=RUN_TIMEOUT_S, on_tick=progress)
        try:
            dag_run = find_dag_run(DAG_ID, logical_date, stack.env)
        except AirflowCommandError:  # e.g. the DAG never parsed, so Airflow does not know it
            dag_run = None
        if dag_run is None:
            _say(f"[5/8] DAG {DAG_ID} did not run (airflow dags test exit code {rc}):")
            for error in log_errors(run_log, log_offset)[-3:] or ["(no error in the log)"]:
                _say(_indented(error))
            _say(f"See {run_log}")
            return rc or 1
        tasks = None
        if dag_run.state != "success":
            try:
                tasks = task_states(DAG_ID, dag_run.run_id, stack.env)
            except AirflowCommandError as exc:
                _say(f"  (task states unavailable: {exc}; reading the log only)")
        summary = summary_location()
        try:
            outcomes = OutcomeStore(warehouse).read(dag_run.run_id)  # this run's rows only
            refresh_summary(warehouse, summary)
            outcome_error = None
        except Exception as exc:  # e.g. an outcome table of an older layout: the message says what to do
            outcomes, outcome_error = None, f"{type(exc).__name__}: {exc}"
        _say(f"[5/8] DAG run {dag_run.run_id}: {dag_run.state} after {time.time() - started:.0f}s")
        _say()
        ok = dag_run.state == "success" and outcome_error is None
        reported: list[str] = []
        if dag_run.state != "success":
            reported = _report_failure(tasks, task_errors(run_log, log_offset))
        if outcome_error is not None:
            if outcome_error not in reported:  # the same error as the failed task's needs no repeat
                _say(f"This run's outcomes could not be read:\n{_indented(outcome_error)}")
        elif not outcomes.empty:
            _report_outcomes(dag_run.run_id, outcomes)
        else:
            _say(f"No outcomes were recorded for factory run {dag_run.run_id}.")
        _say()
        if not ok:
            _say(f"DAG run log: {run_log}")
            return rc or 1
        deployed = deploy_and_ask(stack, dag_run.run_id, started)
        demo = closed_loop_demo(stack, started) if deployed.ok else None
    _say()
    _say("Where to look:")
    _say(f"  outcome table     experiment_outcomes in {paths.warehouse_db} (connection model_factory_warehouse)")
    _say(f"  deployments       model_deployments in {paths.warehouse_db}; promotions in model_promotions")
    _say(f"  summary CSV       {summary}")
    _say(f"  model artifacts   {paths.workspace_root}/projects/<project id>/files/experiments/<experiment id>/ "
         "and .../files/models/<model version>/")
    _say(f"  DAG run logs      {run_log}, {deployed.log}")
    _say("  closed loop       prediction_log, customer_responses, customer_interactions, model_monitoring, "
         f"model_alerts in {paths.warehouse_db}")
    _say("  Airflow UI        make up (the long-running stack; make down stops it), then open "
         "http://127.0.0.1:8080 → DAGs model_factory, deploy_best_model, customer_interactions, model_monitoring; "
         f"user admin, password in {paths.airflow_passwords_file}")
    _say("  dashboards        http://127.0.0.1:5006/experiments_app and /monitoring_app with make up "
         "(or make dashboard alone)")
    return 0 if deployed.ok and demo is not None and demo.ok else 1


def _report_failure(tasks: list[TaskState] | None, errors: dict[str, str]) -> list[str]:
    """The first task that failed (by end time) with its exception, then what failed after it.
    ``tasks``: the run's task states (None if Airflow could not say); ``errors``: each task's
    last exception from the run's log. Returns the error messages it printed."""

    def errors_of(task_id: str) -> list[str]:
        found = [msg for key, msg in errors.items() if key == task_id or key.startswith(task_id + "[")]
        return list(dict.fromkeys(found))  # distinct, in order

    if tasks is not None:  # what failed for good, in the order it ended
        failed = [t.task_id for t in sorted(tasks, key=lambda t: t.end_date or "") if t.state == "failed"]
    else:  # in the order the log shows the failures
        failed = [key.partition("[")[0] for key in errors]
    causes = list(dict.fromkeys(t for t in failed if t not in EXPERIMENT_WAIT_TASKS))
    experiments_failed = any(t in EXPERIMENT_WAIT_TASKS for t in failed)
    messages: list[str] = []
    if causes:
        first = causes[0]
        messages = errors_of(first)[:3]
        where = ":" if messages else " (its error is in the DAG run log)."
        _say(f"The factory run failed: task {first} failed{where}")
        for message in messages:
            _say(_indented(message))
        if causes[1:]:
            _say(f"Then also failed: {', '.join(causes[1:])} (see the DAG run log).")
    elif experiments_failed:
        _say("The factory run is marked failed because some experiments failed; their errors are below.")
    else:
        _say("The factory run failed; see the DAG run log.")
    _say()
    return messages


def _report_outcomes(run_id: str, outcomes) -> None:
    from factory_tasks.training.leaderboard import format_leaderboard

    reused = int((outcomes["run_status"] == "REUSED").sum())
    failed = int((outcomes["status"] != "succeeded").sum())
    _say(f"Factory run {run_id}: {len(outcomes)} experiments, {len(outcomes) - reused} run now, "
         f"{reused} reused from identical earlier experiments, {failed} failed")
    _say(format_leaderboard(outcomes))


if __name__ == "__main__":
    sys.exit(run())
