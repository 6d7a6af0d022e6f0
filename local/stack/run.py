"""`make run`: the factory end to end on the stack of `make up`.

Uses the stack running on ``var/`` (:class:`~stack.running.RunningStack`), or starts it with
``make up``'s machinery and stops it at the end (unless ``--keep-up`` or
``MODEL_FACTORY_KEEP_UP=1``). Makes sure the simulated training table exists, triggers
``model_factory`` over Airflow's REST API (the scheduler runs it, as in production) with a short
review window for the deployment it leads to, shows the experiments' progress, then prints what
became of *this* run: its leaderboard, or the error of the task that failed. Then the deployment
(:func:`stack.deploy.follow_deployment`), the closed loop (:func:`stack.closed_loop.closed_loop_demo`)
and where everything is. Exits 0 only if all of it succeeded; Ctrl-C (130) and SIGTERM (143)
mark the factory run failed, stop the CML runs it started and the stack if this command started it.

One ``make run`` per ``var/`` at a time (``var/run.lock``); ``make up``'s stack is shared.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from stack.airflow_api import FINISHED_RUN_STATES, AirflowApiError
from stack.closed_loop import DEMO_CONFIG, closed_loop_demo
from stack.deploy import follow_deployment
from stack.env import DEFAULT_ROWS, DEFAULT_SEED, REPO, StackPaths, config_dirs, stack_paths
from stack.local import (
    Interrupted,
    StackBusyError,
    acquire_driver_lock,
    interruptible,
    wait_for_stack_lock,
)
from stack.processes import StateFileError
from stack.running import RunningStack, StackNotUp
from stack.up import START_TIMEOUT_S, down, start_stack

__all__ = ["DEFAULT_ROWS", "DEFAULT_SEED", "run"]

DAG_ID = "model_factory"
#: the deployment this run leads to asks for a review, which times out to its default after this
REVIEW_WINDOW_MINUTES = 0.4
RUN_TIMEOUT_S = 45 * 60
TICK_S = 2.0
#: progress lines at most this often (each one the state then)
PROGRESS_EVERY_S = 10.0
#: a failed instance of this mapped task is a failed experiment: an outcome (in the
#: leaderboard), not the cause of a failed run
EXPERIMENT_TASKS = ("run_experiment",)
#: after the run is marked failed, its experiment runs are looked for (and stopped) this long:
#: a task being killed may still have submitted one
STOP_SWEEP_S = 20.0
KEEP_UP_ENV = "MODEL_FACTORY_KEEP_UP"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _indented(text: str, prefix: str = "  ") -> str:
    return textwrap.indent(text, prefix)


def dag_run_marker(run_id: str) -> dict[str, str]:
    """The environment every CML run of this factory run carries (the provider's DAG-run key)."""
    from cml_provider.operators.cml import DAG_RUN_KEY_ENV

    return {DAG_RUN_KEY_ENV: f"{DAG_ID}/{run_id}"}


def experiment_runs(cml, run_id: str) -> list:
    """The CML runs this factory run started (its marker), newest first."""
    from factory_tasks.core.names import EXPERIMENT_JOB_PREFIX

    marker = dag_run_marker(run_id)
    return [run for job in cml.list_jobs() if job.name.startswith(EXPERIMENT_JOB_PREFIX)
            for run in cml.list_job_runs(job.id, max_pages=5) if run.matches(marker)]


class Progress:
    """A line when it has changed, at most every :data:`PROGRESS_EVERY_S`: this factory run's CML
    runs by state (from the workspace, by the run's marker) and its task instances by state (from
    the REST API). Raises :class:`StackNotUp` once a process of the stack has ended: the run
    cannot finish then."""

    def __init__(self, stack: RunningStack, run_id: str):
        self.stack = stack
        self.run_id = run_id
        self.cml = stack.cml_hook(retry_limit=1, timeout=10)
        self.last = ""
        self.printed_at = -PROGRESS_EVERY_S
        self.problem = ""

    def __call__(self, dag_run: dict[str, Any]) -> None:
        self.stack.check_alive()
        try:
            if dag_run.get("state") == "queued":
                line = self.queued()
            else:
                line = f"{self.experiments()}; tasks: {self.tasks()}"
        except Exception as exc:  # a missed tick is harmless; say why once
            if str(exc) != self.problem:
                self.problem = str(exc)
                _say(f"  (progress unavailable: {exc})")
            return
        finished = dag_run.get("state") in FINISHED_RUN_STATES  # the last word is always shown
        if line != self.last and (finished or time.monotonic() - self.printed_at >= PROGRESS_EVERY_S):
            self.last, self.printed_at = line, time.monotonic()
            _say(f"{time.strftime('%H:%M:%S')} {line}")

    def queued(self) -> str:
        """Why the run waits: the DAG runs one at a time, or the scheduler has not started it yet."""
        others = [r["dag_run_id"] for r in self.stack.api.dag_runs(DAG_ID, state=["running"])
                  if r["dag_run_id"] != self.run_id]
        if others:
            return f"run queued behind {DAG_ID} run {others[0]} (one at a time; Airflow UI, Dags → {DAG_ID})"
        return "run queued: the scheduler starts it in a moment"

    def experiments(self) -> str:
        from cml_provider.states import JobRunStatus

        counts: Counter = Counter()
        for run in experiment_runs(self.cml, self.run_id):
            if run.status.is_successful:
                counts["succeeded"] += 1
            elif run.status.is_terminal:
                counts["failed"] += 1
            elif run.status is JobRunStatus.SCHEDULING:
                counts["queued"] += 1
            else:
                counts["running"] += 1
        if not counts:
            return "experiments: none submitted yet"
        return (f"experiments: {sum(counts.values())} submitted | {counts['queued']} queued | "
                f"{counts['running']} running | {counts['succeeded']} succeeded | {counts['failed']} failed")

    def tasks(self) -> str:
        by_task: dict[str, Counter] = {}
        for ti in self.stack.api.task_instances(DAG_ID, self.run_id):
            by_task.setdefault(ti["task_id"], Counter())[ti.get("state") or "waiting"] += 1
        parts = []
        for task_id, states in by_task.items():
            if sum(states.values()) == 1:
                parts.append(f"{task_id} {next(iter(states))}")
            else:
                parts.append(f"{task_id} " + " ".join(f"{n} {s}" for s, n in sorted(states.items())))
        return ", ".join(parts) or "none yet"


def stop_experiment_runs(stack: RunningStack, run_id: str, sweep_s: float = STOP_SWEEP_S) -> int:
    """Stop every active CML run of the factory run, until none has been seen for two sweeps in
    a row (or ``sweep_s`` has passed); how many were stopped."""
    cml = stack.cml_hook(retry_limit=2, timeout=10)
    stopped: set[str] = set()
    quiet = 0
    deadline = time.monotonic() + sweep_s
    while quiet < 2 and time.monotonic() < deadline:
        active = [r for r in experiment_runs(cml, run_id) if r.status.is_active]
        for run in active:
            cml.stop_job_run(run.job_id, run.id)
            stopped.add(run.id)
        quiet = 0 if active else quiet + 1
        time.sleep(1.0)
    return len(stopped)


class Driver:
    """What this ``make run`` holds: the stack it uses (and whether it started it), its factory run."""

    def __init__(self, paths: StackPaths, keep_up: bool):
        self.paths = paths
        self.keep_up = keep_up
        self.stack: RunningStack | None = None
        self.started_stack = False
        self.stopped_stack = False
        self.run_id: str | None = None
        #: the grid's copy in var/config → the file named on the command line, for messages
        self.shown_paths: dict[str, str] = {}

    def shown(self, text: str) -> str:
        for copy, original in self.shown_paths.items():
            text = text.replace(copy, original)
        return text

    def bring_up(self, rows: int) -> RunningStack | int:
        """``make up``'s stack (step 1), started if none is up; an exit code if it did not start."""
        paths = self.paths
        began = time.monotonic()
        lock = wait_for_stack_lock(paths, f"make run (pid {os.getpid()}), starting the stack", START_TIMEOUT_S + 60,
                                   waiting=lambda why: _say(f"  waiting until make up has started the stack: {why}"))
        with lock:
            stack = RunningStack.find(paths)
            if stack is not None:
                _say(f"[1/8] using the stack of make up (up since {stack.state.started_at}): Airflow "
                     f"{stack.state.airflow_url}, CML workspace {stack.workspace_url}; it keeps running afterwards")
                self.stack = stack
                return stack
            _say(f"[1/8] no stack is up under {paths.var}: starting it (stopped at the end; --keep-up keeps it)")
            rc = start_stack(paths, rows=rows, command="make run", announce=False)
            if rc != 0:
                return rc
            self.started_stack = True
            self.stack = RunningStack.find(paths)
        if self.stack is None:
            raise StackNotUp(f"the stack under {paths.var} ended right after it started; its logs are in {paths.logs}")
        _say(f"      stack up after {time.monotonic() - began:.0f}s: Airflow {self.stack.state.airflow_url}, "
             f"CML workspace {self.stack.workspace_url}")
        return self.stack

    def grid_for_stack(self, grid: Path) -> Path:
        """The grid path the factory run is given: the file itself inside a config folder of the
        stack, else a copy in ``var/config`` (a config folder), named by its content."""
        if any(grid.is_relative_to(folder) for folder in config_dirs(self.paths)):
            return grid
        data = grid.read_bytes()
        copy = self.paths.config / f"{grid.stem}-{hashlib.sha256(data).hexdigest()[:12]}{grid.suffix or '.yaml'}"
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(data)
        self.shown_paths[str(copy)] = str(grid)
        return copy

    def end_factory_run(self) -> str:
        """Mark the factory run failed unless it has finished, and stop its CML runs; what was done."""
        if self.stack is None or self.run_id is None:
            return ""
        done = []
        try:
            unfinished = self.stack.api.fail_unfinished(DAG_ID, self.run_id)
            if unfinished:
                done.append(f"factory run {self.run_id} marked failed")
        except AirflowApiError as exc:
            unfinished = True
            done.append(f"factory run {self.run_id} not marked failed ({exc})")
        try:
            stopped = stop_experiment_runs(self.stack, self.run_id)
            if stopped or unfinished:
                done.append(f"{stopped} experiment run{'s' if stopped != 1 else ''} of it stopped")
        except Exception as exc:  # the workspace may be what ended
            done.append(f"its experiment runs not stopped ({exc})")
        return ", ".join(done)

    def stop_stack(self) -> None:
        """``make down`` if this command started the stack (not with ``--keep-up``); once."""
        if not self.started_stack or self.stopped_stack:
            return
        self.stopped_stack = True
        if self.keep_up:
            _say("The stack make run started keeps running (--keep-up): `make down` stops it.")
            return
        _say("Stopping the stack make run started (`make run --keep-up` keeps it running)…")
        if down(quiet=True) != 0:
            _say("  not everything stopped: `make status` says what still runs, `make down` stops it.")

    @property
    def stack_left(self) -> str:
        if self.stack is None:
            return "no stack was started"
        if self.started_stack and not self.keep_up:
            return "the stack make run started is stopped"
        return "the stack keeps running"


def run(grid_path: str = "config/grid.yaml", rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED,
        keep_up: bool = False, ab_test: bool = True) -> int:
    """`make run`; returns the exit code (0: the factory run, its deployment and the closed loop succeeded).
    ``ab_test=False``: the closed loop's retrain is not A/B tested; the gate alone decides it."""
    logging.basicConfig(level=logging.WARNING)
    paths = stack_paths()
    keep_up = keep_up or os.environ.get(KEEP_UP_ENV, "") not in ("", "0")
    # this process reads the warehouse and the object store as the stack's tasks do
    os.environ["AIRFLOW_HOME"] = str(paths.airflow_home)
    os.environ["MODEL_FACTORY_ARTIFACTS"] = str(paths.artifacts)
    _say(f"Model Factory — embedded default stack under {paths.var}")
    grid = _grid_file(grid_path)
    if not grid.is_file():
        _say(f"make run: no grid file {grid_path} ({grid})")
        return 2
    try:
        driver_lock = acquire_driver_lock(paths)
    except StackBusyError as exc:
        _say(f"make run refused: {exc}.")
        _say("Wait for it to end (or stop it), or set MODEL_FACTORY_VAR to another folder.")
        return 75  # EX_TEMPFAIL: try again later
    driver = Driver(paths, keep_up)
    with driver_lock, interruptible():
        try:
            return _run(driver, grid, rows, seed, ab_test)
        except Interrupted as exc:
            done = driver.end_factory_run()
            driver.stop_stack()
            _say(f"\n{_signal_name(exc.signum)}: {done + '; ' if done else ''}{driver.stack_left}.")
            _say("Run `make run` again to start a new factory run (finished experiments are reused).")
            return 128 + exc.signum
        except (StackNotUp, StackBusyError, StateFileError, AirflowApiError, TimeoutError) as exc:
            _say(f"make run failed: {exc}")
            done = driver.end_factory_run()
            if done:
                _say(f"  {done}")
            return 75 if isinstance(exc, StackBusyError) else 1
        finally:
            driver.stop_stack()


def _signal_name(signum: int) -> str:
    return "Interrupted (Ctrl-C)" if signum == signal.SIGINT else "Terminated"


def _grid_file(grid_path: str) -> Path:
    """The grid named on the command line: absolute, else from here if it exists, else from the repository."""
    path = Path(grid_path).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path if (Path.cwd() / path).exists() else REPO / path
    return path.resolve()


def _run(driver: Driver, grid: Path, rows: int, seed: int, ab_test: bool) -> int:
    from factory_tasks.core.settings import summary_location
    from factory_tasks.loop.history import ensure_training_table
    from factory_tasks.warehouse.outcomes import OutcomeStore
    from factory_tasks.warehouse.summary import refresh_summary

    paths = driver.paths
    started = time.time()
    stack = driver.bring_up(rows)
    if isinstance(stack, int):
        if stack > 128:
            _say(f"\n{_signal_name(stack - 128)}: nothing is left running.")
        return stack
    warehouse = stack.warehouse_hook()
    created = ensure_training_table(warehouse, n_rows=rows, seed=seed)
    _say(f"[2/8] training table historical_customer_interactions "
         f"{f'simulated ({rows} rows, seed {seed})' if created else 'present'} in {paths.warehouse_db}")
    api = stack.api
    dag = api.dag(DAG_ID)
    if dag is None or dag.get("is_paused"):
        _say(f"make run failed: {_dag_not_ready(api, dag)}")
        return 1
    grid_path = driver.grid_for_stack(grid)
    _say(f"[3/8] grid {grid}" + (f", copied to {grid_path} (a config folder of the stack: the tasks read it there)"
                                 if grid_path != grid else " (in a config folder of the stack)"))
    conf = {"grid_path": str(grid_path), "review_window_minutes": REVIEW_WINDOW_MINUTES}
    demo_config = paths.config / DEMO_CONFIG
    if demo_config.is_file():
        # an earlier make run's loop decided this stack's traffic with these settings: the gate
        # reads the champion's live traffic with the same response window
        conf["loop_config_path"] = str(demo_config)
    run_id = api.trigger(DAG_ID, conf)["dag_run_id"]
    driver.run_id = run_id
    run_url = f"{stack.state.airflow_url}/dags/{DAG_ID}/runs/{run_id}"
    _say(f"[4/8] {DAG_ID} triggered over REST: run {run_id} (the deployment it leads to has a "
         f"review window of {REVIEW_WINDOW_MINUTES * 60:.0f} s); {run_url}")
    progress = Progress(stack, run_id)
    final = api.wait_for_run(DAG_ID, run_id, timeout_s=RUN_TIMEOUT_S, tick_s=TICK_S, on_tick=progress)
    state = final["state"]
    summary = summary_location()
    try:
        outcomes = OutcomeStore(warehouse).read(run_id)  # this run's rows only
        refresh_summary(warehouse, summary)
        outcome_error = None
    except Exception as exc:  # e.g. an outcome table of an older layout: the message says what to do
        outcomes, outcome_error = None, f"{type(exc).__name__}: {exc}"
    _say(f"[5/8] {DAG_ID} run {run_id}: {state} after {time.time() - started:.0f}s")
    _say()
    ok = state == "success" and outcome_error is None
    reported: list[str] = []
    if state != "success":
        reported = _report_failure(driver, api.task_instances(DAG_ID, run_id))
    if outcome_error is not None:
        if outcome_error not in reported:  # the same error as the failed task's needs no repeat
            _say(f"This run's outcomes could not be read:\n{_indented(outcome_error)}")
    elif not outcomes.empty:
        _report_outcomes(run_id, outcomes)
    else:
        _say(f"No outcomes were recorded for factory run {run_id}.")
    _say()
    task_logs = paths.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    if not ok:
        _say(f"Task logs: {task_logs}/" + ("" if driver.started_stack and not driver.keep_up else f" and {run_url}"))
        return 1
    deployed = follow_deployment(stack, run_id, started)
    demo = closed_loop_demo(stack, started, grid_path=str(grid_path), ab_test=ab_test) if deployed.ok else None
    driver.stop_stack()
    _where_to_look(driver, summary, task_logs)
    return 0 if deployed.ok and demo is not None and demo.ok else 1


def _dag_not_ready(api, dag: dict[str, Any] | None) -> str:
    if dag is not None:
        return (f"{DAG_ID} is paused in Airflow: unpause it in the UI (Dags → {DAG_ID}), or `make down` and "
                "`make up`, which unpauses the factory's DAGs")
    errors = api.import_errors(f"{DAG_ID}.py")
    if errors:
        lines = [line for line in errors[-1].strip().splitlines() if line.strip()]
        return f"Airflow has no DAG {DAG_ID}: dags/{DAG_ID}.py did not import:\n" + _indented("\n".join(lines[-3:]))
    return f"Airflow has no DAG {DAG_ID} (has the dag-processor parsed dags/? see {api.url}, Dags)"


def _report_failure(driver: Driver, tis: list[dict[str, Any]]) -> list[str]:
    """The first task that failed (by end time) with its error from its structured log, then
    what else failed; a failed experiment is not a cause. Returns the error messages it printed."""
    failed = sorted((t for t in tis if t.get("state") == "failed"), key=lambda t: t.get("end_date") or "")
    causes = [t for t in failed if t["task_id"] not in EXPERIMENT_TASKS]
    messages: list[str] = []
    if causes:
        first = causes[0]
        name = first["task_id"] + (f"[{first['map_index']}]" if first.get("map_index", -1) >= 0 else "")
        try:
            error = driver.stack.api.task_error(DAG_ID, driver.run_id, first["task_id"],
                                                map_index=first.get("map_index", -1),
                                                try_number=first.get("try_number") or 1)
        except AirflowApiError:
            error = None
        if error:
            messages = [driver.shown(error)]
        _say(f"The factory run failed: task {name} failed{':' if error else ' (its error is in its task log).'}")
        for message in messages:
            _say(_indented(message))
        others = list(dict.fromkeys(t["task_id"] for t in causes[1:] if t["task_id"] != first["task_id"]))
        if others:
            _say(f"Then also failed: {', '.join(others)} (see their task logs).")
    elif failed:
        _say("The factory run is marked failed because some experiments failed; their errors are below.")
    else:
        _say("The factory run failed with no task failed (marked failed, or timed out); see the Airflow UI.")
    _say()
    return messages


def _report_outcomes(run_id: str, outcomes) -> None:
    from factory_tasks.training.leaderboard import format_leaderboard

    reused = int((outcomes["run_status"] == "REUSED").sum())
    failed = int((outcomes["status"] != "succeeded").sum())
    _say(f"Factory run {run_id}: {len(outcomes)} experiments, {len(outcomes) - reused} run now, "
         f"{reused} reused from identical earlier experiments, {failed} failed")
    _say(format_leaderboard(outcomes))


def _where_to_look(driver: Driver, summary, task_logs: Path) -> None:
    paths, stack = driver.paths, driver.stack
    up = not driver.started_stack or driver.keep_up
    _say()
    _say("Where to look:")
    _say(f"  outcome table     experiment_outcomes in {paths.warehouse_db} (connection model_factory_warehouse)")
    _say(f"  deployments       model_deployments in {paths.warehouse_db}; promotions in model_promotions")
    _say(f"  summary CSV       {summary}")
    _say(f"  model artifacts   {paths.workspace_root}/projects/<project id>/files/experiments/<experiment id>/ "
         "and .../files/models/<model version>/")
    _say(f"  task logs         {task_logs}/ (and the other DAGs' beside it)")
    _say("  closed loop       prediction_log, customer_responses, customer_interactions, model_monitoring, "
         f"model_alerts in {paths.warehouse_db}")
    where = stack.state.airflow_url if up else "http://127.0.0.1:8080 after `make up` (the long-running stack)"
    _say(f"  Airflow UI        {where} → DAGs model_factory, deploy_best_model, customer_interactions, "
         f"model_monitoring; user admin, password in {paths.airflow_passwords_file}")
    dashboards = ", ".join(stack.state.dashboard_urls) if up and stack.state.dashboard_urls else \
        "http://127.0.0.1:5006/experiments_app and /monitoring_app with make up (or make dashboard alone)"
    _say(f"  dashboards        {dashboards}")


if __name__ == "__main__":
    sys.exit(run())
