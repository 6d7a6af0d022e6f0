"""Fixture DAG for ``tests/plugins/test_airflow_e2e.py``: the CML provider inside real Airflow.

Three mapped runs, each submitted and then waited for in the triggerer
(``wait_for_completion``); the third job fails and leaves its error in a result file, which
its task's failure must carry, while the other two succeed.
"""

import pendulum
from airflow.sdk import dag
from cml_provider.operators.cml import CmlJobRunOperator


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test", "cml"],
    default_args={"retries": 0},
)
def cml_provider_e2e():
    CmlJobRunOperator.partial(
        task_id="run",
        job_name="e2e-0.5cpu",
        script="job.py",
        cpu=0.5,
        memory_gb=0.5,
        wait_for_completion=True,
        poll_interval=0.5,
        retry_delay=0.1,
    ).expand_kwargs(
        [
            {"environment": {"MF_TEST_SLEEP": "1"}},
            {"environment": {"MF_TEST_SLEEP": "1"}},
            {"environment": {"MF_TEST_FAIL_WITH": "boom from the job", "MF_TEST_RESULT_FILE": "e2e/2.json"},
             "result_file": "e2e/2.json"},
        ]
    )


cml_provider_e2e()
