"""An Airflow 3 backfill of an hourly DAG over given windows, driven over the REST API
(``POST /api/v2/backfills``), as ``make run``'s closed-loop demo runs its traffic and monitoring.

One run per window, at the logical date the DAG's schedule gives that window (a run's logical
date is its window's start), one at a time and oldest first: the scheduler runs them, and the
hourly schedule later neither runs a window twice nor finds its date taken. A window the
schedule already ran is run again with the backfill's conf, so the DAG's tasks must replace
their window's output.

Such an earlier run is deleted before the backfill creates a fresh one, not cleared by it
(``reprocess_behavior`` "completed"). When SQLite is locked mid-way, Airflow 3.3.2's clean-up of
the partial backfill (``models/backfill.py`` ``_cleanup_partial_backfill``) deletes the runs it
had already committed, which the scheduler may be scheduling by then: the scheduler dies of an
``ObjectDeletedError`` (seen in a test suite: three runs created, the POST answered 503, the
scheduler dead 0.2 s later). So the backfill is created with its DAG paused: the scheduler
neither starts nor schedules a paused DAG's runs, and the DAG is unpaused once the POST has
answered, whatever it answered.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from stack.airflow_api import FINISHED_RUN_STATES, AirflowApi, AirflowApiError, iso, when
from stack.deploy import failed_task
from stack.running import RunningStack

HOUR = timedelta(hours=1)
BACKFILL_TIMEOUT_S = 15 * 60
#: how long a run of a window may still run before the backfill takes the window
IN_FLIGHT_TIMEOUT_S = 5 * 60
TICK_S = 3.0


class BackfillFailed(RuntimeError):
    """The backfill could not be made, or one of its runs failed; the message says which and why."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def backfill(stack: RunningStack, dag_id: str, windows: list[datetime], bounds: tuple[datetime, datetime],
             conf: dict) -> list[dict]:
    """One backfill run of ``dag_id`` per window, at the logical date the DAG's schedule gives
    it (``bounds``: the from and to dates that select exactly those), one at a time, oldest
    first; waits for them and returns them. Runs of those windows still in flight are waited for
    first: a backfill does not take a window whose run is running. On any error or interrupt the
    backfill is cancelled and its runs stopped."""
    api = stack.api
    dag = api.dag(dag_id)
    if dag is None:
        raise BackfillFailed(f"Airflow does not know DAG {dag_id} (has the dag-processor parsed dags/?)")
    if dag.get("is_paused"):
        api.unpause(dag_id)  # backfill runs of a paused DAG are never started
        _say(f"  unpaused DAG {dag_id}: a backfill runs only on an unpaused DAG")
    _wait_in_flight(stack, dag_id, windows)
    _delete_earlier_runs(api, dag_id, windows)
    body = {"dag_id": dag_id, "from_date": iso(bounds[0]), "to_date": iso(bounds[1]), "run_backwards": False,
            "dag_run_conf": conf, "reprocess_behavior": "completed", "max_active_runs": 1}
    planned = [when(b["logical_date"]) for b in _post_backfill(api, "/api/v2/backfills/dry_run", body)["backfills"]]
    if planned != windows:
        raise BackfillFailed(f"a backfill of {dag_id} from {body['from_date']} to {body['to_date']} would run "
                             f"{', '.join(iso(d) for d in planned) or 'nothing'}, not the windows "
                             f"{', '.join(iso(w) for w in windows)}: its timetable dates them otherwise")
    created = _create_while_paused(api, body)
    _say(f"  backfill {created['id']} of {dag_id}: {len(windows)} run(s), windows {windows[0]:%H:%M}–"
         f"{windows[-1] + HOUR:%H:%M} UTC")
    try:
        return _wait_for_backfill(stack, dag_id, created, windows)
    except BaseException:
        _cancel(api, dag_id, created, windows)
        raise


def _create_while_paused(api: AirflowApi, body: dict) -> dict:
    """The backfill, created while its DAG is paused (see the module's doc); unpaused after."""
    api.set_paused(body["dag_id"], True)
    try:
        return _post_backfill(api, "/api/v2/backfills", body)
    finally:
        api.set_paused(body["dag_id"], False)


def _post_backfill(api: AirflowApi, path: str, body: dict, attempts: int = 5) -> dict:
    """POST a backfill (or its dry run). A 503 is SQLite's lock: Airflow removes what it had
    begun, so it is tried again; a 409 after one is that attempt left behind, cancelled first."""
    locked = False
    for attempt in range(1, attempts + 1):
        resp = api.call("POST", path, json=body, attempts=1, ok=(409, 503))
        if resp.status_code < 400:
            return resp.json()
        if resp.status_code == 409:
            left = [b for b in api.get("/api/v2/backfills", dag_id=body["dag_id"], limit=100)["backfills"]
                    if b["completed_at"] is None]
            ours = [b for b in left if (when(b["from_date"]), when(b["to_date"]))
                    == (when(body["from_date"]), when(body["to_date"]))]
            if not locked or len(ours) != len(left):
                raise BackfillFailed(f"another backfill of {body['dag_id']} is still active: let it end, or cancel it "
                                     "in the Airflow UI (Browse → Backfills)")
            for b in ours:
                api.call("PUT", f"/api/v2/backfills/{b['id']}/cancel", ok=(409,))
        locked = True
        time.sleep(2.0 * attempt)
    raise BackfillFailed(f"POST {path} for {body['dag_id']}: the metadata DB stayed locked ({attempts} attempts)")


