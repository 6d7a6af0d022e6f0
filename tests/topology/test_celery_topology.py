"""``model_factory`` under the production topology (:mod:`tests.harness.topology`): PostgreSQL metadata
DB, Redis broker, ``CeleryExecutor`` with two workers that share no disk (own cwd, TMPDIR, HOME,
AIRFLOW_HOME), a real scheduler, dag-processor, triggerer and api-server (the workers' task
runners reach its execution API).

A 6-experiment grid (tiny logistic regressions, max_parallel 4) is triggered through the REST
API. Asserted: the mapped ``run_experiment`` instances ran on both workers (the TIs' hostname,
from the worker's ``hostname_callable``), each submitted its run there, deferred and was ended
by its trigger when the run succeeded (its trigger log); the plan task sized the pool
``model_factory_experiments`` to 4 slots counting deferred tasks, and never more than 4 CML runs
were in flight (the workspace's run records) while experiments did overlap;
``experiment_outcomes`` has exactly one row per experiment for the run; the asset event
started ``experiments_summary`` (succeeded) and ``deploy_best_model``; the 30-minute schedule
of ``experiments_summary`` is registered (next run on a :00/:30). The asset-triggered deploy
run waits on its 2-hour review; a manual run with a 24-second review window then shows the
HITL ``response_timeout`` taking the default under the real scheduler and triggerer, and the
deployed model answering. No log holds a generated secret; when the topology stops, no
process that names the test's folder is left.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from datetime import datetime, timedelta

import httpx
import psutil
import pytest

from benchmarks.grid_scale import max_concurrency
from stack.env import stack_paths
from tests.harness.topology import WORKERS, celery_topology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GRID = """
cv: {folds: 2, random_state: 0}
metrics: [roc_auc, log_loss, policy_value, policy_uplift]
ranking_metric: roc_auc
max_parallel: 4
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
families:
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [0.01, 0.1, 1.0, 3.0, 10.0, 30.0]}
"""
EXPERIMENTS = 6
MAX_PARALLEL = 4
#: one mapped instance per experiment: submits on a worker, waits in the triggerer, in the pool
EXPERIMENT_TASK = "run_experiment"


def processes_of(var) -> list[psutil.Process]:
    """Every process whose command line or environment names the test's var folder."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == psutil.Process().pid:
            continue
        try:
            if str(var) in " ".join(proc.cmdline()) or proc.environ().get("MODEL_FACTORY_VAR") == str(var):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def var(tmp_path):
    """The test's var folder; whatever still names it at the end is killed (the last resort)."""
    folder = tmp_path / "var"
    yield folder
    left = processes_of(folder)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)


