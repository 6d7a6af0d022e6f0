"""The pure helpers of ``benchmarks/grid_scale.py``: the grid file, the access-log counting and
the overhead arithmetic (the benchmark itself is not part of the test suite)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from benchmarks.grid_scale import (
    classify_request,
    count_requests,
    experiment_timeline,
    format_profile,
    format_slot_cycle,
    format_timeline,
    grid_document,
    job_profile,
    max_concurrency,
    overhead_figures,
    pool_check,
    slot_cycle,
    task_timeline,
    write_grid,
)


def test_grid_file_is_valid_with_n_distinct_experiments(tmp_path):
    from factory_tasks.training.grid import expand_grid, load_grid

    config = load_grid(write_grid(tmp_path / "g.yaml", 250, folds=2, max_parallel=3))
    assert config.size == 250 and config.max_experiments == 250 and config.max_parallel == 3
    specs = expand_grid(config, {"path": "-", "hash": "-"})
    assert len({s.experiment_id for s in specs}) == 250
    assert {s.params["C"] for s in specs} == {round(0.01 * k, 2) for k in range(1, 251)}
    with pytest.raises(ValueError):
        grid_document(0)


def test_requests_are_counted_by_route_kind():
    p = "/api/v2/projects/ab-cd"
    lines = [
        'INFO:     127.0.0.1:1 - "GET /health HTTP/1.1" 200 OK',
        'INFO:     127.0.0.1:1 - "GET /api/v2/projects?search_filter=%7B%7D&page_size=100 HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "GET {p}/jobs?page_size=100 HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "POST {p}/jobs HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "GET {p}/jobs/j1/runs?sort=-created_at&page_size=100&page_token=x HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "POST {p}/jobs/j1/runs HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "GET {p}/jobs/j1/runs/r1 HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "POST {p}/files/experiments/e1/result.json%3Adownload HTTP/1.1" 404 Not Found',
        f'INFO:     127.0.0.1:1 - "GET {p}/files/experiments/e1 HTTP/1.1" 200 OK',
        f'INFO:     127.0.0.1:1 - "POST {p}/files HTTP/1.1" 200 OK',
        "2026-12-02 20:21:00,786 INFO cml_workspace: project created: model-factory",
    ]
    assert count_requests(lines) == {
        "list projects": 1, "list jobs": 1, "create job": 1, "list runs (pages)": 1, "create run": 1,
        "get run": 1, "download file": 1, "list files": 1, "upload file": 1, "errors": 1}
    assert classify_request("POST", f"{p}/jobs/j1/runs/r1:stop") == "stop run"
    assert classify_request("GET", "/health") is None


def test_concurrency_and_overhead_arithmetic():
    # two slots: [0, 2] and [1, 3] overlap; [3, 4] starts as [1, 3] ends (no overlap)
    assert max_concurrency([(0, 2), (1, 3), (3, 4)]) == 2
    assert max_concurrency([]) == 0
    fig = overhead_figures(wall_s=10.0, durations=[2.0, 2.0, 1.0, 1.0], concurrency=2, experiments=4)
    assert fig["runs_s"] == 6.0 and fig["critical_path_s"] == 3.0
    assert fig["overhead_per_experiment_s"] == pytest.approx((10 - 3) / 4)
    assert fig["serial_overhead_per_experiment_s"] == pytest.approx((10 - 6) / 4)
    with pytest.raises(ValueError):
        overhead_figures(1.0, [1.0], 0, 1)


def test_timeline_takes_each_tasks_first_start_and_last_end():
    from datetime import datetime, timezone

    start = datetime(2026, 12, 4, 12, 0, 0, tzinfo=timezone.utc)
    tis = [
        {"task_id": "plan", "scheduled_when": "2026-12-04T12:00:01Z", "queued_when": "2026-12-04T12:00:01.5Z",
         "start_date": "2026-12-04T12:00:02Z", "end_date": "2026-12-04T12:00:03Z"},
        {"task_id": "wait", "scheduled_when": None, "queued_when": None,
         "start_date": "2026-12-04T12:00:09Z", "end_date": "2026-12-04T12:00:20Z"},
        {"task_id": "wait", "scheduled_when": None, "queued_when": None,
         "start_date": "2026-12-04T12:00:05Z", "end_date": "2026-12-04T12:00:30Z"},
        {"task_id": "skipped", "scheduled_when": None, "queued_when": None, "start_date": None, "end_date": None},
    ]
    rows = task_timeline(tis, start)
    assert [r["task_id"] for r in rows] == ["plan", "wait", "skipped"]
    assert rows[0] == {"task_id": "plan", "instances": 1, "scheduled": 1.0, "queued": 1.5, "started": 2.0, "ended": 3.0}
    assert rows[1] == {"task_id": "wait", "instances": 2, "scheduled": None, "queued": None,
                       "started": 5.0, "ended": 30.0}
    lines = format_timeline(rows)
    assert lines[2].split() == ["wait", "2", "-", "-", "5.0", "30.0"]


def _record(eid, index, created, starting, running, finished):
    env = {"MF_EXPERIMENT_ID": eid, "MF_FACTORY_RUN_ID": "r1", "MF_AIRFLOW_TI_KEY": f"model_factory/r1/run_experiment/{index}"}
    at = lambda s: datetime.fromtimestamp(1_800_000_000 + s, timezone.utc).isoformat().replace("+00:00", "Z")
    return {"environment": json.dumps(env), "created_at": at(created), "starting_at": at(starting),
            "running_at": at(running), "finished_at": at(finished)}


def test_job_profile_splits_each_runs_own_time_and_sums_them():
    records = [_record("a" * 16, 0, 0.0, 1.0, 1.1, 11.1), _record("b" * 16, 1, 0.0, 0.5, 0.5, 5.5),
               _record("c" * 16, 2, 0.0, 0.5, 0.5, 2.0)]
    results = {
        "a" * 16: {"fit_time": {"total": 6.0}, "score_time": {"total": 2.0},
                   "timings": {"entered_at_unix": 1_800_000_000 + 1.4, "code_version_s": 0.1, "imports_s": 0.0,
                               "snapshot_s": 0.2, "cv_s": 8.5, "save_s": 0.3, "job_s": 9.2}},
        "b" * 16: {"fit_time": {"total": 3.0}, "score_time": {"total": 1.0},
                   "timings": {"entered_at_unix": 1_800_000_000 + 0.6, "code_version_s": 0.0, "imports_s": 0.0,
                               "snapshot_s": 0.1, "cv_s": 4.0, "save_s": 0.2, "job_s": 4.4}},
        "c" * 16: {"fit_time": {"total": 1.0}, "score_time": {"total": 0.2}},  # an older result: no timings
    }
    p = job_profile(records, results)
    assert p["runs"] == 2 and p["unprofiled"] == 1
    assert p["own"] == pytest.approx(10.0 + 5.0)
    parts = ("start", "code_version", "snapshot", "fit", "score", "cv_other", "save", "job_other", "exit")
    assert sum(p[k] for k in parts) == pytest.approx(p["own"])
    assert p["start"] == pytest.approx(0.3 + 0.1) and p["fit"] == 9.0 and p["cv_other"] == pytest.approx(0.5)
    assert p["exit"] == pytest.approx((11.1 - 1.4 - 9.2) + (5.5 - 0.6 - 4.4))
    assert p["queued"] == pytest.approx(1.5) and p["fork"] == pytest.approx(0.1)
    lines = format_profile(p, 2, {"fit": 8.0, "score": 3.0})
    assert any(line.split()[:2] == ["fit", "9.00"] and "(1.12x)" in line for line in lines)


def test_pool_check_counts_runs_in_flight_from_creation_to_finish():
    records = [_record("a" * 16, 0, 0, 1, 1, 5), _record("b" * 16, 1, 0, 5, 5, 9), _record("c" * 16, 2, 5, 9, 9, 12)]
    assert pool_check(records, 2) == {"runs_in_flight_max": 2, "max_parallel": 2, "respected": True}
    assert pool_check(records, 1)["respected"] is False


def test_experiment_timeline_joins_task_instances_and_runs_by_map_index():
    start = datetime.fromtimestamp(1_800_000_000, timezone.utc)
    records = [_record("a" * 16, 1, 2.0, 2.1, 2.2, 7.0)]
    tis = [{"task_id": "run_experiment", "map_index": 1, "try_number": 1, "state": "success",
            "scheduled_when": None, "start_date": "2027-01-15T08:00:01.5Z", "end_date": "2027-01-15T08:00:09Z"},
           {"task_id": "plan_experiments", "map_index": -1}]
    lines = experiment_timeline(tis, records, start)
    assert len(lines) == 2 and lines[1].split()[:7] == ["1", "-", "1.5", "2.0", "2.2", "7.0", "9.0"]


def test_slot_cycle_splits_a_slots_turn_into_phases():
    at = lambda s: datetime.fromtimestamp(1_800_000_000 + s, timezone.utc).isoformat().replace("+00:00", "Z")

    def ti(index, queued, start, end):
        return {"task_id": "run_experiment", "map_index": index, "queued_when": at(queued), "start_date": at(start),
                "end_date": at(end)}

    # one slot: instance 0 queued at 0, its run 0.3-0.6, ended at 2.6; instance 1 queued at 2.9
    tis = [ti(0, 0.0, 0.1, 2.6), ti(1, 2.9, 3.0, 5.5), {"task_id": "plan_experiments", "map_index": -1}]
    records = [_record("a" * 16, 0, 0.3, 0.3, 0.35, 0.6), _record("b" * 16, 1, 3.2, 3.2, 3.25, 3.5)]
    cycle = slot_cycle(tis, records)
    assert cycle["n"] == 2
    assert cycle["pick_up"] == pytest.approx(0.1) and cycle["submit"] == pytest.approx(0.2)
    assert cycle["run"] == pytest.approx(0.3) and cycle["run_end_to_task_end"] == pytest.approx(2.0)
    assert cycle["hand_off"] == pytest.approx(0.3)  # the second instance's end has no successor
    assert cycle["cycle"] == pytest.approx(2.9)
    lines = format_slot_cycle(cycle)
    assert lines[4].split()[:3] == ["run_end_to_task_end", "2.000", "69.0%"] and lines[-1].split() == ["cycle", "2.900"]
    assert format_slot_cycle(slot_cycle([], []))[0].startswith("  no run_experiment")
