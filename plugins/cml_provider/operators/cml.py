"""Operator that submits a CML job run, idempotently across task retries, and can wait for it."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from cml_provider.durations import seconds
from cml_provider.errors import CmlError
from cml_provider.hooks.cml import CmlHook
from cml_provider.models import environment_to_request
from cml_provider.operators.run_owner import CmlRunOwnerMixin
from cml_provider.states import JobRunStatus, UnknownJobRunStatusError
from cml_provider.triggers.cml import FIRST_POLL_S, run_outcome

if TYPE_CHECKING:
    from airflow.sdk import Context

    from cml_provider.models import CmlJobRun

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
    """Start a run of a CML job, creating the job if needed, and optionally wait for it.

    With ``job_id`` (and ``project_id``), that job is run and nothing is looked up: the way to
    go when many tasks run the same job, which the caller creates once. Otherwise the job is
    found by exact name, or created with ``script``, ``cpu``, ``memory_gb``, ``timeout_s`` and
    ``runtime_identifier`` (CPU and memory are per *job* in CML: put the resource profile in
    ``job_name``, one job per profile). The run gets ``environment`` plus two markers,
    ``MF_AIRFLOW_TI_KEY=<dag_id>/<run_id>/<task_id>/<map_index>`` and
    ``MF_AIRFLOW_DAG_RUN_KEY=<dag_id>/<run_id>``.

    **Retries are idempotent**: a retry (or a cleared task: any try after the first) looks for
    the TI key, with the same ``environment``, among the job's recent runs and reuses a run that
    is still active or has succeeded (a failed, timed-out or stopped one is not reused; a run of
    the same map index for other work, after its DAG run was re-planned, is not either). The key has no try number, so
    clearing a task whose run succeeded reuses that run; set ``reuse_succeeded_run=False`` to
    start a new run then (an active run is always reused). A first try does not search.

    **Waiting** (``wait_for_completion=True``): the task defers to
    :class:`~cml_provider.triggers.cml.CmlJobRunTrigger` until the run ends. A run that
    succeeded ends the task in the triggerer, which writes its XCom: no worker resumes it. A run
    that ended failed, stopped or timed out, or is still going at ``wait_timeout`` (it is then
    stopped), resumes the task to fail it with ``AirflowFailException`` (no retry: that is the
    run's outcome), naming the run, the job, the status and the JSON ``"error"`` of
    ``result_file``. When the trigger could not read the run, the task fails with a retryable
    ``AirflowException``; the retry finds the same run by its TI key and waits for it again.
    With ``wait_before_defer``, the worker follows the run that long first, and a run that ends
    within it ends the task there, the same way, without the triggerer's round trip.

    Returns (XCom) ``{"project_id", "job_id", "run_id"}``, plus ``"status"`` when it waited.
    Without waiting, pair it with :class:`~cml_provider.sensors.cml.CmlJobRunSensor`.

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
    :param result_file: project file whose JSON ``"error"`` explains a failed run (templated)
    :param cml_conn_id: Airflow connection of the workspace
    :param wait_for_completion: defer until the run ends and fail unless it succeeded
    :param poll_interval: seconds between status checks while waiting for completion
    :param wait_timeout: how long to wait for completion before stopping the run and failing
    :param wait_before_defer: seconds the worker follows the run (checks after 0.25 s, then
        doubling up to ``poll_interval``) before deferring. Worth it where runs can end within
        seconds, as on the local workspace: the triggerer's round trip costs about 2 s per task
        on Airflow 3.3. 0 (the default) defers at once, right for CML, whose runs first start
        an engine.
    :param recent_run_pages: pages of recent runs searched for a run of this task instance
    :param reuse_succeeded_run: reuse a succeeded run of this task instance (see above)
    :param reuse_failed_run: reuse a failed or timed-out run of this task instance: a retry then
        reports that run's failure instead of starting the same work again (for work that fails
        the same way every time, e.g. an experiment; a stopped run is never reused)
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    template_fields: Sequence[str] = (
        "job_name", "script", "runtime_identifier", "environment", "arguments", "result_file",
    )
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
        result_file: str | None = None,
        cml_conn_id: str = CmlHook.default_conn_name,
        wait_for_completion: bool = False,
        poll_interval: float = 30.0,
        wait_timeout: float | timedelta = timedelta(hours=24),
        wait_before_defer: float = 0.0,
        recent_run_pages: int = 5,
        reuse_succeeded_run: bool = True,
        reuse_failed_run: bool = False,
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
        self.result_file = result_file
        self.cml_conn_id = cml_conn_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.wait_before_defer = wait_before_defer
        self.recent_run_pages = recent_run_pages
        self.reuse_succeeded_run = reuse_succeeded_run
        self.reuse_failed_run = reuse_failed_run
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.project_id, self.job_id, self.run_id = project_id, job_id, None

    # -- execution ------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, str]:
        self._ensure_job()
        assert self.job_id is not None
        environment = {**(self.environment or {}), DAG_RUN_KEY_ENV: dag_run_key(context)}
        run, reused = self.hook.ensure_job_run(
            self.job_id,
            # the same task instance asking for the same work: a cleared and re-planned DAG run
            # can give this map index another experiment, whose run must not be taken for it
            idempotency_env={**environment_to_request(self.environment), TI_KEY_ENV: ti_key(context)},
            environment=environment,
            arguments=self._arguments(),
            max_pages=self.recent_run_pages,
            reuse_succeeded=self.reuse_succeeded_run,
            reuse_failed=self.reuse_failed_run,
            project_id=self.project_id,
            recent_runs=[] if _first_try(context) else None,
        )
        self.run_id = run.id
        if reused:
            self.log.info("Reusing CML job run %s (%s) started by an earlier try", run.id, run.status)
        else:
            self.log.info("Started CML job run %s of job %r (%s)", run.id, self.job_name, run.job_id)
        if not self.wait_for_completion:
            return run.to_ref()
        run = self._follow_before_deferring(run)
        if run.status.is_terminal:  # it ended already (or a reused run had)
            return self._outcome(run.status, run.status.value)
        timeout = seconds(self.wait_timeout)
        self.defer(
            trigger=self._run_trigger(run.project_id, run.job_id, run.id, timeout, end_task_on_success=True),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout + 300),
        )

    def execute_complete(
        self, context: Context, event: Mapping[str, Any] | str | None = None
    ) -> dict[str, Any] | None:
        """Resume after :class:`CmlJobRunTrigger`: the run's ids and status, or raise (see the class)."""
        if event == "success":
            # the payload of the trigger's TaskSuccessEvent, which reaches a worker only where a
            # runner resumes the task instead of ending it (``airflow dags test``): no XCom then
            self.log.info("CmlJobRunTrigger reported that the CML job run succeeded")
            return None
        if (not isinstance(event, Mapping) or event.get("status") not in ("success", "error", "timeout")
                or not event.get("run_id")):
            raise AirflowException(f"Invalid event from CmlJobRunTrigger: {event!r}")
        self.project_id, self.job_id, self.run_id = event["project_id"], event["job_id"], event["run_id"]
        raw = event.get("run_status")
        try:
            status = JobRunStatus.parse(raw) if raw else None
        except UnknownJobRunStatusError:
            status = None
        if event["status"] == "timeout":
            self._stop_run()
            raise AirflowFailException(
                f"{self._run_name()} still {raw or 'in an unknown status'} after waiting "
                f"{seconds(self.wait_timeout):g}s; asked CML to stop it ({event.get('message')})"
            )
        if status is None or not status.is_terminal:  # the trigger could not read the run
            raise AirflowException(
                f"Could not follow {self._run_name()} (last status {raw or 'unknown'}): "
                f"{event.get('message')}. A retry waits for the same run."
            )
        return self._outcome(status, raw)

    # -- steps ----------------------------------------------------------------------------
    def _follow_before_deferring(self, run: CmlJobRun) -> CmlJobRun:
        """The run after following it here for up to ``wait_before_defer`` seconds."""
        deadline = time.monotonic() + self.wait_before_defer
        wait = min(FIRST_POLL_S, self.poll_interval)
        while not run.status.is_terminal and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(wait, left))
            try:
                run = self.hook.get_job_run(run.job_id, run.id, project_id=run.project_id)
            except CmlError as exc:  # the trigger follows it instead, with its own error handling
                self.log.warning("Could not check CML job run %s before deferring (%s)", run.id, exc)
                break
            wait = min(wait * 2, self.poll_interval)
        return run

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

    def _arguments(self) -> str | None:
        if self.arguments is None or isinstance(self.arguments, str):
            return self.arguments or None
        return shlex.join(str(a) for a in self.arguments)

    def _run_name(self) -> str:
        return f"CML job run {self.run_id} of job {self.job_name!r} ({self.job_id})"

    def _outcome(self, status: JobRunStatus, raw: str) -> dict[str, str]:
        """The XCom of an ended run that succeeded; AirflowFailException for any other end."""
        if not status.is_successful:
            message = f"{self._run_name()} ended with {raw}"
            if self.result_file:
                message = f"{message}. {self._result_file_error()}"
            raise AirflowFailException(message)
        self.log.info("%s succeeded", self._run_name())
        return run_outcome(self.project_id, self.job_id, self.run_id, status)

    def _stop_run(self) -> None:
        try:
            self.hook.stop_job_run(self.job_id, self.run_id, project_id=self.project_id)
        except Exception:  # the task fails anyway; the job's own timeout_s still bounds the run
            self.log.exception("Could not stop CML job run %s", self.run_id)