def _runs_at(api: AirflowApi, dag_id: str, windows: list[datetime]) -> list[dict]:
    """The DAG's runs of these windows (a run's logical date is its window's start)."""
    return api.dag_runs(dag_id, logical_date_gte=iso(windows[0]), logical_date_lte=iso(windows[-1]))


def _delete_earlier_runs(api: AirflowApi, dag_id: str, windows: list[datetime]) -> None:
    """Delete the (finished) runs of these windows, so the backfill creates every run itself."""
    earlier = _runs_at(api, dag_id, windows)
    for run in earlier:
        api.delete_run(dag_id, run["dag_run_id"])
    if earlier:
        _say(f"  replacing {len(earlier)} earlier run(s) of these windows: "
             f"{', '.join(r['dag_run_id'] for r in earlier)}")


def _wait_in_flight(stack: RunningStack, dag_id: str, windows: list[datetime]) -> None:
    deadline = time.monotonic() + IN_FLIGHT_TIMEOUT_S
    told: set[str] = set()
    while True:
        busy = [r for r in _runs_at(stack.api, dag_id, windows) if r["state"] not in FINISHED_RUN_STATES]
        if not busy:
            return
        for run in busy:
            if run["dag_run_id"] not in told:
                told.add(run["dag_run_id"])
                _say(f"  waiting for {dag_id} run {run['dag_run_id']} ({run['state']}) to end before the backfill "
                     "takes its window")
        if time.monotonic() > deadline:
            raise BackfillFailed(f"{dag_id} run(s) {', '.join(r['dag_run_id'] for r in busy)} still running after "
                                 f"{IN_FLIGHT_TIMEOUT_S}s; a backfill cannot take their windows")
        stack.check_alive()
        time.sleep(TICK_S)


def _wait_for_backfill(stack: RunningStack, dag_id: str, created: dict, windows: list[datetime]) -> list[dict]:
    api = stack.api
    since = when(created["created_at"])
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    reported: set[str] = set()
    while True:
        ours = {when(r["logical_date"]): r for r in _runs_at(api, dag_id, windows) if _of_backfill(r, since)}
        missing = [w for w in windows if w not in ours]
        if missing:
            raise BackfillFailed(f"backfill {created['id']} of {dag_id} made no run for the window(s) "
                                 f"{', '.join(iso(w) for w in missing)} (a run of that window was in flight)")
        for start in windows:
            run = ours[start]
            if (when(run["data_interval_start"]), when(run["data_interval_end"])) != (start, start + HOUR):
                raise BackfillFailed(f"{dag_id} run {run['dag_run_id']} covers {run['data_interval_start']} to "
                                     f"{run['data_interval_end']}, not the window {iso(start)}")
            if run["state"] in FINISHED_RUN_STATES and run["dag_run_id"] not in reported:
                reported.add(run["dag_run_id"])
                _say(f"  {time.strftime('%H:%M:%S')} {dag_id} {start:%H:%M}–{start + HOUR:%H:%M}: {run['state']} "
                     f"({run['dag_run_id']})")
                if run["state"] != "success":
                    raise BackfillFailed(f"{dag_id} for the window {start:%H:%M} failed: "
                                         f"{failed_task(api, dag_id, run['dag_run_id'])}")
        if len(reported) == len(windows):
            return [ours[w] for w in windows]
        if time.monotonic() > deadline:
            raise BackfillFailed(f"backfill {created['id']} of {dag_id} not done after {BACKFILL_TIMEOUT_S}s")
        stack.check_alive()
        time.sleep(TICK_S)


def _of_backfill(run: dict, since: datetime) -> bool:
    """A backfill run queued since ``since``: one the backfill created, or a finished run of the
    same window it cleared and queued again."""
    return run["run_type"] == "backfill" and bool(run.get("queued_at")) and when(run["queued_at"]) >= since


def _cancel(api: AirflowApi, dag_id: str, created: dict, windows: list[datetime]) -> None:
    """Cancel the backfill (its queued runs fail) and stop its running ones."""
    try:
        api.call("PUT", f"/api/v2/backfills/{created['id']}/cancel", ok=(409,), attempts=2)
        since = when(created["created_at"])
        for run in _runs_at(api, dag_id, windows):
            if _of_backfill(run, since) and run["state"] == "running":
                api.mark_failed(dag_id, run["dag_run_id"])
    except AirflowApiError as exc:
        _say(f"  (could not cancel backfill {created['id']} of {dag_id}: {exc})")
