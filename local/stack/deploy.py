"""`make run`'s second half: follow the deployment of the factory run's best experiment, then
ask the model for offers.

``model_factory``'s ``record_outcomes`` emits the ``experiment_outcomes`` asset event, and the
scheduler starts ``deploy_best_model`` on it. The deploy run followed here is the one Airflow
records as created from *that* event (the event's ``created_dagruns``), so an earlier or later
deploy run is never taken for it. It waits out the review window the factory run asked for: the
review is asked in Airflow and, unanswered, times out to its default. Then the deployed
endpoint is called for five simulated customers and, because the simulator knows the true
response model, the share of the optimal policy's value its decisions reach is printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from stack.airflow_api import AirflowApi, AirflowApiError
from stack.running import RunningStack

DAG_ID = "deploy_best_model"
FACTORY_DAG_ID = "model_factory"
#: the asset model_factory's record_outcomes emits (dags/assets.py)
OUTCOMES_ASSET = "experiment_outcomes"
#: the scheduler creates the asset-triggered run within a few of its loops
RUN_CREATED_TIMEOUT_S = 120
#: after the review window: choice, retrain, gate and deployment
DEPLOY_TIMEOUT_S = 20 * 60
DEFAULT_REVIEW_WINDOW_MINUTES = 120.0
TICK_S = 3.0
#: the review's task instance while it waits for an answer (HITL parks in awaiting_input)
WAITING_FOR_REVIEW = ("awaiting_input", "deferred")
CUSTOMERS_SHOWN = 5
POLICY_CHECK_CUSTOMERS = 3000
SIMULATION_SEED = 2026


@dataclass(frozen=True)
class DeployReport:
    ok: bool
    run_id: str | None
    #: the gate's decision (task ``gate``'s XCom: ``deploy``, ``reason``, the held-out metrics)
    gate: dict | None = None
    deployed: bool = False
    #: the factory run the deploy run deployed from (a newer one when events were consumed together)
    factory_run_id: str | None = None
    #: task ``choose_experiment``'s choice
    choice: dict | None = None
    #: the review's answer (None: no review was asked)
    review: dict | None = None
    error: str | None = None


class DeployRunMissing(RuntimeError):
    """No deploy_best_model run was created from the factory run's asset event."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


@dataclass(frozen=True)
class DeployTrigger:
    run_id: str
    #: the event's ``review_window_minutes`` (None: the deploy DAG's default)
    review_window_minutes: float | None


