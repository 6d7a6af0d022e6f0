"""Scale: an N-point grid of a tiny model through ``model_factory`` under the real scheduler.

Starts the stack of ``make up`` (``local/stack/up.py``: the local CML workspace, api-server,
scheduler with LocalExecutor, dag-processor, triggerer, dashboards) in a fresh temporary
``var/``, pauses every DAG but ``model_factory`` (the hourly loop DAGs would otherwise run
beside it), triggers ``model_factory`` through the REST API (:class:`stack.airflow_api.AirflowApi`)
on a generated grid file — N logistic regressions, ``C`` swept over N values, 2 CV folds, two
metrics, a small training table — waits until the DAG run ends, stops everything it started
(``make down``'s code) and prints:

* **wall**: the DAG run's start to end as Airflow recorded them;
* **runs' own time**: the sum over the CML runs of ``finished_at - running_at`` (the workspace's
  run records);
* **overhead per experiment**: ``(wall - runs' time / C) / N``, C the most runs that were running
  at the same instant (the cores the workspace could give): everything before the first run,
  the gaps where a core sat idle because the next run was not yet submitted, and everything
  after the last run, per experiment. The serial form ``(wall - runs' time) / N`` beside it;
* **a pool slot's turn**: the median of each phase of a ``run_experiment`` instance — the
  executor's pick-up, the task's start to its CML run created (the submit), the run, the run's
  end to the task's end (the worker's last check, or the triggerer's), the task's end to the next instance queued (the
  scheduler's hand-off) — and their sum: what each of the ``max_parallel`` slots pays per experiment;
* **the pool**: the most CML runs in flight at once (created to finished, from the workspace's
  run records) against the run's ``max_parallel``, which ``plan_experiments`` sizes the pool
  ``model_factory_experiments`` to (deferred task instances counted): never more may be in flight;
* **CML API calls per experiment**: the requests the workspace received between the trigger and
  the end of the DAG run (its access log; ``/health`` excluded) divided by N, by route kind;
* **the experiment job's profile**: where the runs' own time went, summed over the runs (from
  the timings each job records in its ``result.json``);
* **CPU seconds** of each component of the stack during the DAG run (process trees, psutil);
* **the Airflow UI's grid view**: its three requests, timed during and after the run.

Targets (issue #19): overhead <= 0.3 s per experiment, <= 5 CML API calls per experiment, never
more than ``max_parallel`` runs in flight.

    .venv/bin/python benchmarks/grid_scale.py [--experiments 1000] [--rows 2000] [--folds 2]
        [--max-parallel 4] [--timeout 3600] [--var DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cml_provider.hooks import endpoints as cml_endpoints

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_OVERHEAD_S = 0.3
TARGET_CALLS = 5.0
DAG_ID = "model_factory"
EXPERIMENT_TASK = "run_experiment"
#: the grid view's page asks for this many runs
GRID_VIEW_RUNS = 10
#: the CML run's environment names its factory run and its experiment (factory_tasks.core.names)
FACTORY_RUN_ENV, EXPERIMENT_ID_ENV = "MF_FACTORY_RUN_ID", "MF_EXPERIMENT_ID"
#: and the task instance that submitted it (cml_provider.operators.cml.TI_KEY_ENV): .../<map_index>
TI_KEY_ENV = "MF_AIRFLOW_TI_KEY"


# -- the grid file ---------------------------------------------------------------------------------
def grid_document(n: int, *, folds: int = 2, max_parallel: int = 4) -> dict[str, Any]:
    """A valid grid of ``n`` tiny experiments: one logistic regression family, ``C`` = 0.01, 0.02, ...
    (n distinct values, each written with its two decimals), 2 folds, two metrics."""
    if n < 1:
        raise ValueError("the grid needs at least one experiment")
    return {
        "cv": {"folds": folds, "random_state": 0},
        "metrics": ["roc_auc", "log_loss"],
        "ranking_metric": "roc_auc",
        "max_parallel": max_parallel,
        "max_experiments": n,
        "economics": {"conversion_value": 100.0,
                      "offer_costs": {"Discount": 8.0, "Buy One Get One": 4.0, "No Offer": 0.0}},
        "data": {"table": "historical_customer_interactions"},
        "families": {"logistic_regression": {
            "estimator": "LogisticRegression",
            "resources": {"cpu": 1, "memory_gb": 0.5},
            "params": {"C": [round(0.01 * k, 2) for k in range(1, n + 1)], "max_iter": [200]},
        }},
    }


def write_grid(path: Path, n: int, **options: Any) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# benchmarks/grid_scale.py: {n} tiny experiments\n"
                    + yaml.safe_dump(grid_document(n, **options), sort_keys=False))
    return path


# -- the workspace's access log --------------------------------------------------------------------
_ACCESS = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d{3})')
#: the route kinds counted, named after the hook's own endpoint table (what the factory calls)
_KINDS = {
    "LIST_PROJECTS": "list projects", "GET_PROJECT": "get project",
    "LIST_JOBS": "list jobs", "CREATE_JOB": "create job", "GET_JOB": "get job", "UPDATE_JOB": "update job",
    "LIST_JOB_RUNS": "list runs (pages)", "CREATE_JOB_RUN": "create run", "GET_JOB_RUN": "get run",
    "STOP_JOB_RUN": "stop run",
    "DOWNLOAD_FILE": "download file", "UPLOAD_FILE": "upload file", "LIST_FILES": "list files",
    "DELETE_FILE": "delete file",
}


def _route_pattern(template: str) -> re.Pattern:
    """An endpoint's path template as a regex over request paths: ``/{path}`` is any file path
    (or none: the project root), every other parameter one id."""
    parts = re.split(r"(/\{path\}|\{\w+\})", "/" + template)
    regex = "".join("(/.*)?" if part == "/{path}" else "[^/:]+" if part.startswith("{") else re.escape(part)
                    for part in parts)
    return re.compile(regex + r"/?$")


_COMPILED = [(getattr(cml_endpoints, name)[0], _route_pattern(getattr(cml_endpoints, name)[1]), kind)
             for name, kind in _KINDS.items()]


def classify_request(method: str, path: str) -> str | None:
    """The route kind of one request (``None``: not an API call, e.g. ``/health``)."""
    path = unquote(path.split("?", 1)[0])  # the access log keeps the path as sent (`%3Adownload`)
    if not (path.startswith("/api/") or path.startswith("/local/")):
        return None
    for want, pattern, kind in _COMPILED:
        if method == want and pattern.match(path):
            return kind
    if "/models" in path:
        return "models"
    return "other"


def count_requests(lines: Iterable[str]) -> Counter:
    """Requests by route kind in access-log lines (uvicorn's ``"GET /path HTTP/1.1" 200``);
    ``errors`` counts answers >= 400 (any kind) besides."""
    counts: Counter = Counter()
    for line in lines:
        match = _ACCESS.search(line)
        if not match:
            continue
        kind = classify_request(match.group(1), match.group(2))
        if kind is None:
            continue
        counts[kind] += 1
        if int(match.group(3)) >= 400:
            counts["errors"] += 1
    return counts


class AccessLog:
    """Reads the lines a log file gained since the last read (whole lines only)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


# -- the arithmetic ----------------------------------------------------------------------------
def max_concurrency(spans: Sequence[tuple[float, float]]) -> int:
    """The most spans open at one instant (a span ending when another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda e: (e[0], e[1]))
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def overhead_figures(wall_s: float, durations: Sequence[float], concurrency: int, experiments: int) -> dict[str, float]:
    """Orchestration overhead per experiment: ``(wall - sum(durations) / concurrency) / experiments``
    (the work spread over the slots that ran at once), and the serial definition
    ``(wall - sum(durations)) / experiments`` beside it."""
    if experiments < 1 or concurrency < 1:
        raise ValueError("experiments and concurrency must be at least 1")
    runs_s = float(sum(durations))
    critical_s = runs_s / concurrency
    return {"runs_s": runs_s, "critical_path_s": critical_s,
            "overhead_per_experiment_s": (wall_s - critical_s) / experiments,
            "serial_overhead_per_experiment_s": (wall_s - runs_s) / experiments}


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_spans(records: list[dict], start_key: str = "running_at") -> list[tuple[float, float]]:
    return [(when(r[start_key]).timestamp(), when(r["finished_at"]).timestamp())
            for r in records if r.get(start_key) and r.get("finished_at")]


#: the experiment job's profile, in the order a run spends it (``job_profile``'s keys)
PROFILE_PARTS = (
    ("start", "process start: running_at to the job's code (fork, script, imports not preloaded)"),
    ("code_version", "hashing the code it runs, and its lazy imports"),
    ("snapshot", "snapshot load: read the Parquet file, check its schema and content hash"),
    ("fit", "fitting, every fold"),
    ("score", "scoring, every fold (every metric)"),
    ("cv_other", "the rest of the cross-validation: features, splits, pipelines"),
    ("save", "artifact save: model.skops and its metadata"),
    ("job_other", "the rest of the job: spec, logging"),
    ("exit", "result write, exit, the workspace seeing it (to finished_at)"),
)


def job_profile(records: list[dict], results: dict[str, dict]) -> dict[str, float]:
    """Where the runs' own time (``running_at`` to ``finished_at``) went, summed over the runs
    whose ``result.json`` has the job's ``timings``: :data:`PROFILE_PARTS`, and ``own`` (their
    sum), ``queued`` (created to starting: waiting for a core, not the run's time), ``fork``
    (starting to running), ``runs`` (profiled) and ``unprofiled`` (runs without timings)."""
    total: Counter = Counter()
    for record in records:
        result = results.get(experiment_of(record) or "")
        timings = (result or {}).get("timings") or {}
        if not (timings.get("entered_at_unix") and record.get("running_at") and record.get("finished_at")):
            total["unprofiled"] += 1
            continue
        created, starting, running, finished = (when(record[k]).timestamp() if record.get(k) else None
                                                for k in ("created_at", "starting_at", "running_at", "finished_at"))
        fit, score = result["fit_time"]["total"], result["score_time"]["total"]
        parts = {
            "start": timings["entered_at_unix"] - running,
            "code_version": timings.get("code_version_s", 0.0) + timings.get("imports_s", 0.0),
            "snapshot": timings.get("snapshot_s", 0.0),
            "fit": fit, "score": score, "cv_other": timings.get("cv_s", fit + score) - fit - score,
            "save": timings.get("save_s", 0.0),
            "exit": finished - timings["entered_at_unix"] - timings["job_s"],
        }
        parts["job_other"] = timings["job_s"] - sum(parts[k] for k in ("code_version", "snapshot", "fit", "score",
                                                                        "cv_other", "save"))
        total.update(parts)
        total["own"] += finished - running
        total["queued"] += (starting - created) if starting and created else 0.0
        total["fork"] += (running - starting) if starting else 0.0
        total["runs"] += 1
    return {k: float(v) for k, v in total.items()}


def format_profile(profile: dict[str, float], cores: int, baseline: dict[str, float] | None = None) -> list[str]:
    """The profile as lines: each part summed over the runs and per core; with ``baseline``
    (GridSearchCV's ``fit``/``score`` sums), those two side by side."""
    runs = int(profile.get("runs", 0))
    if not runs:
        return ["  no run has the job's timings (results of an older job, or none succeeded)"]
    own = profile["own"]
    lines = [f"  {'part':<14} {'sum s':>8} {'per core':>8} {'share':>6}  ({runs} runs; runs' own time "
             f"{own:.1f} s = {own / cores:.1f} s per core)"]
    for key, what in PROFILE_PARTS:
        value = profile.get(key, 0.0)
        extra = ""
        if baseline and key in baseline:
            extra = f"  GridSearchCV {baseline[key]:.1f} s ({value / baseline[key]:.2f}x)" if baseline[key] else ""
        lines.append(f"  {key:<14} {value:8.2f} {value / cores:8.2f} {value / own:6.1%}  {what}{extra}")
    if profile.get("unprofiled"):
        lines.append(f"  ({int(profile['unprofiled'])} runs without timings left out)")
    lines.append(f"  besides: queued for a core {profile.get('queued', 0.0):.1f} s, fork "
                 f"{profile.get('fork', 0.0):.2f} s (not the runs' own time)")
    return lines


# -- the stack's processes -----------------------------------------------------------------------
def _tree_cpu(pid: int, create_time: float) -> tuple[float, float]:
    """(own, whole tree) CPU seconds of a process: user + system, plus the children it reaped,
    for it and each live descendant."""
    import psutil

    try:
        root = psutil.Process(pid)
        if abs(root.create_time() - create_time) > 0.05:
            return 0.0, 0.0
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    own = total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        cpu = t.user + t.system + t.children_user + t.children_system
        total += cpu
        if proc.pid == pid:
            own = t.user + t.system
    return own, total


def cpu_snapshot(state) -> dict[str, tuple[float, float]]:
    return {r.name: _tree_cpu(r.pid, r.create_time) for r in state.processes}


# -- the stack -------------------------------------------------------------------------------------
@contextmanager
def scheduler_stack(var: Path, *, rows: int, say: Callable[[str], None] = print) -> Iterator[Any]:
    """``make up``'s stack in ``var`` (training table of ``rows`` rows if absent) with every DAG
    but model_factory paused; a :class:`stack.running.RunningStack`. Stopped (``make down``'s
    code) on the way out, whatever happened."""
    from cml_workspace.server_process import free_port
    from stack import up as stack_up
    from stack.env import stack_paths
    from stack.processes import stack_processes
    from stack.running import RunningStack

    os.environ["MODEL_FACTORY_VAR"] = str(var)
    paths = stack_paths(var)
    started = time.perf_counter()
    rc = stack_up.up(port=free_port(), dashboard_port=free_port(), rows=rows)
    try:
        if rc != 0:
            raise SystemExit(f"the stack did not start (exit {rc}); logs under {paths.logs}")
        stack = RunningStack.find(paths)
        if stack is None:
            raise SystemExit(f"the stack under {var} is not fully up; logs under {paths.logs}")
        say(f"stack up in {time.perf_counter() - started:.0f} s")
        paused = quiet_other_dags(stack.api)
        time.sleep(3)  # a DAG parsed a moment later starts unpaused too
        say(f"paused {', '.join(sorted(set(paused) | set(quiet_other_dags(stack.api))))}")
        yield stack
    finally:
        stack_up.down(quiet=True)
        if left := stack_processes(paths, None):
            say(f"WARNING: {len(left)} processes of the stack under {var} still run: {[p.pid for p in left]}")


def quiet_other_dags(api) -> list[str]:
    """Pause every DAG but model_factory and fail the runs they already started."""
    paused = []
    for dag in api.get("/api/v2/dags", limit=1000)["dags"]:
        if dag["dag_id"] == DAG_ID:
            continue
        api.send("PATCH", f"/api/v2/dags/{dag['dag_id']}", {"is_paused": True})
        paused.append(dag["dag_id"])
        for state in ("queued", "running"):
            for run in api.get(f"/api/v2/dags/{dag['dag_id']}/dagRuns", state=state, limit=100)["dag_runs"]:
                api.mark_failed(dag["dag_id"], run["dag_run_id"])
    return paused


def grid_view(api, run_ids: list[str]) -> tuple[float, int]:
    """What the UI's grid page loads: seconds and bytes of its three requests, one after another."""
    started = time.perf_counter()
    size = 0
    for path, params in ((f"/ui/grid/structure/{DAG_ID}", {"limit": GRID_VIEW_RUNS, "order_by": "-run_after"}),
                         (f"/ui/grid/runs/{DAG_ID}", {"limit": GRID_VIEW_RUNS, "order_by": "-run_after"}),
                         (f"/ui/grid/ti_summaries/{DAG_ID}", {"run_ids": run_ids})):
        size += len(api.call("GET", path, params=params).content)
    return time.perf_counter() - started, size


def count_tis(api, run_id: str, **filters: Any) -> int:
    return api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=1, **filters)["total_entries"]


def trigger(api, conf: dict) -> str:
    """A model_factory run with ``conf``; its run id. Named here, so that a trigger the
    api-server made despite answering 5xx (SQLite busy) is found rather than made twice."""
    from stack.airflow_api import AirflowApiError

    run_id = f"benchmark__{datetime.now().strftime('%Y%m%dT%H%M%S.%f')}"
    try:
        api.trigger(DAG_ID, conf, run_id=run_id)
    except AirflowApiError:
        api.dag_run(DAG_ID, run_id)  # raises unless the run exists
    return run_id


def run_to_end(api, conf: dict, timeout_s: float) -> dict:
    """Trigger a model_factory run and wait for it, unmeasured (a warm-up)."""
    return api.wait_for_run(DAG_ID, trigger(api, conf), timeout_s=timeout_s, tick_s=1.0)


# -- one measured DAG run --------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    calls: Counter
    experiments: dict[str, int]
    load: float


@dataclass
class ScheduledRun:
    """What one model_factory run under the scheduler measured."""

    run_id: str
    state: str
    wall_s: float
    trigger_to_end_s: float
    calls: Counter
    cpu: dict[str, tuple[float, float]]
    #: the CML runs of this factory run (the workspace's records)
    runs: list[dict]
    #: experiment id -> its result.json (the profile's timings)
    results: dict[str, dict] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    grid_view_during: list[tuple[float, int]] = field(default_factory=list)
    grid_view_after: list[tuple[float, int]] = field(default_factory=list)
    dag_start: datetime | None = None
    dag_end: datetime | None = None
    #: the run's task instances as the REST API lists them
    tis: list[dict] = field(default_factory=list)
    #: the pool as the REST API shows it after the run
    pool: dict = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0

    @property
    def task_instances(self) -> int:
        return len(self.tis)

    @property
    def worker_task_instances(self) -> int:
        """Those that ran on a worker (a hostname): not the skipped ones."""
        return sum(bool(ti.get("hostname")) for ti in self.tis)


def environment_of(record: dict) -> dict[str, str]:
    raw = record.get("environment") or {}
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        return {}


def experiment_of(record: dict) -> str | None:
    return environment_of(record).get(EXPERIMENT_ID_ENV)


def map_index_of(record: dict) -> int | None:
    key = environment_of(record).get(TI_KEY_ENV) or ""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.lstrip("-").isdigit() else None


def factory_runs(stack, run_id: str) -> list[dict]:
    """The workspace's records of the CML runs this factory run started."""
    with stack.cml_hook() as hook:
        records = [r.raw for job in hook.list_jobs() for r in hook.list_job_runs(job.id)]
    return [r for r in records if environment_of(r).get(FACTORY_RUN_ENV) == run_id]


def read_results(stack, records: list[dict]) -> dict[str, dict]:
    """experiment id -> ``result.json`` of each run's experiment (those that wrote one)."""
    from factory_tasks.core.contracts import ExperimentResult

    found = {}
    with stack.cml_hook() as hook:
        for eid in {e for e in map(experiment_of, records) if e}:
            raw = hook.download_file_if_exists(ExperimentResult.path_for(eid))
            if raw:
                found[eid] = json.loads(raw)
    return found


def measure_run(stack, conf: dict, *, timeout_s: float, sample_s: float = 5.0, grid_view_every_s: float = 60.0,
                follow: bool = True, say: Callable[[str], None] = print) -> ScheduledRun:
    """Trigger model_factory with ``conf`` on the running stack, follow it to its end and measure it.
    Without ``follow``, one request per ``sample_s`` asks whether the run has ended (no counts of
    task instances, no grid view while it runs: the requests would cost the stack CPU the
    measured run competes for)."""
    from factory_tasks.core.names import EXPERIMENT_POOL

    api = stack.api
    access = AccessLog(stack.paths.workspace_root / "server.log")
    access.new_lines()  # what came before is not this DAG run's
    load_before = os.getloadavg()[0]
    cpu_before = cpu_snapshot(stack.state)
    t0 = time.perf_counter()
    run_id = trigger(api, conf)
    say(f"triggered {DAG_ID} run {run_id} (load {load_before:.1f})")
    calls: Counter = Counter()
    samples: list[Sample] = []
    during: list[tuple[float, int]] = []
    last_grid = t0
    while True:
        time.sleep(sample_s)
        calls.update(count_requests(access.new_lines()))
        run = api.dag_run(DAG_ID, run_id)
        now = time.perf_counter()
        if run["state"] in ("success", "failed"):
            break
        if now - t0 > timeout_s:
            say(f"timed out after {timeout_s:.0f} s: figures below are of an unfinished run")
            break
        if not follow:
            continue
        states = {name: count_tis(api, run_id, task_id=EXPERIMENT_TASK, state=state)
                  for name, state in (("waiting", ["scheduled"]), ("worker", ["queued", "running"]),
                                      ("deferred", ["deferred"]), ("done", ["success", "failed", "upstream_failed"]))}
        samples.append(Sample(now - t0, Counter(calls), states, os.getloadavg()[0]))
        if now - last_grid >= grid_view_every_s:
            during.append(grid_view(api, [run_id]))
            last_grid = now
        s = samples[-1]
        say(f"  {s.t:6.0f}s  experiments: done {states['done']:5d}, deferred {states['deferred']:4d}, on a worker "
            f"{states['worker']:3d}, scheduled {states['waiting']:4d}  API calls so far "
            f"{sum(v for k, v in calls.items() if k != 'errors'):7d}  load {s.load:.1f}")
    trigger_to_end = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    cpu_after = cpu_snapshot(stack.state)
    time.sleep(1.0)
    calls.update(count_requests(access.new_lines()))
    cpu = {name: (cpu_after[name][0] - cpu_before.get(name, (0, 0))[0],
                  cpu_after[name][1] - cpu_before.get(name, (0, 0))[1]) for name in cpu_after}
    after = [grid_view(api, [run_id]) for _ in range(3)]
    records = factory_runs(stack, run_id)
    result = ScheduledRun(run_id=run_id, state=run["state"], wall_s=trigger_to_end, trigger_to_end_s=trigger_to_end,
                          calls=calls, cpu=cpu, runs=records, results=read_results(stack, records), samples=samples,
                          grid_view_during=during, grid_view_after=after,
                          tis=api.task_instances(DAG_ID, run_id), load_before=load_before,
                          load_after=load_after)
    resp = api.call("GET", f"/api/v2/pools/{EXPERIMENT_POOL}", ok=(404,))
    result.pool = resp.json() if resp.status_code == 200 else {}
    if run.get("start_date") and run.get("end_date"):
        result.dag_start, result.dag_end = when(run["start_date"]), when(run["end_date"])
        result.wall_s = (result.dag_end - result.dag_start).total_seconds()
    return result


def task_timeline(tis: list[dict], dag_start: datetime) -> list[dict[str, Any]]:
    """Per task (map indexes together): seconds from the DAG run's start to its first instance
    being scheduled, queued and started and to its last one ending, earliest start first — the
    orchestration's critical path, hand-offs included."""
    def at(value: str | None) -> float | None:
        return None if not value else (when(value) - dag_start).total_seconds()

    rows: dict[str, dict[str, Any]] = {}
    for ti in tis:
        row = rows.setdefault(ti["task_id"], {"task_id": ti["task_id"], "instances": 0, "scheduled": None,
                                               "queued": None, "started": None, "ended": None})
        row["instances"] += 1
        for key, field_name, pick in (("scheduled", "scheduled_when", min), ("queued", "queued_when", min),
                                      ("started", "start_date", min), ("ended", "end_date", max)):
            value = at(ti.get(field_name))
            if value is not None:
                row[key] = value if row[key] is None else pick(row[key], value)
    return sorted(rows.values(), key=lambda r: (r["started"] is None, r["started"] or 0.0))


def _cell(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.1f}"


def format_timeline(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"  {'task':32s} {'n':>5s} {'sched':>6s} {'queued':>6s} {'start':>6s} {'end':>6s}  (s from DAG run start)"]
    for r in rows:
        lines.append(f"  {r['task_id']:32s} {r['instances']:5d} {_cell(r['scheduled'])} {_cell(r['queued'])} "
                     f"{_cell(r['started'])} {_cell(r['ended'])}")
    return lines


def experiment_timeline(tis: list[dict], records: list[dict], dag_start: datetime) -> list[str]:
    """One line per run_experiment instance: when its task instance was scheduled and started,
    its CML run created, started running and finished, and its task instance ended."""
    def at(value: str | None) -> float | None:
        return None if not value else (when(value) - dag_start).total_seconds()

    by_index = {map_index_of(r): r for r in records}
    lines = [f"  {'map':>4s} {'TI sched':>8s} {'TI start':>8s} {'created':>8s} {'running':>8s} {'finished':>8s} "
             f"{'TI end':>8s}  {'try':>3s} state      (s from DAG run start)"]
    for ti in sorted((t for t in tis if t["task_id"] == EXPERIMENT_TASK), key=lambda t: t.get("map_index", -1)):
        run = by_index.get(ti.get("map_index"), {})
        cells = [at(ti.get("scheduled_when")), at(ti.get("start_date")), at(run.get("created_at")),
                 at(run.get("running_at")), at(run.get("finished_at")), at(ti.get("end_date"))]
        lines.append(f"  {ti.get('map_index', -1):4d} " + " ".join(f"{_cell(c):>8s}" for c in cells)
                     + f"  {ti.get('try_number', 0):3d} {ti.get('state')}")
    return lines


#: the phases of one pool slot's turn, in order (:func:`slot_cycle`'s keys)
CYCLE_PARTS = (
    ("pick_up", "queued to started: the executor starts the task"),
    ("submit", "started to the CML run created: task process, DAG parse, submit"),
    ("run", "the CML run, created to finished (its queue included)"),
    ("run_end_to_task_end", "run finished to task ended: the last check (worker or triggerer) and the end"),
    ("hand_off", "task ended to the next instance queued: the scheduler frees the slot"),
)


def slot_cycle(tis: list[dict], records: list[dict]) -> dict[str, Any]:
    """Where a pool slot's turn goes: the median of each :data:`CYCLE_PARTS` phase over the
    run_experiment instances (joined to their CML runs by map index), and ``cycle`` (their sum)
    and ``n`` beside them. ``hand_off`` pairs each task's end with the first instance queued at
    or after it (the one its slot went to)."""
    by_index = {map_index_of(r): r for r in records}
    phases: dict[str, list[float]] = {key: [] for key, _ in CYCLE_PARTS}
    queued, ended = [], []
    for ti in tis:
        if ti.get("task_id") != EXPERIMENT_TASK:
            continue
        run = by_index.get(ti.get("map_index"), {})
        at = {k: when(v).timestamp() for k, v in (("queued", ti.get("queued_when")), ("start", ti.get("start_date")),
                                                   ("end", ti.get("end_date")), ("created", run.get("created_at")),
                                                   ("finished", run.get("finished_at"))) if v}
        if "queued" in at:
            queued.append(at["queued"])
        if "end" in at:
            ended.append(at["end"])
        if len(at) < 5:
            continue
        phases["pick_up"].append(at["start"] - at["queued"])
        phases["submit"].append(at["created"] - at["start"])
        phases["run"].append(at["finished"] - at["created"])
        phases["run_end_to_task_end"].append(at["end"] - at["finished"])
    queued.sort()
    for end in ended:
        following = next((q for q in queued if q >= end), None)
        if following is not None:
            phases["hand_off"].append(following - end)
    medians = {key: statistics.median(values) if values else None for key, values in phases.items()}
    known = [v for v in medians.values() if v is not None]
    return {**medians, "cycle": sum(known) if len(known) == len(medians) else None,
            "n": len(phases["run"])}


def format_slot_cycle(cycle: dict[str, Any]) -> list[str]:
    if not cycle.get("n"):
        return ["  no run_experiment instance with both its times and its CML run's"]
    total = cycle.get("cycle")
    lines = [f"  {'phase':<20} {'median s':>8} {'share':>6}  ({cycle['n']} instances)"]
    for key, what in CYCLE_PARTS:
        value = cycle.get(key)
        if value is None:
            lines.append(f"  {key:<20} {'-':>8} {'-':>6}  {what}")
            continue
        share = f"{value / total:6.1%}" if total else f"{'-':>6}"
        lines.append(f"  {key:<20} {value:8.3f} {share}  {what}")
    if total:
        lines.append(f"  {'cycle':<20} {total:8.3f}")
    return lines


def pool_check(records: list[dict], max_parallel: int) -> dict[str, Any]:
    """The most CML runs in flight at once (created to finished) against the pool's size."""
    in_flight = max_concurrency(run_spans(records, "created_at"))
    return {"runs_in_flight_max": in_flight, "max_parallel": max_parallel, "respected": in_flight <= max_parallel}


# -- the report --------------------------------------------------------------------------------
def _ratio(value: float, target: float) -> str:
    return f"{value / target:.2f}x target ({'met' if value <= target else 'NOT met'})"


def report(m: ScheduledRun, n: int, *, max_parallel: int, cores: int) -> dict[str, Any]:
    spans = run_spans(m.runs)
    finished = [r for r in m.runs if r.get("finished_at")]
    statuses = Counter(r.get("status") for r in m.runs)
    concurrency = max(1, max_concurrency(spans)) if spans else 1
    if m.state != "success":  # timed out (or failed): the figures are of the experiments that finished
        print(f"\nWARNING: the DAG run is {m.state}, not success: per-experiment figures below divide by the "
              f"{len(finished)} CML runs that finished, not by the grid's {n}")
        n = max(1, len(finished))
    fig = overhead_figures(m.wall_s, [e - s for s, e in spans] or [0.0], concurrency, n)
    print(f"\n{DAG_ID} run {m.run_id}: {m.state}; {len(m.runs)} CML runs ({dict(statuses)}), "
          f"{len(finished)} finished")
    print(f"wall (DAG run start to end, Airflow's record): {m.wall_s:9.1f} s   (trigger to end seen: "
          f"{m.trigger_to_end_s:.1f} s)")
    print(f"runs' own time (sum of finished_at - running_at): {fig['runs_s']:8.1f} s; "
          f"mean {fig['runs_s'] / max(1, len(spans)):.2f} s a run")
    print(f"runs at once at most: {concurrency}; runs' time / {concurrency}: {fig['critical_path_s']:.1f} s")
    if spans and m.dag_start and m.dag_end:
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        print(f"  before the first run starts: {first - m.dag_start.timestamp():8.1f} s")
        print(f"  first run start to last run end: {last - first:8.1f} s (mean runs at once "
              f"{fig['runs_s'] / max(1e-9, last - first):.2f})")
        print(f"  after the last run ends:     {m.dag_end.timestamp() - last:8.1f} s")
    if m.dag_start:
        print("\n".join(format_timeline(task_timeline(m.tis, m.dag_start))))
    over = fig["overhead_per_experiment_s"]
    print(f"overhead per experiment, (wall - runs' time / {concurrency}) / {n}: {over:.3f} s   "
          f"{_ratio(over, TARGET_OVERHEAD_S)}")
    print(f"  (serial definition, (wall - runs' time) / {n}: {fig['serial_overhead_per_experiment_s']:.3f} s)")
    cycle = slot_cycle(m.tis, m.runs)
    print(f"a pool slot's turn, per {EXPERIMENT_TASK} instance (medians; {max_parallel} slots turning over):")
    print("\n".join(format_slot_cycle(cycle)))
    pool = pool_check(m.runs, max_parallel)
    print(f"runs in flight at once (created to finished) at most: {pool['runs_in_flight_max']}, the pool's size "
          f"{max_parallel}: {'respected' if pool['respected'] else 'EXCEEDED'}; the pool after the run: "
          + (f"{m.pool.get('slots')} slots, include_deferred {m.pool.get('include_deferred')}" if m.pool else "absent"))

    total = sum(v for k, v in m.calls.items() if k != "errors")
    per = total / n
    print(f"CML API calls: {total} = {per:.1f} per experiment   {_ratio(per, TARGET_CALLS)}"
          + (f"; {m.calls['errors']} answered >= 400" if m.calls.get("errors") else ""))
    for kind, count in sorted(((k, v) for k, v in m.calls.items() if k != "errors"), key=lambda kv: -kv[1]):
        print(f"  {kind:<20} {count:8d}  {count / n:6.2f} per experiment")
    profile = job_profile(m.runs, m.results)
    print("the experiment job, summed over the runs (the timings in each result.json):")
    print("\n".join(format_profile(profile, concurrency)))
    names = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag-processor",
             "api-server": "api-server", "workspace": "workspace server", "dashboard": "dashboards"}
    print(f"CPU seconds during the run ({m.trigger_to_end_s:.0f} s; {cores} cores = {cores * m.trigger_to_end_s:.0f} "
          "CPU-s):")
    for name, label in names.items():
        if name not in m.cpu:
            continue
        own, tree = m.cpu[name]
        ran = m.worker_task_instances
        per_ti = f" = {(tree - own) / ran:.2f} each" if ran else ""
        extra = {"scheduler": f"  (own loop {own:.1f}, LocalExecutor workers and task processes {tree - own:.1f}"
                              f" for the {ran} of {m.task_instances} task instances that ran on a worker{per_ti})",
                 "workspace": f"  (server process {own:.1f}; runs are not its descendants)"}.get(name, "")
        print(f"  {label:<18} {tree:8.1f}{extra}")
    during = max(m.grid_view_during, default=None)
    after = statistics.median(s for s, _ in m.grid_view_after) if m.grid_view_after else float("nan")
    size = m.grid_view_after[-1][1] if m.grid_view_after else 0
    print(f"Airflow UI grid view ({DAG_ID}: structure + runs + TI summaries): {after:.2f} s, {size:,} bytes "
          f"after the run (median of 3)"
          + (f"; slowest during the run {during[0]:.2f} s ({len(m.grid_view_during)} loads)" if during else ""))
    loads = [s.load for s in m.samples]
    if loads:
        print(f"load average (1 min): {m.load_before:.1f} at the trigger, {m.load_after:.1f} at the end; during "
              f"the run {min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}")
    return {"benchmark": "grid_scale", "experiments": n, "state": m.state, "cml_runs": len(m.runs),
            "wall_s": round(m.wall_s, 1), "runs_s": round(fig["runs_s"], 1), "concurrency": concurrency,
            "overhead_per_experiment_s": round(over, 3),
            "serial_overhead_per_experiment_s": round(fig["serial_overhead_per_experiment_s"], 3),
            "task_instances": m.task_instances, "worker_task_instances": m.worker_task_instances,
            "api_calls_per_experiment": round(per, 2), "api_calls": dict(m.calls), **pool,
            "profile_s": {k: round(v, 2) for k, v in profile.items()},
            "slot_cycle_s": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cycle.items()},
            "cpu_s": {k: [round(a, 1), round(b, 1)] for k, (a, b) in m.cpu.items()},
            "grid_view_s": round(after, 3), "grid_view_bytes": size,
            "grid_view_during_max_s": round(during[0], 3) if during else None,
            "load_before": round(m.load_before, 2), "load_after": round(m.load_after, 2),
            "load": [min(loads), max(loads)] if loads else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", "-n", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=2000, help="rows of the simulated training table")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--max-parallel", type=int, default=4, help="the grid's max_parallel (the pool's size)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the DAG run")
    parser.add_argument("--var", type=Path, default=None, help="stack folder (default: a fresh temp dir)")
    args = parser.parse_args()

    from factory_tasks.training.grid import load_grid

    var = (args.var or Path(tempfile.mkdtemp(prefix="mf-scale-"))).resolve()
    grid = write_grid(var / "config" / "grid-scale.yaml", args.experiments, folds=args.folds,
                      max_parallel=args.max_parallel)
    config = load_grid(grid)  # the grid is valid before anything starts
    cores = os.cpu_count() or 1
    print(f"grid {grid}: {config.size} experiments ({config.cv.folds} folds, max_parallel {config.max_parallel}), "
          f"{args.rows} rows, {cores} cores; load {os.getloadavg()[0]:.1f} at the start", flush=True)

    def say(msg: str) -> None:
        print(msg, flush=True)

    with scheduler_stack(var, rows=args.rows, say=say) as stack:
        measured = measure_run(stack, {"grid_path": str(grid), "reuse_results": False}, timeout_s=args.timeout,
                               say=say)
    figures = report(measured, config.size, max_parallel=config.max_parallel, cores=cores)
    print(json.dumps(figures))
    return 0 if measured.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
