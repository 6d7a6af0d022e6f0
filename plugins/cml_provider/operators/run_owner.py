"""What the submit operator and the sensor share: the CML run a task owns, the hook that
reaches it, what its result file says when it failed, and stopping it when Airflow kills the task."""

from __future__ import annotations

import time
from functools import cached_property

from cml_provider.hooks.cml import CmlHook
from cml_provider.triggers.cml import CmlJobRunTrigger, result_file_error


class CmlRunOwnerMixin:
    """Mixed into a ``BaseOperator``; the class sets ``cml_conn_id``, ``retry_limit``, ``retry_delay``."""

    cml_conn_id: str
    retry_limit: int
    retry_delay: float
    poll_interval: float
    project_id: str | None = None
    job_id: str | None = None
    run_id: str | None = None
    result_file: str | None = None

    @cached_property
    def hook(self) -> CmlHook:
        return CmlHook(self.cml_conn_id, retry_limit=self.retry_limit, retry_delay=self.retry_delay)

    def _run_trigger(self, project_id: str, job_id: str, run_id: str, timeout_s: float, *,
                     end_task_on_success: bool = False) -> CmlJobRunTrigger:
        """The trigger that waits for this run, with a deadline ``timeout_s`` from now."""
        return CmlJobRunTrigger(
            cml_conn_id=self.cml_conn_id,
            project_id=project_id,
            job_id=job_id,
            run_id=run_id,
            poll_interval=self.poll_interval,
            deadline=time.time() + timeout_s,
            retry_limit=self.retry_limit,
            retry_delay=self.retry_delay,
            end_task_on_success=end_task_on_success,
        )

    def _result_file_error(self) -> str:
        """What the job's ``result_file`` says about the failure, never raising."""
        assert self.result_file
        try:
            data = self.hook.download_file_if_exists(self.result_file, project_id=self.project_id)
        except Exception as exc:
            return result_file_error(self.result_file, None, exc)
        return result_file_error(self.result_file, data)

    def on_kill(self) -> None:
        if self.run_id and self.job_id:
            try:
                self.hook.stop_job_run(self.job_id, self.run_id, project_id=self.project_id)
                self.log.info("Asked CML to stop job run %s", self.run_id)
            except Exception:  # on_kill must not raise: the task is being torn down anyway
                self.log.exception("Could not stop CML job run %s", self.run_id)
