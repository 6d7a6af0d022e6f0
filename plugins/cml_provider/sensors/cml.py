"""Sensor that waits for a CML job run to finish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from cml_provider.hooks.cml import CmlHook
from cml_provider.models import CmlJobRun
from cml_provider.operators.run_owner import CmlRunOwnerMixin
from cml_provider.triggers.cml import parse_run_ref

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["CmlJobRunSensor"]


class CmlJobRunSensor(CmlRunOwnerMixin, BaseSensorOperator):
    """Wait for the CML job run described by ``run`` and fail unless it succeeds.

    ``run`` is the dict :class:`~cml_provider.operators.cml.CmlJobRunOperator` returns,
    ``{"project_id", "job_id", "run_id"}`` (templated, so it can be an ``XComArg`` or mapped with
    ``.expand(run=...)``). A ``run`` of ``None`` or with ``run_id`` None means there is nothing to
    wait for: the sensor succeeds at once. Without ``project_id`` the connection's project is used.

    Deferrable by default: it checks once, then hands the wait to
    :class:`~cml_provider.triggers.cml.CmlJobRunTrigger` with a deadline ``timeout`` seconds
    away. With ``deferrable=False`` it pokes ``get_job_run`` every ``poll_interval`` seconds.

    API v2 has no run-log endpoint, so jobs leave their outcome in a project file. With
    ``result_file`` (templated), a failure message carries that file's JSON ``"error"`` field.

    Returns (XCom) ``{"project_id", "job_id", "run_id", "status"}``.

    :param run: ``{"project_id", "job_id", "run_id"}`` or None
    :param cml_conn_id: Airflow connection of the workspace
    :param deferrable: wait in the triggerer instead of a worker slot
    :param poll_interval: seconds between status checks (also the poke interval)
    :param result_file: project file whose ``"error"`` explains a failure
    :param retry_limit: hook attempts per API call
    :param retry_delay: hook backoff base, seconds
    """

    template_fields: Sequence[str] = ("run", "result_file")
    ui_color = "#e8f4ff"

    def __init__(
        self,
        *,
        run: Mapping[str, Any] | None,
        cml_conn_id: str = CmlHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float = 30.0,
        result_file: str | None = None,
        retry_limit: int = 3,
        retry_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.run = run
        self.cml_conn_id = cml_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.result_file = result_file
        self.retry_limit = retry_limit
        self.retry_delay = retry_delay
        self.project_id = self.job_id = self.run_id = None

    # -- helpers --------------------------------------------------------------------------
    def _read_run_ref(self) -> bool:
        """Load ids from ``run``; False when there is nothing to wait for."""
        try:
            run = parse_run_ref(self.run)
        except ValueError as exc:
            raise AirflowException(str(exc)) from exc
        if run is None:
            return False
        self.project_id = run["project_id"] or self.hook.get_project_id()
        self.job_id, self.run_id = run["job_id"], run["run_id"]
        return True

    def _ref(self, status: str | None) -> dict[str, Any]:
        return {"project_id": self.project_id, "job_id": self.job_id, "run_id": self.run_id, "status": status}

    def _failure_message(self, status: str | None, message: str | None = None) -> str:
        text = f"CML job run {self.run_id} (job {self.job_id}) ended with {status or 'an unknown status'}"
        if message and message not in text:
            text = f"{text}: {message}"
        if self.result_file:
            text = f"{text}. {self._result_file_error()}"
        return text

    def _check(self, run: CmlJobRun) -> bool:
        """True when succeeded, False while running; raises when the run ended otherwise."""
        if not run.status.is_terminal:
            return False
        if not run.status.is_successful:
            raise AirflowException(self._failure_message(run.status.value))
        return True

    # -- execution ------------------------------------------------------------------------
    def poke(self, context: Context) -> bool | PokeReturnValue:
        if not self._read_run_ref():
            self.log.info("No CML run to wait for")
            return PokeReturnValue(True, xcom_value=None)
        run = self.hook.get_job_run(self.job_id, self.run_id, project_id=self.project_id)
        self.log.info("CML job run %s is %s", self.run_id, run.status)
        if self._check(run):
            return PokeReturnValue(True, xcom_value=self._ref(run.status.value))
        return False

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if not self._read_run_ref():
            self.log.info("No CML run to wait for")
            return None
        run = self.hook.get_job_run(self.job_id, self.run_id, project_id=self.project_id)
        if self._check(run):
            return self._ref(run.status.value)
        self.log.info("CML job run %s is %s; deferring", self.run_id, run.status)
        self.defer(
            trigger=self._run_trigger(self.project_id, self.job_id, self.run_id, self.timeout),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 300),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate the trigger's event: return the run ids or raise naming the run and status."""
        if not event or event.get("status") not in ("success", "error", "timeout") or not event.get("run_id"):
            raise AirflowException(f"Invalid event from CmlJobRunTrigger: {event!r}")
        self.project_id = event.get("project_id") or self.project_id
        self.job_id = event.get("job_id") or self.job_id
        self.run_id = event["run_id"]
        status = event.get("run_status")
        if event["status"] == "success":
            self.log.info("%s", event.get("message"))
            return self._ref(status)
        if event["status"] == "timeout":
            raise AirflowException(
                f"Timed out waiting for CML job run {self.run_id} (job {self.job_id}), "
                f"last status {status or 'unknown'}: {event.get('message')}"
            )
        raise AirflowException(self._failure_message(status, event.get("message")))

