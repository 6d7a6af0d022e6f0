"""Scale: an N-point grid of a tiny model through ``model_factory`` under the real scheduler.

Starts the stack of ``make up`` (``local/stack/up.py``: the local CML workspace, api-server,
scheduler with LocalExecutor, dag-processor, triggerer, dashboards) in a fresh temporary
``var/``, pauses every DAG but ``model_factory`` (the hourly loop DAGs would otherwise run
beside it), triggers ``model_factory`` through the REST API on a generated grid file — N
logistic regressions, ``C`` swept over N values, 2 CV folds, two metrics, a small training
table — waits until the DAG run ends, stops everything it started (``make down``'s code) and
prints:

* **wall**: the DAG run's start to end as Airflow recorded them;
* **runs' own time**: the sum over the CML runs of ``finished_at - running_at`` (the workspace's
  run records; ``starting_at`` is also shown: the warm engine's fork);
* **overhead per experiment**, two ways. The issue's definition, (wall - runs' time) / N, is
  only meaningful when runs go one at a time; here up to C run at once (C = the most that were
  running at the same instant, i.e. the cores the workspace could give), so the runs' time is
  spread over C slots and the critical path the work alone needs is runs' time / C.
  ``(wall - runs' time / C) / N`` is what orchestration added per experiment: everything
  before the first run, the gaps where a slot sat empty because the next run was not yet
  submitted, and everything after the last run. It is the figure held against the target
  (0.5 s). The literal (serial) definition is printed beside it;
* **CML API calls per experiment**: the requests the workspace received between the trigger
  and the end of the DAG run (its access log, one line per request with method and path;
  ``/health`` excluded) divided by N, by route kind (list jobs, list runs pages, get run,
  create run, files...), and how many list-runs pages came while capacity triggers were
  deferred (the per-DAG-run cap's polling: ``CmlCapacityTrigger``);
* **CPU seconds** of the scheduler (its own loop, and its LocalExecutor workers and task
  processes), the triggerer, the dag-processor, the api-server and the workspace server during
  the DAG run (each process tree's user + system time, reaped children included, psutil);
* **the Airflow UI's grid view**: the three requests its page makes (``/ui/grid/structure``,
  ``/ui/grid/runs``, ``/ui/grid/ti_summaries`` of ``model_factory``, with the api-server's JWT),
  timed during the run and after it: seconds and bytes.

Targets (issue #11): overhead <= 0.5 s per experiment, <= 10 CML API calls per experiment.

    .venv/bin/python benchmarks/grid_scale.py [--experiments 1000] [--rows 2000] [--folds 2]
        [--max-parallel 4] [--timeout 3600] [--var DIR] [--keep]
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cml_provider.hooks import endpoints as cml_endpoints

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_OVERHEAD_S = 0.5
TARGET_CALLS = 10.0
DAG_ID = "model_factory"
RUN_ENDED = ("success", "failed")
#: the grid view's page asks for this many runs
GRID_VIEW_RUNS = 10


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


# -- the Airflow REST API --------------------------------------------------------------------------
class Airflow:
    def __init__(self, url: str, paths):
        import httpx

        from stack.up import api_token

        self.http = httpx.Client(base_url=url, timeout=120,
                                 headers={"Authorization": f"Bearer {api_token(url, paths)}"})

    def _call(self, method: str, path: str, attempts: int = 5, **kwargs):
        """One request; a 5xx (SQLite's "database is locked" while the scheduler writes) is tried
        again after a second, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            resp = self.http.request(method, path, **kwargs)
            if resp.status_code < 500 or attempt == attempts:
                resp.raise_for_status()
                return resp
            time.sleep(1.0)

    def get(self, path: str, **params) -> Any:
        return self._call("GET", path, params=params).json()

    def send(self, method: str, path: str, body: dict) -> Any:
        return self._call(method, path, json=body).json()

    def trigger(self, conf: dict) -> dict:
        """Trigger a model_factory run (after a 5xx, the run it may have made anyway is taken)."""
        resp = self.http.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
        if resp.status_code >= 500:
            time.sleep(1.0)
            runs = self.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=10)["dag_runs"]
            if runs:
                return runs[0]
            return self.send("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        resp.raise_for_status()
        return resp.json()

    def dag_run(self, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")

    def count_tis(self, run_id: str, **filters) -> int:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=1, **filters)["total_entries"]

    def task_instances(self, run_id: str) -> list[dict]:
        """Every task instance of the run (paged)."""
        found: list[dict] = []
        while True:
            page = self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=100, offset=len(found))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def grid_view(self, run_ids: list[str]) -> tuple[float, int]:
        """What the grid page loads: seconds and bytes of its three requests, one after another."""
        started = time.perf_counter()
        size = 0
        for path, params in ((f"/ui/grid/structure/{DAG_ID}", {"limit": GRID_VIEW_RUNS, "order_by": "-run_after"}),
                             (f"/ui/grid/runs/{DAG_ID}", {"limit": GRID_VIEW_RUNS, "order_by": "-run_after"}),
                             (f"/ui/grid/ti_summaries/{DAG_ID}", {"run_ids": run_ids})):
            size += len(self._call("GET", path, params=params).content)
        return time.perf_counter() - started, size


