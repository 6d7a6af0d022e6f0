"""The model_factory stages on two "workers" with different working directories, temporary
folders and homes: each hand-off is an XCom value or a project file, never a worker's disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stack.env import stack_paths
from stack.local import local_stack

from factory_tasks.core.contracts import RunPlan
from factory_tasks.loop.history import ensure_training_table
from factory_tasks.loop.simulator import simulate_interactions
from factory_tasks.warehouse.dialects import dialect_for
from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA
from factory_tasks.warehouse.outcomes import OutcomeStore

pytestmark = pytest.mark.e2e

WORKER = Path(__file__).with_name("stage_worker.py")
REPO = Path(__file__).resolve().parents[2]
GRID = """
cv: {folds: 2, random_state: 0}
metrics: [roc_auc, log_loss, policy_value]
max_parallel: 2
economics:
  conversion_value: 100.0
  offer_costs: {Discount: 8.0, Buy One Get One: 4.0, No Offer: 0.0}
families:
  forest:
    estimator: RandomForestClassifier
    resources: {cpu: 1, memory_gb: 1}
    params: {n_estimators: [5], max_depth: [3]}
  logistic_regression:
    estimator: LogisticRegression
    resources: {cpu: 1, memory_gb: 1}
    params: {C: [0.5]}
"""


def _worker(root: Path, name: str) -> dict[str, str]:
    home = root / name
    for sub in ("cwd", "tmp", "home", "artifacts"):
        (home / sub).mkdir(parents=True)
    return {"cwd": str(home / "cwd"), "TMPDIR": str(home / "tmp"), "HOME": str(home / "home"),
            "MODEL_FACTORY_ARTIFACTS": str(home / "artifacts")}


def _stage(env: dict[str, str], worker: dict[str, str], stage: str, **args):
    run_env = {**env, **{k: v for k, v in worker.items() if k != "cwd"}}
    proc = subprocess.run([sys.executable, str(WORKER), stage, json.dumps(args)], cwd=worker["cwd"], env=run_env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("XCOM ")]
    return json.loads(line[5:])


def _files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def test_each_stage_on_another_worker_needs_nothing_from_the_others_disk(tmp_path):
    paths = stack_paths(tmp_path / "stack")
    with local_stack(paths, cpus=2, memory_gb=4) as stack:
        assert ensure_training_table(stack.warehouse_hook(), n_rows=800, seed=5)
        grid_file = paths.config / "grid.yaml"  # a config folder of the stack
        grid_file.write_text(GRID)
        env = {**stack.env, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
        a, b = _worker(tmp_path, "worker-a"), _worker(tmp_path, "worker-b")
        run_id = "manual__2026-12-01T00:00:00+00:00"

        grid = _stage(env, a, "validate_grid", grid_path=str(grid_file))
        snapshot = _stage(env, b, "snapshot", grid=grid)
        planned = _stage(env, a, "plan", grid=grid, snapshot=snapshot, run_id=run_id)
        assert "RandomForest" in planned[0]["environment"]["MF_EXPERIMENT_SPEC"]  # long ones first
        assert all(p["result_file"].startswith("experiments/") for p in planned)  # project paths
        assert _stage(env, b, "submit_and_wait", planned=planned) == ["ENGINE_SUCCEEDED"] * 2
        recorded = _stage(env, a, "record", run_id=run_id)

        assert recorded == {"factory_run_id": run_id, "recorded": 2, "failed": 0}
        frame = OutcomeStore(stack.warehouse_hook()).read(run_id)
        assert sorted(frame["family"]) == ["forest", "logistic_regression"]
        assert (frame["run_reason"] == "new experiment").all()
        # planned again with nothing changed: both are reused
        again = _stage(env, a, "plan", grid=grid, snapshot=snapshot, run_id=run_id + "-again")
        assert again == []

        # planned with edited code (an uncommitted change to a copy of factory_tasks that this
        # worker imports first): both run again, and the plan says why
        edited = tmp_path / "edited-code"
        shutil.copytree(REPO / "factory_tasks", edited / "factory_tasks", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "jobs", edited / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        features = edited / "factory_tasks" / "training" / "features.py"
        features.write_text(features.read_text() + "\n# a changed feature pipeline\n")
        changed_env = {**env, "PYTHONPATH": os.pathsep.join([str(edited), env["PYTHONPATH"]])}
        rerun = _stage(changed_env, b, "plan", grid=grid, snapshot=snapshot, run_id=run_id + "-edited")
        assert len(rerun) == 2
        plan = RunPlan.parse(stack.cml_hook().download_file(RunPlan.path_for(run_id + "-edited")), "plan")
        assert plan.reused == [] and set(plan.to_run.values()) == {
            f"code changed ({frame['code_version'].iloc[0]} -> {plan.provenance.code_version})"}

        # include_interactions: history plus matured ε-greedy decisions; a new snapshot (with the
        # logged propensity), so new experiments, whose jobs read and weight by that column
        logged = simulate_interactions(200, seed=6)
        logged = logged.assign(propensity=np.where(np.arange(200) % 10 == 0, 0.1 / 3, 0.9 + 0.1 / 3),
                               prediction_uuid=[f"u{i}" for i in range(200)], decided_at_ms=np.arange(200),
                               window_start="2026-12-01T06:00:00Z")
        dialect = dialect_for(stack.warehouse_hook())
        dialect.create_table(stack.warehouse_hook(), CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA)
        dialect.append_rows(stack.warehouse_hook(), CUSTOMER_INTERACTIONS, CUSTOMER_INTERACTIONS_SCHEMA,
                            logged[[c.name for c in CUSTOMER_INTERACTIONS_SCHEMA]].itertuples(index=False, name=None))
        assert _stage(env, a, "snapshot", grid=grid) == snapshot  # off: the very same snapshot
        fresh = _stage(env, b, "snapshot", grid=grid, include_interactions=True)
        assert (fresh["n_rows"], fresh["interaction_rows"]) == (1000, 200) and fresh["hash"] != snapshot["hash"]
        fresh_planned = _stage(env, a, "plan", grid=grid, snapshot=fresh, run_id=run_id + "-fresh")
        assert _stage(env, b, "submit_and_wait", planned=fresh_planned) == ["ENGINE_SUCCEEDED"] * 2

        # neither worker kept anything that another stage needed (or anything at all)
        for worker in (a, b):
            for key in ("cwd", "TMPDIR", "MODEL_FACTORY_ARTIFACTS"):
                assert _files(worker[key]) == [], (worker[key], _files(worker[key]))
