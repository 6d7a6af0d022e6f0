"""Operator that submits a CML job run, idempotently across task retries."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException
from cml_provider.durations import seconds
from cml_provider.hooks.cml import CmlHook
from cml_provider.models import CmlJobRun
from cml_provider.operators.run_owner import CmlRunOwnerMixin
from cml_provider.triggers.cml import CmlCapacityTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["DAG_RUN_KEY_ENV", "TI_KEY_ENV", "CmlJobRunOperator", "dag_run_key", "ti_key"]

#: Environment marker naming the Airflow task instance that submitted a run.
TI_KEY_ENV = "MF_AIRFLOW_TI_KEY"
#: Environment marker naming the Airflow DAG run that submitted a run.
DAG_RUN_KEY_ENV = "MF_AIRFLOW_DAG_RUN_KEY"


def dag_run_key(context: Mapping[str, Any]) -> str:
    """``<dag_id>/<run_id>`` of the task instance in ``context``."""
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}"


def ti_key(context: Mapping[str, Any]) -> str:
    """``<dag_id>/<run_id>/<task_id>/<map_index>``: the same for every try of one task instance."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", None)
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{-1 if map_index is None else map_index}"


def _first_try(context: Mapping[str, Any]) -> bool:
    """Whether this is the task instance's first attempt: no earlier try can have started a run."""
    return getattr(context["ti"], "try_number", None) == 1