def find_deploy_run(api: AirflowApi, factory_run_id: str, *, timeout_s: float = RUN_CREATED_TIMEOUT_S) -> DeployTrigger:
    """The deploy_best_model run Airflow created from the factory run's newest
    ``experiment_outcomes`` event, and the review window the event asks for; waits for the
    scheduler to create the run."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = [e for e in api.get("/api/v2/assets/events", source_dag_id=FACTORY_DAG_ID,
                                     source_run_id=factory_run_id, order_by="-timestamp", limit=20)["asset_events"]
                  if e.get("name") == OUTCOMES_ASSET]
        if events:
            created = [r for r in events[0]["created_dagruns"] if r["dag_id"] == DAG_ID]
            if created:
                minutes = (events[0].get("extra") or {}).get("review_window_minutes")
                return DeployTrigger(created[0]["run_id"], float(minutes) if minutes is not None else None)
        if time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if not events:
        raise DeployRunMissing(f"{FACTORY_DAG_ID} run {factory_run_id} emitted no {OUTCOMES_ASSET} event "
                               "(its record_outcomes did not succeed), so nothing triggers a deployment")
    dag = api.dag(DAG_ID)
    why = " (the DAG is paused: unpause it in the Airflow UI)" if dag and dag.get("is_paused") else ""
    raise DeployRunMissing(f"no {DAG_ID} run was created from the {OUTCOMES_ASSET} event of {factory_run_id} "
                           f"within {timeout_s:.0f}s{why}")


class _Watch:
    """Prints what a deploy run did as it happens (each step once), from its task instances and XComs."""

    def __init__(self, stack: RunningStack, run_id: str, indent: str):
        self.stack, self.api, self.run_id, self.indent = stack, stack.api, run_id, indent
        self.done: set[str] = set()
        self.resolved: dict | None = None
        self.review: dict | None = None
        self.choice: dict | None = None
        self.gate: dict | None = None

    def say(self, msg: str) -> None:
        _say(f"{self.indent}{_clock()} {msg}")

    def xcom(self, task_id: str, map_index: int = -1) -> Any:
        return self.api.xcom(DAG_ID, self.run_id, task_id, map_index=map_index)

    def __call__(self, _run: dict) -> None:
        self.stack.check_alive()
        states = {(t["task_id"], t["map_index"]): t["state"] for t in self.api.task_instances(DAG_ID, self.run_id)}
        if states.get(("resolve_run", -1)) == "success" and "resolved" not in self.done:
            self.done.add("resolved")
            self.resolved = self.xcom("resolve_run") or {}
            minutes = self.resolved.get("minutes") or 0
            window = ("no review window (a manual pick)" if self.resolved.get("manual_experiment_id")
                      else f"review window {minutes:g} min, closes {self.resolved['closes_at'][11:19]} UTC")
            self.say(f"{DAG_ID} run {self.run_id} for factory run {self.resolved.get('factory_run_id')}: {window}")
        if states.get(("review", 0)) in WAITING_FOR_REVIEW and "asked" not in self.done:
            self.done.add("asked")
            detail = self._review_detail()
            default = ", ".join(detail.get("defaults") or []) or "none"
            self.say(f"review asked in Airflow (Required actions: {detail.get('subject', 'review')!r}, "
                     f"{len(detail.get('options') or [])} options); unanswered it takes its default: {default}")
        if states.get(("review", 0)) == "success" and "answered" not in self.done:
            self.done.add("answered")
            self.review = self.xcom("review", 0) or {}
            chosen = ", ".join(self.review.get("chosen_options") or [])
            if self.review.get("responded_by_user"):
                user = self.review["responded_by_user"]
                self.say(f"review answered by {user.get('name', user) if isinstance(user, dict) else user}: {chosen}")
            else:
                asked = "" if "asked" in self.done else "asked in Airflow, "
                self.say(f"review {asked}timed out with the window: its default stands ({chosen})")
        if states.get(("choose_experiment", -1)) == "success" and "chosen" not in self.done:
            self.done.add("chosen")
            self.choice = self.xcom("choose_experiment") or {}
            self.say(f"chosen: experiment {self.choice.get('experiment_id')} (by {self.choice.get('chosen_by')}: "
                     f"{self.choice.get('reason')}); retraining it on the full snapshot")
        if states.get(("gate", -1)) == "success" and "gate" not in self.done:
            self.done.add("gate")
            self.gate = self.xcom("gate") or {}
            verdict = "deploy" if self.gate.get("deploy") else "keep the champion"
            self.say(f"gate: {verdict} — {self.gate.get('reason')}")
        if states.get(("override_review", 0)) in WAITING_FOR_REVIEW and "override asked" not in self.done:
            self.done.add("override asked")
            self.say("override review asked in Airflow (Required actions: 'The gate keeps the champion: deploy the "
                     "challenger anyway?'); unanswered it keeps the champion")
        if states.get(("final_decision", -1)) == "success" and "final" not in self.done:
            self.done.add("final")
            final = self.xcom("final_decision") or {}
            if final.get("override") and not (self.gate or {}).get("override"):
                self.say(f"override review answered: {final.get('reason')}")
            elif "override asked" in self.done:
                self.say("override review timed out: the champion stays")
            self.gate = final or self.gate

    def _review_detail(self) -> dict:
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(self.run_id, safe='')}/taskInstances/review/0/hitlDetails"
        try:
            return self.api.get(path)
        except AirflowApiError:
            return {}


def watch_deploy_run(stack: RunningStack, run_id: str, *, review_minutes: float | None,
                     indent: str = "  ") -> DeployReport:
    """Wait for the deploy run, printing its review, choice and gate as they happen; what it did."""
    api = stack.api
    watch = _Watch(stack, run_id, indent)
    window = DEFAULT_REVIEW_WINDOW_MINUTES if review_minutes is None else review_minutes
    try:
        run = api.wait_for_run(DAG_ID, run_id, timeout_s=window * 60 + DEPLOY_TIMEOUT_S, tick_s=TICK_S,
                               on_tick=watch)
    except KeyboardInterrupt:  # the run follows this command's factory run: stopped with it
        api.fail_unfinished(DAG_ID, run_id)
        raise
    watch(run)  # what ended between the last tick and the end
    factory_run_id = (watch.resolved or {}).get("factory_run_id")
    if run["state"] != "success":
        error = failed_task(api, DAG_ID, run_id)
        return DeployReport(False, run_id, watch.gate, False, factory_run_id, watch.choice, watch.review, error)
    states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    deployed = states.get("record_deployment") == "success"
    return DeployReport(True, run_id, watch.gate, deployed, factory_run_id, watch.choice, watch.review)


def failed_task(api: AirflowApi, dag_id: str, run_id: str) -> str:
    """``task <id>: <its exception>`` of the run's first failed task (by end time)."""
    failed = sorted((t for t in api.task_instances(dag_id, run_id) if t["state"] == "failed"),
                    key=lambda t: t.get("end_date") or "")
    if not failed:
        return "no task failed (the run was stopped)"
    first = failed[0]
    name = first["task_id"] + (f"[{first['map_index']}]" if first["map_index"] >= 0 else "")
    error = api.task_error(dag_id, run_id, first["task_id"], map_index=first["map_index"],
                           try_number=first.get("try_number") or 1) or _marked_failed(api, dag_id, run_id, first)
    return f"task {name}: {error or 'its error is in the task log (Airflow UI)'}"


