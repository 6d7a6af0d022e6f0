"""Fixture DAG for ``tests/plugins/test_airflow_e2e.py``: the CML provider inside real Airflow.

Three mapped submits under a per-DAG-run cap of two (the third defers to the capacity
trigger), then mapped deferrable sensors; the third job fails and leaves its error in a
result file, which the sensor's failure message must carry.
"""

import pendulum
from airflow.sdk import dag
from cml_provider.operators.cml import CmlJobRunOperator
from cml_provider.sensors.cml import CmlJobRunSensor


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test", "cml"],
    default_args={"retries": 0},
)
def cml_provider_e2e():
    submit = CmlJobRunOperator.partial(
        task_id="submit",
        job_name="e2e-0.5cpu",
        script="job.py",
        cpu=0.5,
        memory_gb=0.5,
        max_active_runs_per_dag_run=2,
        capacity_poll_interval=0.5,
        retry_delay=0.1,
    ).expand(
        environment=[
            # Every job outlives the three submits, whatever order Airflow runs the mapped
            # instances in, so the third always finds two active runs and defers.
            {"MF_TEST_SLEEP": "6"},
            {"MF_TEST_SLEEP": "4"},
            {"MF_TEST_SLEEP": "4", "MF_TEST_FAIL_WITH": "boom from the job",
             "MF_TEST_RESULT_FILE": "e2e/{{ ti.map_index }}.json"},
        ]
    )
    CmlJobRunSensor.partial(
        task_id="wait", poll_interval=0.5, result_file="e2e/{{ ti.map_index }}.json", retry_delay=0.1
    ).expand(run=submit.output)


cml_provider_e2e()