def quiet_other_dags(api: Airflow) -> list[str]:
    """Pause every DAG but model_factory and fail the runs they already started."""
    paused = []
    for dag in api.get("/api/v2/dags", limit=1000)["dags"]:
        if dag["dag_id"] == DAG_ID:
            continue
        api.send("PATCH", f"/api/v2/dags/{dag['dag_id']}", {"is_paused": True})
        paused.append(dag["dag_id"])
        for state in ("queued", "running"):
            for run in api.get(f"/api/v2/dags/{dag['dag_id']}/dagRuns", state=state, limit=100)["dag_runs"]:
                api.send("PATCH", f"/api/v2/dags/{dag['dag_id']}/dagRuns/{run['dag_run_id']}", {"state": "failed"})
    return paused


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- one measured DAG run --------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    calls: Counter
    deferred_submits: int
    deferred_waits: int
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
    runs: list[dict]
    samples: list[Sample] = field(default_factory=list)
    grid_view_during: list[tuple[float, int]] = field(default_factory=list)
    grid_view_after: list[tuple[float, int]] = field(default_factory=list)
    dag_start: datetime | None = None
    dag_end: datetime | None = None
    #: one poll of the capacity trigger after the run (the job now holds the run's N runs)
    capacity_probe: Counter = field(default_factory=Counter)
    #: the run's task instances as the REST API lists them
    tis: list[dict] = field(default_factory=list)

    @property
    def task_instances(self) -> int:
        return len(self.tis)

    @property
    def worker_task_instances(self) -> int:
        """Those that ran on a worker (a hostname): not the skipped ones, nor the waits that
        started and ended in the triggerer."""
        return sum(bool(ti.get("hostname")) for ti in self.tis)


