"""`make run`'s second half: deploy the factory run's best experiment and ask it for offers.

Runs ``deploy_best_model`` with ``airflow dags test`` (the review window skipped: under
``dags test`` a review would never time out), then calls the deployed endpoint for five
simulated customers and, because the simulator knows the true response model, says how much
of the optimal policy's value the deployed model's decisions reach.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stack.airflow_cli import AirflowCommandError, dags_test, find_dag_run, task_errors, task_states

DAG_ID = "deploy_best_model"
DEPLOY_TIMEOUT_S = 20 * 60
CUSTOMERS_SHOWN = 5
POLICY_CHECK_CUSTOMERS = 3000
SIMULATION_SEED = 2026
_GATE_LINE = re.compile(r"gate for (\S+): (.+?)(?:\s+\[factory_tasks|\s*$)")


@dataclass(frozen=True)
class DeployReport:
    ok: bool
    log: Path


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _gate_reason(log: Path, offset: int) -> str | None:
    with open(log, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        found = [m.group(2) for line in fh if (m := _GATE_LINE.search(line))]
    return found[-1] if found else None


def deploy_and_ask(stack, factory_run_id: str, started: float) -> DeployReport:
    """Steps 6 and 7 of ``make run``; prints what happened."""
    log = stack.paths.logs / f"{DAG_ID}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    offset = log.stat().st_size if log.exists() else 0
    _say(f"[6/8] running DAG {DAG_ID} for {factory_run_id} (review window skipped); log: {log}")
    when = datetime.now(timezone.utc)
    conf = {"factory_run_id": factory_run_id, "skip_review": True, "review_window_minutes": 0}
    rc = dags_test(DAG_ID, conf, stack.env, log, logical_date=when, timeout_s=DEPLOY_TIMEOUT_S)
    try:
        run = find_dag_run(DAG_ID, when, stack.env)
        states = {t.task_id: t.state for t in task_states(DAG_ID, run.run_id, stack.env)} if run else {}
    except AirflowCommandError:
        run, states = None, {}
    if run is None or run.state != "success":
        _say(f"[7/8] {DAG_ID} failed (exit code {rc}) after {time.time() - started:.0f}s:")
        errors = task_errors(log, offset)
        failed = [t for t, state in states.items() if state == "failed"] or list(errors)
        for task in failed[:2]:
            message = next((m for key, m in errors.items() if key.partition("[")[0] == task), "see the log")
            _say(f"  task {task} failed: {message}")
        _say(f"  The model now serving (if any) keeps serving. DAG run log: {log}")
        return DeployReport(False, log)
    gate = _gate_reason(log, offset) or "(the gate's reason is in the DAG run log)"
    if states.get("record_deployment") == "success":
        _say(f"[7/8] deployed after {time.time() - started:.0f}s — gate: {gate}")
    else:
        _say(f"[7/8] the champion keeps serving after {time.time() - started:.0f}s — gate: {gate}")
    _ask_the_endpoint(stack)
    return DeployReport(True, log)


def _ask_the_endpoint(stack) -> None:
    from factory_tasks.core.names import MODEL_NAME
    from factory_tasks.core.schema import OFFERS
    from factory_tasks.loop.policy_check import customer_requests, policy_share
    from factory_tasks.loop.simulator import simulate_customers
    from factory_tasks.warehouse.deployments import serving

    record = serving(stack.warehouse_hook())
    if record is None:
        _say("No model is deployed.")
        return
    _say(f"Serving model {record.model_version} (experiment {record.experiment_id} of {record.factory_run_id}, "
         f"chosen {record.chosen_by}{' by ' + record.chosen_by_user if record.chosen_by_user else ''}); "
         f"deployment {record.deployment_id}, recorded in model_deployments")
    cml = stack.cml_hook()
    model = cml.find_model(MODEL_NAME)

    def ask(customers: list[dict]) -> list[dict]:
        answer = cml.call_model(model, {"customers": customers}, model_service_url=stack.workspace.model_service_url,
                                api_key=stack.workspace.api_key)
        if "error" in answer.prediction:
            raise RuntimeError(f"the endpoint refused the request: {answer.prediction['error']}")
        return answer.prediction["predictions"]

    customers = simulate_customers(POLICY_CHECK_CUSTOMERS, seed=SIMULATION_SEED)
    requests = customer_requests(customers)
    shown = ask(requests[:CUSTOMERS_SHOWN])
    _say(f"\nNext best offers for {CUSTOMERS_SHOWN} simulated customers (P(conversion) per offer):")
    _say(f"  {'customer':9} {'channel':12} {'zip':9} {'history':>8}  "
         + "  ".join(f"{o:>15}" for o in OFFERS) + f"  {'next best offer':16} {'EV':>6}")
    for request, answer in zip(requests, shown):
        probs = "  ".join(f"{answer['offers'][o]['conversion_probability']:>15.3f}" for o in OFFERS)
        _say(f"  {request['customer_id']:9} {request['channel']:12} {request['zip_code']:9} {request['history']:>8.2f}"
             f"  {probs}  {answer['next_best_offer']:16} {answer['expected_value']:>6.2f}")
    chosen = [p["next_best_offer"] for start in range(0, len(requests), 1000)
              for p in ask(requests[start:start + 1000])]
    economics = json.loads(cml.download_file(record.metadata_path))["economics"]
    share = policy_share(customers, chosen, economics)
    _say(f"\nOn {len(customers)} fresh simulated customers (the simulator knows the truth): the deployed model's "
         f"offers are worth {share['value']:.2f} per customer, {share['share_of_optimum']:.1%} of the optimal "
         f"policy's {share['optimum']:.2f}; the best single offer for everyone ({share['best_blast_offer']}) "
         f"is worth {share['best_blast']:.2f} — the model captures {share['share_of_gain']:.0%} of the possible gain.")
