"""The pure helpers of ``benchmarks/grid_scale.py``: the grid file, the access-log counting and
the overhead arithmetic (the benchmark itself is not part of the test suite)."""

from __future__ import annotations

import pytest

from benchmarks.grid_scale import (
    classify_request,
    count_requests,
    format_timeline,
    grid_document,
    max_concurrency,
    overhead_figures,
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
        f'INFO:     127.0.0.1:1 - "GET /api/v2/projects?search_filter=%7B%7D&page_size=100 HTTP/1.1" 200 OK',
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