def probe_capacity_poll(workspace_url: str, api_key: str, run_id: str, access: AccessLog) -> Counter:
    """The requests of one poll of :class:`CmlCapacityTrigger` as ``CmlJobRunOperator`` defers it
    for this DAG run (the plan's experiment jobs, marker, pages), run once here against the
    workspace. Its cap is out of reach, so the trigger ends after its first poll."""
    import asyncio

    from cml_provider.hooks.cml import CmlHook
    from cml_provider.operators.cml import DAG_RUN_KEY_ENV
    from cml_provider.triggers.cml import CmlCapacityTrigger

    from factory_tasks.core.names import EXPERIMENT_JOB_PREFIX
    from stack.env import cml_connection

    os.environ["AIRFLOW_CONN_CML_BENCHMARK_PROBE"] = cml_connection(workspace_url, api_key)
    project_id = _project_id(workspace_url, api_key)
    with CmlHook.from_url(workspace_url, api_key, project_id=project_id) as hook:
        job_ids = [j.id for j in hook.list_jobs({"name": EXPERIMENT_JOB_PREFIX})]
    trigger = CmlCapacityTrigger(
        cml_conn_id="cml_benchmark_probe", project_id=project_id, job_ids=job_ids,
        marker_key=DAG_RUN_KEY_ENV, marker_value=f"{DAG_ID}/{run_id}", max_active=10**9, poll_interval=1.0,
        deadline=time.time() + 60)

    async def one_poll() -> list:
        return [event async for event in trigger.run()]

    access.new_lines()
    events = asyncio.run(one_poll())
    time.sleep(0.5)
    counts = count_requests(access.new_lines())
    counts["events"] = len(events)
    return counts


def _project_id(workspace_url: str, api_key: str) -> str:
    from cml_provider.hooks.cml import CmlHook

    return CmlHook.from_url(workspace_url, api_key, project_name="model-factory").get_project_id()