class Api:
    def __init__(self, topo):
        from stack.up import api_token

        self.topo = topo
        self.http = httpx.Client(base_url=topo.api_url, timeout=20,
                                 headers={"Authorization": f"Bearer {api_token(topo.api_url, topo.paths)}"})
        self.calls = 0

    def get(self, path: str, **params):
        self.calls += 1
        resp = self.http.get(f"/api/v2{path}", params=params)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()

    def send(self, method: str, path: str, body: dict):
        self.calls += 1
        resp = self.http.request(method, f"/api/v2{path}", json=body)
        assert resp.status_code in (200, 201), f"{method} {path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()

    def wait(self, what: str, check, timeout_s: float, interval: float = 1.0):
        """Poll ``check`` (returns a truthy value when done) until ``timeout_s``; fail naming
        what was awaited and the logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; logs: {', '.join(self.topo.logs)} "
                            f"(task logs under {self.topo.paths.logs / 'tasks'})", pytrace=False)
            time.sleep(interval)

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100, order_by="run_after")["dag_runs"]

    def tis(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=200)["task_instances"]

    def run_to_end(self, dag_id: str, run_id: str, timeout_s: float, seen: dict | None = None) -> dict:
        """Wait for the run to end; ``seen`` collects every state each TI was observed in."""
        def done():
            run = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            if seen is not None:
                for ti in self.tis(dag_id, run_id):
                    seen[(ti["task_id"], ti["map_index"])].append(ti["state"])
            return run if run["state"] in ("success", "failed") else None

        return self.wait(f"{dag_id} run {run_id} to end", done, timeout_s)


def _overlapping(spans: list[tuple]) -> list[tuple]:
    """The pairs of ``(label, start, end)`` spans that overlap in time."""
    return [(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1:] if a[1] < b[2] and b[1] < a[2]]


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_model_factory_on_two_celery_workers(var, tmp_path):
    started = time.monotonic()
    paths = stack_paths(var)
    grid = paths.make().config / "grid.yaml"  # a config folder of the stack
    grid.write_text(GRID)
    with celery_topology(paths, rows=2000, timeout_s=240) as topo:
        up_s = time.monotonic() - started
        api = Api(topo)

        # -- the factory run ---------------------------------------------------------------
        run = api.send("POST", "/dags/model_factory/dagRuns",
                       {"logical_date": None, "conf": {"grid_path": str(grid), "max_parallel": MAX_PARALLEL}})
        run_id = run["dag_run_id"]
        seen: dict = defaultdict(list)
        t0 = time.monotonic()
        final = api.run_to_end("model_factory", run_id, 300, seen)
        factory_s = time.monotonic() - t0
        tis = api.tis("model_factory", run_id)
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
        assert final["state"] == "success", f"model_factory {run_id}: {states}; logs {topo.logs}"

        # on both workers, each deferred while its run went on and ended by its trigger
        mapped = [t for t in tis if t["task_id"] == EXPERIMENT_TASK and t["map_index"] >= 0]
        assert len(mapped) == EXPERIMENTS and all(t["state"] == "success" for t in mapped), states
        for t in mapped:  # a deferral too short for the state polls to see leaves its trigger log
            folder = (paths.logs / "tasks" / "dag_id=model_factory" / f"run_id={run_id}" / f"task_id={t['task_id']}"
                      / f"map_index={t['map_index']}")
            assert list(folder.glob("attempt=*.log.trigger.*.log")), f"no trigger log for {t['map_index']} in {folder}"
            assert any("succeeded" in p.read_text() for p in folder.glob("attempt=*.log")), folder
        # the plan task sized the pool to the run's max_parallel, counting deferred instances
        pool = api.get("/pools/model_factory_experiments")
        assert pool["slots"] == MAX_PARALLEL and pool["include_deferred"] is True, pool
        per_worker = defaultdict(list)
        for ti in tis:
            if not ti["hostname"]:  # skipped, or never on a worker (EmptyOperator)
                continue
            per_worker[ti["hostname"]].append(f"{ti['task_id']}[{ti['map_index']}]")
        assert set(per_worker) <= set(WORKERS), f"task instances on unknown hosts: {dict(per_worker)}"
        mapped_hosts = {t["hostname"] for t in mapped}
        assert mapped_hosts == set(WORKERS), f"mapped tasks ran on {mapped_hosts} only: {dict(per_worker)}"
        from cml_provider.hooks.cml import CmlHook

        from factory_tasks.core.names import EXPERIMENT_JOB_PREFIX, MODEL_NAME

        cml = CmlHook.from_url(topo.workspace.url, topo.workspace.api_key, project_name="model-factory")
        ours = [r for j in cml.list_jobs() if j.name.startswith(EXPERIMENT_JOB_PREFIX) for r in cml.list_job_runs(j.id)
                if r.environment.get("MF_AIRFLOW_DAG_RUN_KEY") == f"model_factory/{run_id}"]
        # one run per experiment task (a retried submit may add a stopped one; see Airflow's
        # race on fast-firing triggers, apache/airflow#72716)
        assert len({r.environment.get("MF_AIRFLOW_TI_KEY") for r in ours}) == EXPERIMENTS, [
            (r.id, r.status, r.environment) for r in ours]
        # At the same time, within the cap: experiments were in flight together, each from its
        # instance's start on a worker to its CML run's end (the runs alone last under a second
        # here: whether two overlapped is printed), and never more CML runs at once than the pool
        # has slots. Overlap *across* workers is counted, not required: under load one worker can
        # take every instance just before the other is free.
        finished = {r.environment.get("MF_EXPERIMENT_ID"): _when(r.finished_at) for r in ours
                    if r.status.is_successful}
        spans = [((t["task_id"], t["map_index"], t["hostname"]), _when(t["start_date"]),
                  finished[t["rendered_fields"]["environment"]["MF_EXPERIMENT_ID"]]) for t in mapped]
        overlaps = _overlapping(spans)
        assert overlaps, f"no two experiments were in flight at once: {spans}"
        cross_worker = [(a, b) for a, b in overlaps if a[2] != b[2]]
        run_spans = [(r.id, _when(r.created_at), _when(r.finished_at)) for r in ours]
        run_overlaps = _overlapping(run_spans)
        assert max_concurrency([(start, end) for _, start, end in run_spans]) <= MAX_PARALLEL, run_spans

        # exactly one outcome row per experiment (the shared warehouse)
        with sqlite3.connect(paths.warehouse_db) as db:
            (rows,) = db.execute("SELECT count(*) FROM experiment_outcomes WHERE factory_run_id = ?", (run_id,)).fetchone()
            (distinct,) = db.execute("SELECT count(DISTINCT experiment_id) FROM experiment_outcomes "
                                     "WHERE factory_run_id = ?", (run_id,)).fetchone()
        assert rows == distinct == EXPERIMENTS, (rows, distinct)

        # the asset event started experiments_summary and deploy_best_model
        def asset_run(dag_id):
            return next((r for r in api.runs(dag_id) if r["run_type"] == "asset_triggered"), None)

        summary = api.wait("the asset-triggered experiments_summary run", lambda: asset_run("experiments_summary"), 60)
        assert api.run_to_end("experiments_summary", summary["dag_run_id"], 90)["state"] == "success"
        deploy = api.wait("the asset-triggered deploy_best_model run", lambda: asset_run("deploy_best_model"), 60)

        # the 30-minute schedule is registered
        details = api.get("/dags/experiments_summary/details")
        assert "*/30 * * * *" in (details["timetable_summary"] or "") + (details["timetable_description"] or ""), details
        next_run = _when(details["next_dagrun_run_after"])
        assert next_run.minute in (0, 30) and next_run.second == 0, details["next_dagrun_run_after"]

        # -- the review under the real scheduler ---------------------------------------------
        # the asset run's review waits for the default 2-hour window
        review_key = ("review", 0)
        api.wait("the asset-triggered deploy run's review to be deferred", lambda: any(
            (t["task_id"], t["map_index"]) == review_key
            and t["state"] in ("deferred", "awaiting_input")  # HITL's own name for deferred
            for t in api.tis("deploy_best_model", deploy["dag_run_id"])), 120)
        window = api.get(f"/dags/deploy_best_model/dagRuns/{deploy['dag_run_id']}/taskInstances/resolve_run/xcomEntries"
                         "/return_value")["value"]
        window = json.loads(window) if isinstance(window, str) else window
        assert window["minutes"] == 120 and _when(window["closes_at"]) - _when(window["finished_at"]) == timedelta(hours=2)
        api.send("PATCH", f"/dags/deploy_best_model/dagRuns/{deploy['dag_run_id']}", {"state": "failed"})

        # a manual run with a short window: nobody answers, the default (the best) is deployed
        manual = api.send("POST", "/dags/deploy_best_model/dagRuns", {"logical_date": None, "conf": {
            "factory_run_id": run_id, "review_window_minutes": 0.4, "replicas": 1}})
        t0 = time.monotonic()
        deploy_seen: dict = defaultdict(list)
        done = api.run_to_end("deploy_best_model", manual["dag_run_id"], 300, deploy_seen)
        deploy_s = time.monotonic() - t0
        deploy_tis = api.tis("deploy_best_model", manual["dag_run_id"])
        deploy_states = {t["task_id"]: t["state"] for t in deploy_tis}
        assert done["state"] == "success", deploy_states
        # the HITL step waited in the triggerer and was resumed on a worker; with a review to
        # answer, its timeout ends the window and the time sensor is skipped
        deferred = {key for key, history in deploy_seen.items() if {"deferred", "awaiting_input"} & set(history)}
        assert ("review", 0) in deferred, dict(deploy_seen)
        assert deploy_states["wait_for_review_window"] == "skipped", deploy_states
        for ti in deploy_tis:
            if (ti["task_id"], ti["map_index"]) in deferred:
                assert ti["state"] == "success" and ti["hostname"] in WORKERS, ti
        # HITL's trigger writes no trigger log: the review's own log shows the pause and the resume
        review_logs = list((paths.logs / "tasks").glob(f"dag_id=deploy_best_model/run_id={manual['dag_run_id']}"
                                                        "/task_id=review/**/attempt=1.log"))
        assert review_logs, "no log of the review task"
        review_log = review_logs[0].read_text()
        assert "Pausing task as AWAITING_INPUT" in review_log and review_log.count("Pre Execute") == 2, review_log[-2000:]
        hitl = api.get(f"/dags/deploy_best_model/dagRuns/{manual['dag_run_id']}/taskInstances/review/0/hitlDetails")
        assert hitl["responded_by_user"] is None and hitl["chosen_options"] == hitl["defaults"], hitl
        assert deploy_states["deploy"] == "success" and deploy_states["record_deployment"] == "success", deploy_states

        ws = topo.workspace
        answer = cml.call_model(cml.find_model(MODEL_NAME), {"customers": [{
            "customer_id": "c-1", "recency": 3, "history": 420.0, "used_discount": 0, "used_bogo": 1,
            "zip_code": "Surburban", "is_referral": 1, "channel": "Phone"}]},
            model_service_url=ws.model_service_url, api_key=ws.api_key)
        predictions = answer.prediction["predictions"]
        assert [p["customer_id"] for p in predictions] == ["c-1"] and answer.uuid, answer
        assert set(predictions[0]["offers"]) == {"Buy One Get One", "Discount", "No Offer"}, predictions
        secrets_ = topo.secrets
        logs = list(topo.logs)
        stopping = time.monotonic()

    # nothing left, no secret in any log
    stopped = time.monotonic()
    left = processes_of(var)
    assert left == [], [(p.pid, p.name()) for p in left]
    for path in logs + [str(p) for p in (paths.logs / "tasks").rglob("*") if p.is_file()]:
        text = open(path, errors="replace").read()
        assert not any(s in text for s in secrets_), f"a generated secret is in {path}"
    counts = {w: sum(t["hostname"] == w for t in mapped) for w in WORKERS}
    print(f"\ntopology up in {up_s:.0f}s; model_factory {factory_s:.0f}s; deploy {deploy_s:.0f}s; "
          f"stop {stopped - stopping:.0f}s; whole test {time.monotonic() - started:.0f}s")
    print(f"mapped experiment tasks per worker {counts}; all tasks {dict((k, len(v)) for k, v in per_worker.items())}; "
          f"{len(overlaps)} overlapping pairs ({len(cross_worker)} across workers), {len(run_overlaps)} of CML runs; deploy deferred {sorted(deferred)}; {api.calls} REST calls")