class CmlJobRunOperator(CmlRunOwnerMixin, BaseOperator):
    """Start a run of a CML job, creating the job if needed.

    With ``job_id`` (and ``project_id``), that job is run and nothing is looked up: the way to
    go when many tasks run the same job, which the caller creates once. Otherwise the job is
    found by exact name, or created with ``script``, ``cpu``, ``memory_gb``, ``timeout_s`` and
    ``runtime_identifier`` (CPU and memory are per *job* in CML: put the resource profile in
    ``job_name``, one job per profile). The run gets ``environment`` plus two
    markers, ``MF_AIRFLOW_TI_KEY=<dag_id>/<run_id>/<task_id>/<map_index>`` and
    ``MF_AIRFLOW_DAG_RUN_KEY=<dag_id>/<run_id>``.

    **Retries are idempotent**: before starting a run, the job's recent runs are searched for
    the TI key; a run that is still active or has succeeded is reused instead of starting a
    second one (a failed, timed-out or stopped one is not). The key has no try number, so
    clearing a task whose run succeeded reuses that run too; set ``reuse_succeeded_run=False``
    to start a new run then (a still-active run is always reused). A first try does not
    search: Airflow gives every new attempt, a retry or a cleared task, a new try number, and a
    first try that defers for capacity submits only once it resumes.

    **Per-DAG-run cap**: with ``max_active_runs_per_dag_run=N``, when N runs carrying this DAG
    run's marker are already active (in the jobs ``capacity_job_ids``, or else the project's
    jobs whose names contain ``capacity_job_name_filter``, or all its jobs), the task defers to
    :class:`~cml_provider.triggers.cml.CmlCapacityTrigger` and submits when a slot frees (the
    deferred tasks of one DAG run share one count per poll interval in a triggerer and take
    its free slots one at a time). The cap is soft: across triggerers, and between a count and
    a resumed task's submission, it can be overshot. Use an Airflow pool for a hard limit.

    Returns (XCom) ``{"project_id", "job_id", "run_id"}``. With ``wait_for_completion=True`` it
    then defers to :class:`~cml_provider.triggers.cml.CmlJobRunTrigger` and fails unless the run
    succeeds; otherwise pair it with :class:`~cml_provider.sensors.cml.CmlJobRunSensor`.

    :param job_name: CML job name (templated)
    :param job_id: the CML job to run, created beforehand (then ``job_name`` only names it in logs)
    :param project_id: CML project id (default: the connection's project, looked up)
    :param script: script path relative to the project root (templated)
    :param cpu: vCPUs of the job
    :param memory_gb: memory of the job, GB
    :param timeout_s: job timeout in seconds (the workspace kills the run then)
    :param runtime_identifier: ML Runtime image (required in ML Runtimes projects; templated)
    :param environment: per-run environment variables (templated); non-string values are
        JSON-encoded
    :param arguments: per-run arguments string, or a list joined with shell quoting (templated)
    :param cml_conn_id: Airflow connection of the workspace
    :param max_active_runs_per_dag_run: cap on concurrently active runs of one DAG run
    :param capacity_job_ids: the jobs whose runs count for the cap
    :param capacity_job_name_filter: substring of the job names counted for the cap (without
        ``capacity_job_ids``; the jobs are then listed on every count)
    :param capacity_poll_interval: seconds between capacity checks while deferred
    :param capacity_timeout: how long to wait for a free slot before failing
    :param wait_for_completion: defer until the run ends and fail unless it succeeded
    :param poll_interval: seconds between status checks while waiting for completion
    :param wait_timeout: how long to wait for completion before failing
    :param recent_run_pages: pages of recent runs searched for a run of this task instance
    :param reuse_succeeded_run: reuse a succeeded run of this task instance (see above)
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    template_fields: Sequence[str] = ("job_name", "script", "runtime_identifier", "environment", "arguments")
    template_fields_renderers = {"environment": "json"}
    ui_color = "#f0f4ff"

    def __init__(
        self,
        *,
        job_name: str,
        script: str,
        job_id: str | None = None,
        project_id: str | None = None,
        cpu: float = 1.0,
        memory_gb: float = 2.0,
        timeout_s: int | None = None,
        runtime_identifier: str | None = None,
        environment: Mapping[str, Any] | None = None,
        arguments: str | Sequence[str] | None = None,
        cml_conn_id: str = CmlHook.default_conn_name,
        max_active_runs_per_dag_run: int | None = None,
        capacity_job_ids: Sequence[str] | None = None,
        capacity_job_name_filter: str | None = None,
        capacity_poll_interval: float = 15.0,
        capacity_timeout: float | timedelta = timedelta(hours=24),
        wait_for_completion: bool = False,
        poll_interval: float = 30.0,
        wait_timeout: float | timedelta = timedelta(hours=24),
        recent_run_pages: int = 5,
        reuse_succeeded_run: bool = True,
        retry_limit: int = 3,
        retry_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_name = job_name
        self.script = script
        self.cpu = cpu
        self.memory_gb = memory_gb
        self.timeout_s = timeout_s
        self.runtime_identifier = runtime_identifier
        self.environment = environment
        self.arguments = arguments
        self.cml_conn_id = cml_conn_id
        self.max_active_runs_per_dag_run = max_active_runs_per_dag_run
        self.capacity_job_ids = list(capacity_job_ids) if capacity_job_ids is not None else None
        self.capacity_job_name_filter = capacity_job_name_filter
        self.capacity_poll_interval = capacity_poll_interval
        self.capacity_timeout = capacity_timeout
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.recent_run_pages = recent_run_pages
        self.reuse_succeeded_run = reuse_succeeded_run
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.project_id, self.job_id, self.run_id = project_id, job_id, None

    # -- execution ------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, str]:
        if self.max_active_runs_per_dag_run is not None and self.max_active_runs_per_dag_run < 1:
            raise ValueError("max_active_runs_per_dag_run must be at least 1 (or None for no cap)")
        self._ensure_job()
        if _first_try(context) and not self.max_active_runs_per_dag_run:
            return self._submit(context, recent_runs=[])
        # One listing of the job's recent runs answers the three questions asked before a
        # submission (a run of an earlier try to reuse? how many runs of this DAG run are
        # active? and the same idempotency check again right before creating): at 100 runs a
        # page and 5 pages, each listing is 5 API calls once the job has 400+ runs.
        recent = self.hook.list_job_runs(self.job_id, max_pages=self.recent_run_pages, project_id=self.project_id)
        ti_env = {TI_KEY_ENV: ti_key(context)}
        existing = next((r for r in recent if r.matches(ti_env)), None)
        reusable = existing is not None and (
            existing.status.is_active or (self.reuse_succeeded_run and existing.status.is_successful)
        )
        if not reusable and self.max_active_runs_per_dag_run:
            self._wait_for_capacity_if_needed(context, recent_runs={self.job_id: recent})
        return self._submit(context, recent_runs=recent)

    def execute_after_capacity(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, str]:
        """Resume after :class:`CmlCapacityTrigger`: submit the run."""
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "no event")
            raise AirflowException(
                f"Gave up waiting for a free CML run slot for {dag_run_key(context)}: {message}"
            )
        self.log.info("%s", event.get("message"))
        self._ensure_job()
        return self._submit(context, recent_runs=[] if _first_try(context) else None)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, str]:
        """Resume after :class:`CmlJobRunTrigger`: succeed with the run ids or raise."""
        if not event or "status" not in event:
            raise AirflowException(f"Invalid event from CmlJobRunTrigger: {event!r}")
        self.project_id, self.job_id, self.run_id = event["project_id"], event["job_id"], event["run_id"]
        ref = {"project_id": event["project_id"], "job_id": event["job_id"], "run_id": event["run_id"]}
        if event["status"] != "success":
            raise AirflowException(
                f"CML job run {event['run_id']} of job {self.job_name!r} "
                f"({event.get('run_status') or 'status unknown'}): {event.get('message')}"
            )
        self.log.info("%s", event.get("message"))
        return ref

    # -- steps ----------------------------------------------------------------------------
    def _ensure_job(self) -> None:
        if self.project_id is None:
            self.project_id = self.hook.get_project_id()
        if self.job_id is not None:
            return
        job = self.hook.get_or_create_job(
            self.job_name,
            self.script,
            self.cpu,
            self.memory_gb,
            timeout_s=self.timeout_s,
            runtime_identifier=self.runtime_identifier,
            project_id=self.project_id,
        )
        self.job_id = job.id

    def _wait_for_capacity_if_needed(
        self, context: Context, recent_runs: Mapping[str, Sequence[CmlJobRun]] | None = None
    ) -> None:
        assert self.max_active_runs_per_dag_run is not None
        if self.capacity_job_ids is not None:
            job_ids = self.capacity_job_ids
        else:
            search = {"name": self.capacity_job_name_filter} if self.capacity_job_name_filter else None
            job_ids = [j.id for j in self.hook.list_jobs(search, project_id=self.project_id)]
        key = dag_run_key(context)
        active = self.hook.count_active_runs(
            job_ids,
            {DAG_RUN_KEY_ENV: key},
            max_pages=self.recent_run_pages,
            project_id=self.project_id,
            recent_runs=recent_runs,
        )
        if active < self.max_active_runs_per_dag_run:
            return
        timeout = seconds(self.capacity_timeout)
        self.log.info(
            "%d CML runs already active for %s (cap %d): deferring until one finishes",
            active,
            key,
            self.max_active_runs_per_dag_run,
        )
        self.defer(
            trigger=CmlCapacityTrigger(
                cml_conn_id=self.cml_conn_id,
                project_id=self.project_id,
                job_ids=self.capacity_job_ids,
                marker_key=DAG_RUN_KEY_ENV,
                marker_value=key,
                max_active=self.max_active_runs_per_dag_run,
                poll_interval=self.capacity_poll_interval,
                deadline=time.time() + timeout,
                job_name_filter=self.capacity_job_name_filter,
                max_pages=self.recent_run_pages,
                retry_limit=self.retry_limit,
                retry_delay=self.retry_delay,
            ),
            method_name="execute_after_capacity",
            timeout=timedelta(seconds=timeout + 300),
        )

    def _arguments(self) -> str | None:
        if self.arguments is None or isinstance(self.arguments, str):
            return self.arguments or None
        return shlex.join(str(a) for a in self.arguments)

    def _submit(self, context: Context, recent_runs: Sequence[CmlJobRun] | None = None) -> dict[str, str]:
        assert self.job_id is not None
        environment = {**(self.environment or {}), DAG_RUN_KEY_ENV: dag_run_key(context)}
        run, reused = self.hook.ensure_job_run(
            self.job_id,
            idempotency_env={TI_KEY_ENV: ti_key(context)},
            environment=environment,
            arguments=self._arguments(),
            max_pages=self.recent_run_pages,
            reuse_succeeded=self.reuse_succeeded_run,
            project_id=self.project_id,
            recent_runs=recent_runs,
        )
        self.run_id = run.id
        if reused:
            self.log.info("Reusing CML job run %s (%s) started by an earlier try", run.id, run.status)
        else:
            self.log.info("Started CML job run %s of job %r (%s)", run.id, self.job_name, run.job_id)
        ref = run.to_ref()
        if self.wait_for_completion:
            self._wait_for_run(run)
        return ref

    def _wait_for_run(self, run: CmlJobRun) -> None:
        if run.status.is_terminal:
            if not run.status.is_successful:
                raise AirflowException(
                    f"CML job run {run.id} of job {self.job_name!r} ended with {run.status}"
                )
            return
        timeout = seconds(self.wait_timeout)
        self.defer(
            trigger=self._run_trigger(run.project_id, run.job_id, run.id, timeout),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout + 300),
        )