def run_under_scheduler(var: Path, conf: dict, *, rows: int, timeout_s: float, sample_s: float = 5.0,
                        grid_view_every_s: float = 60.0, warm_up: dict | None = None, say=print) -> ScheduledRun:
    """Start the ``make up`` stack in ``var`` (training table of ``rows`` rows if absent), run
    ``model_factory`` with ``conf`` through the REST API, measure it, stop the stack.

    With ``warm_up`` (a conf), a first run with it goes before the measured one, unmeasured: a
    freshly started stack pays once what a long-running one does not pay per run (the
    triggerer builds its in-process execution API on its first call, ≈ 3.5 s)."""
    import psutil

    from cml_workspace.server_process import free_port
    from stack import up as stack_up
    from stack.env import stack_paths

    os.environ["MODEL_FACTORY_VAR"] = str(var)
    paths = stack_paths(var)
    started = time.perf_counter()
    rc = stack_up.up(port=free_port(), dashboard_port=free_port(), rows=rows)
    if rc != 0:
        raise SystemExit(f"the stack did not start (exit {rc}); logs under {paths.logs}")
    try:
        say(f"stack up in {time.perf_counter() - started:.0f} s")
        state = stack_up.read_state(paths)
        api = Airflow(state.airflow_url, paths)
        paused = quiet_other_dags(api)
        time.sleep(3)  # a DAG parsed a moment later starts unpaused too
        paused = sorted(set(paused) | set(quiet_other_dags(api)))
        say(f"paused {', '.join(paused)}")
        if warm_up is not None:
            warm_started = time.perf_counter()
            warm = api.trigger(warm_up)
            while warm["state"] not in RUN_ENDED:
                if time.perf_counter() - warm_started > timeout_s:
                    raise SystemExit(f"the warm-up run {warm['dag_run_id']} did not end in {timeout_s:.0f} s")
                time.sleep(1.0)
                warm = api.dag_run(warm["dag_run_id"])
            say(f"warm-up run {warm['dag_run_id']} {warm['state']} in {time.perf_counter() - warm_started:.0f} s")
        access = AccessLog(paths.workspace_root / "server.log")
        access.new_lines()  # what the start-up asked is not the DAG run's
        cpu_before = cpu_snapshot(state)
        t0 = time.perf_counter()
        run = api.trigger(conf)  # the stack's var/ is the benchmark's own: no other run but the warm-up
        run_id = run["dag_run_id"]
        say(f"triggered {DAG_ID} run {run_id}")
        calls: Counter = Counter()
        samples: list[Sample] = []
        during: list[tuple[float, int]] = []
        last_grid = t0
        deadline = t0 + timeout_s
        while True:
            time.sleep(sample_s)
            calls.update(count_requests(access.new_lines()))
            run = api.dag_run(run_id)
            now = time.perf_counter()
            if run["state"] in RUN_ENDED:
                break
            samples.append(Sample(now - t0, Counter(calls),
                                  api.count_tis(run_id, state="deferred", task_display_name_prefix_pattern="submit_"),
                                  api.count_tis(run_id, state="deferred", task_display_name_prefix_pattern="wait_for_"),
                                  os.getloadavg()[0]))
            if now - last_grid >= grid_view_every_s:
                during.append(api.grid_view([run_id]))
                last_grid = now
            s = samples[-1]
            done = api.count_tis(run_id, state="success", task_display_name_prefix_pattern="wait_for_")
            say(f"  {s.t:6.0f}s  waits done {done:5d}  deferred: capacity {s.deferred_submits:4d}, "
                f"sensors {s.deferred_waits:4d}  API calls so far {sum(v for k, v in calls.items() if k != 'errors'):7d}"
                f"  load {s.load:.1f}")
            if now > deadline:
                say(f"timed out after {timeout_s:.0f} s: figures below are of an unfinished run")
                break
        trigger_to_end = time.perf_counter() - t0
        cpu_after = cpu_snapshot(state)
        time.sleep(1.0)
        calls.update(count_requests(access.new_lines()))
        cpu = {name: (cpu_after[name][0] - cpu_before.get(name, (0, 0))[0],
                      cpu_after[name][1] - cpu_before.get(name, (0, 0))[1]) for name in cpu_after}
        after = [api.grid_view([run_id]) for _ in range(3)]
        tis = api.task_instances(run_id)
        from cml_provider.hooks.cml import CmlHook

        hook = CmlHook.from_url(state.workspace_url, paths.api_key_file.read_text().strip(),
                                project_name="model-factory")
        records = [r.raw for job in hook.list_jobs() for r in hook.list_job_runs(job.id)]
        records = [r for r in records if f'"{run_id}"' in (r.get("environment") or "")]
        probe = probe_capacity_poll(state.workspace_url, paths.api_key_file.read_text().strip(), run_id, access)
        result = ScheduledRun(run_id=run_id, state=run["state"], wall_s=0.0, trigger_to_end_s=trigger_to_end,
                              calls=calls, cpu=cpu, runs=records, samples=samples, grid_view_during=during,
                              grid_view_after=after, capacity_probe=probe, tis=tis)
        if run.get("start_date") and run.get("end_date"):
            result.dag_start, result.dag_end = _when(run["start_date"]), _when(run["end_date"])
            result.wall_s = (result.dag_end - result.dag_start).total_seconds()
        else:
            result.wall_s = trigger_to_end
        return result
    finally:
        stack_up.down(quiet=True)
        left = [p for p in psutil.process_iter(["cmdline", "environ"])
                if p.pid != os.getpid() and (str(var) in " ".join(p.info["cmdline"] or [])
                                             or (p.info["environ"] or {}).get("MODEL_FACTORY_VAR") == str(var))]
        if left:
            say(f"WARNING: {len(left)} processes still name {var}: {[p.pid for p in left]}")


def task_timeline(tis: list[dict], dag_start: datetime) -> list[dict[str, Any]]:
    """Per task (map indexes together): seconds from the DAG run's start to its first instance
    being scheduled, queued and started and to its last one ending, earliest start first — the
    orchestration's critical path, hand-offs included."""
    def at(value: str | None) -> float | None:
        return None if not value else (_when(value) - dag_start).total_seconds()

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


def format_timeline(rows: list[dict[str, Any]]) -> list[str]:
    def cell(value: float | None) -> str:
        return "     -" if value is None else f"{value:6.1f}"

    lines = [f"  {'task':32s} {'n':>5s} {'sched':>6s} {'queued':>6s} {'start':>6s} {'end':>6s}  (s from DAG run start)"]
    for r in rows:
        lines.append(f"  {r['task_id']:32s} {r['instances']:5d} {cell(r['scheduled'])} {cell(r['queued'])} "
                     f"{cell(r['started'])} {cell(r['ended'])}")
    return lines