def _marked_failed(api: AirflowApi, dag_id: str, run_id: str, ti: dict) -> str | None:
    """Why the scheduler failed a task instance whose own log shows no error (its audit log's
    "state mismatch": the executor's report of the task's process disagreed with its state)."""
    found = api.get("/api/v2/eventLogs", dag_id=dag_id, run_id=run_id, task_id=ti["task_id"],
                    map_index=ti["map_index"], event="state mismatch", limit=1).get("event_logs") or []
    return f"marked failed by the scheduler: {found[0].get('extra')}" if found else None


def follow_deployment(stack: RunningStack, factory_run_id: str, started: float) -> DeployReport:
    """Steps 6 and 7 of ``make run``: the deploy run of this factory run, to its end; prints
    what happened and, when a model serves, asks it for offers."""
    api = stack.api
    _say(f"[6/8] waiting for the {DAG_ID} run that {factory_run_id}'s {OUTCOMES_ASSET} event triggers")
    try:
        trigger = find_deploy_run(api, factory_run_id)
        report = watch_deploy_run(stack, trigger.run_id, review_minutes=trigger.review_window_minutes)
    except (DeployRunMissing, TimeoutError, AirflowApiError) as exc:
        _say(f"[7/8] no deployment after {time.time() - started:.0f}s: {exc}")
        _say("  The model now serving (if any) keeps serving.")
        return DeployReport(False, None, error=str(exc))
    if report.factory_run_id and report.factory_run_id != factory_run_id:
        _say(f"  (the run deployed from the newer factory run {report.factory_run_id}, whose event it consumed too)")
    if not report.ok:
        _say(f"[7/8] {DAG_ID} run {report.run_id} failed after {time.time() - started:.0f}s: {report.error}")
        _say("  The model now serving (if any) keeps serving.")
        return report
    outcome = "deployed" if report.deployed else "the champion keeps serving"
    _say(f"[7/8] {outcome} after {time.time() - started:.0f}s — gate: {(report.gate or {}).get('reason')}")
    _ask_the_endpoint(stack)
    return report


def _ask_the_endpoint(stack: RunningStack) -> None:
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
        answer = cml.call_model(model, {"customers": customers}, model_service_url=stack.model_service_url,
                                api_key=stack.api_key)
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
         f"is worth {share['best_blast']:.2f} — the model captures {share['share_of_gain']:.0%} of the possible "
         "gain.")