def run_spans(records: list[dict], start_key: str = "running_at") -> list[tuple[float, float]]:
    spans = []
    for r in records:
        if r.get(start_key) and r.get("finished_at"):
            spans.append((_when(r[start_key]).timestamp(), _when(r["finished_at"]).timestamp()))
    return spans


# -- the report --------------------------------------------------------------------------------
def _ratio(value: float, target: float) -> str:
    return f"{value / target:.2f}x target ({'met' if value <= target else 'NOT met'})"


def report(m: ScheduledRun, n: int, *, poll_interval_s: float) -> dict[str, Any]:
    spans = run_spans(m.runs)
    starting = run_spans(m.runs, "starting_at")
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
    print(f"runs' own time (sum of finished_at - running_at): {fig['runs_s']:8.1f} s   "
          f"(from starting_at: {sum(e - s for s, e in starting):.1f} s); mean {fig['runs_s'] / max(1, len(spans)):.2f} s a run")
    in_flight = max_concurrency(run_spans(m.runs, "created_at"))
    print(f"runs at once at most: {concurrency}; runs' time / {concurrency}: {fig['critical_path_s']:.1f} s; "
          f"runs in flight (created to finished) at most: {in_flight}")
    if spans and m.dag_start and m.dag_end:
        first, last = min(s for s, _ in spans), max(e for _, e in spans)
        print(f"  before the first run starts: {first - m.dag_start.timestamp():8.1f} s")
        print(f"  first run start to last run end: {last - first:8.1f} s (mean runs at once "
              f"{fig['runs_s'] / max(1e-9, last - first):.2f})")
        print(f"  after the last run ends:     {m.dag_end.timestamp() - last:8.1f} s")
    over = fig["overhead_per_experiment_s"]
    print(f"overhead per experiment, (wall - runs' time / {concurrency}) / {n}: {over:.3f} s   "
          f"{_ratio(over, TARGET_OVERHEAD_S)}")
    print(f"  (serial definition, (wall - runs' time) / {n}: {fig['serial_overhead_per_experiment_s']:.3f} s)")

    total = sum(v for k, v in m.calls.items() if k != "errors")
    per = total / n
    print(f"CML API calls: {total} = {per:.1f} per experiment   {_ratio(per, TARGET_CALLS)}"
          + (f"; {m.calls['errors']} answered >= 400" if m.calls.get("errors") else ""))
    for kind, count in sorted(((k, v) for k, v in m.calls.items() if k != "errors"), key=lambda kv: -kv[1]):
        print(f"  {kind:<20} {count:8d}  {count / n:6.2f} per experiment")
    capacity = capacity_polling(m.samples)
    if capacity:
        print(f"while capacity triggers were deferred (mean {capacity['mean_deferred']:.0f}, at most "
              f"{capacity['max_deferred']}): {capacity['calls_per_s']:.1f} API calls/s, "
              f"{capacity['list_calls_per_s']:.1f} of them list jobs/runs "
              f"= {capacity['list_calls_per_s'] * poll_interval_s:.0f} per {poll_interval_s:g}-s poll interval, "
              f"{capacity['list_calls_per_trigger_poll']:.2f} per deferred trigger and poll")
    probe = {k: v for k, v in m.capacity_probe.items() if k not in ("events", "errors")}
    if probe:
        print(f"one capacity-trigger poll after the run ({len(m.runs)} runs in the job): {sum(probe.values())} API calls "
              f"({', '.join(f'{k} {v}' for k, v in sorted(probe.items()))}) per poll interval "
              "(one count, shared by the DAG run's deferred submits in a triggerer)")
    names = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag-processor",
             "api-server": "api-server", "workspace": "workspace server", "dashboard": "dashboards"}
    print(f"CPU seconds during the run ({m.trigger_to_end_s:.0f} s; 2 cores = {2 * m.trigger_to_end_s:.0f} CPU-s):")
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
        print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}, median {statistics.median(loads):.1f}")
    return {"benchmark": "grid_scale", "experiments": n, "state": m.state, "cml_runs": len(m.runs),
            "wall_s": round(m.wall_s, 1), "runs_s": round(fig["runs_s"], 1), "concurrency": concurrency,
            "overhead_per_experiment_s": round(over, 3),
            "serial_overhead_per_experiment_s": round(fig["serial_overhead_per_experiment_s"], 3),
            "task_instances": m.task_instances, "worker_task_instances": m.worker_task_instances,
            "api_calls_per_experiment": round(per, 2), "api_calls": dict(m.calls),
            "cpu_s": {k: [round(a, 1), round(b, 1)] for k, (a, b) in m.cpu.items()},
            "grid_view_s": round(after, 3), "grid_view_bytes": size,
            "grid_view_during_max_s": round(during[0], 3) if during else None,
            "capacity_polling": capacity, "capacity_probe_calls": probe, "runs_in_flight_max": in_flight,
            "load": [min(loads), max(loads)] if loads else None}


def capacity_polling(samples: list[Sample]) -> dict[str, float] | None:
    """API call rates over the sample intervals in which capacity triggers were deferred."""
    seconds = calls = lists = deferred = 0.0
    most = 0
    for a, b in zip(samples, samples[1:]):
        if not (a.deferred_submits and b.deferred_submits):
            continue
        dt = b.t - a.t
        diff = b.calls - a.calls
        seconds += dt
        calls += sum(v for k, v in diff.items() if k != "errors")
        lists += diff["list runs (pages)"] + diff["list jobs"]
        deferred += (a.deferred_submits + b.deferred_submits) / 2 * dt
        most = max(most, a.deferred_submits, b.deferred_submits)
    if not seconds:
        return None
    mean_deferred = deferred / seconds
    return {"seconds": round(seconds, 1), "mean_deferred": round(mean_deferred, 1), "max_deferred": most,
            "calls_per_s": round(calls / seconds, 1), "list_calls_per_s": round(lists / seconds, 1),
            "list_calls_per_trigger_poll": round(lists / seconds / mean_deferred, 2) if mean_deferred else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", "-n", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=2000, help="rows of the simulated training table")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--max-parallel", type=int, default=4, help="the grid's max_parallel (runs in flight)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the DAG run")
    parser.add_argument("--var", type=Path, default=None, help="stack folder (default: a fresh temp dir)")
    args = parser.parse_args()

    from factory_tasks.training.grid import load_grid

    var = (args.var or Path(tempfile.mkdtemp(prefix="mf-scale-"))).resolve()
    grid = write_grid(var / "config" / "grid-scale.yaml", args.experiments, folds=args.folds, max_parallel=args.max_parallel)
    config = load_grid(grid)  # the grid is valid before anything starts
    print(f"grid {grid}: {config.size} experiments ({config.cv.folds} folds, max_parallel {config.max_parallel}), "
          f"{args.rows} rows, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f} at the start", flush=True)

    def say(msg: str) -> None:
        print(msg, flush=True)

    measured = run_under_scheduler(var, {"grid_path": str(grid), "reuse_results": False}, rows=args.rows,
                                   timeout_s=args.timeout, say=say)
    # the stack's poll interval for CML (stack.env.airflow_env sets it for the local workspace)
    from stack.env import airflow_env, stack_paths

    poll_s = float(airflow_env(stack_paths(var), workspace_url="-", api_key="-")["MODEL_FACTORY_CML_POLL_INTERVAL_S"])
    figures = report(measured, config.size, poll_interval_s=poll_s)
    print(json.dumps(figures))
    return 0 if measured.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
