"""Names shared by the orchestrator, the experiment job and the tools that watch them.

Stdlib only and import-cheap: DAG files import it at parse time.
"""

#: the script every experiment job runs (relative to the CML project root)
EXPERIMENT_SCRIPT = "jobs/run_experiment.py"
#: every experiment job's name starts with this (one job per resource profile)
EXPERIMENT_JOB_PREFIX = "model-factory-experiment-"
#: environment of an experiment job run, beside the spec (``ExperimentSpec.ENV``)
EXPERIMENT_ID_ENV = "MF_EXPERIMENT_ID"
FACTORY_RUN_ENV = "MF_FACTORY_RUN_ID"
CODE_VERSION_ENV = "MF_CODE_VERSION"
#: the Airflow pool the experiment runs of model_factory wait in (deferred ones counted too):
#: sized from the grid's max_parallel by each factory run, created by the stack
EXPERIMENT_POOL = "model_factory_experiments"


def job_name(resources: dict[str, float]) -> str:
    """One CML job per resource profile, e.g. ``model-factory-experiment-2cpu-4gb``."""
    cpu, mem = float(resources["cpu"]), float(resources["memory_gb"])
    return f"{EXPERIMENT_JOB_PREFIX}{cpu:g}cpu-{mem:g}gb"


#: the deployed model (see docs/deploy.md): its CML name, entry point file and function
MODEL_NAME = "next-best-offer"
MODEL_ENTRY_POINT = "jobs/serve_next_best_offer.py"
MODEL_FUNCTION = "predict"
#: the script of the retrain job run (relative to the CML project root)
RETRAIN_SCRIPT = "jobs/retrain_model.py"
#: environment of a model deployment: the skops file (project-relative path or file:// URL),
#: its folder (metadata, model.onnx) and the model version it serves
MODEL_ARTIFACT_ENV = "MF_MODEL_ARTIFACT"
MODEL_DIR_ENV = "MF_MODEL_DIR"
MODEL_VERSION_ENV = "MF_MODEL_VERSION"
#: the serving policy (docs/deploy.md, "The policy"): a challenger model's files, like the
#: champion's (all three absent = no challenger), and the share of customers it decides for
#: (0 <= share < 1; required with a challenger)
CHALLENGER_ARTIFACT_ENV = "MF_CHALLENGER_ARTIFACT"
CHALLENGER_DIR_ENV = "MF_CHALLENGER_DIR"
CHALLENGER_VERSION_ENV = "MF_CHALLENGER_VERSION"
CHALLENGER_SHARE_ENV = "MF_CHALLENGER_SHARE"
#: the share of customers offered a uniformly random offer (0 <= epsilon < 1; default 0)
EXPLORATION_EPSILON_ENV = "MF_EXPLORATION_EPSILON"
#: the test id salting the sticky champion/challenger hash (default: "<champion>:<challenger>")
POLICY_TEST_ID_ENV = "MF_POLICY_TEST_ID"
#: the seed of a replica's random generator (arms of customers without an id, exploration);
#: unset = fresh entropy per process (set only to reproduce a run)
POLICY_SEED_ENV = "MF_POLICY_SEED"
#: the Airflow connection of the warehouse, shared by the DAGs, the dashboards and the local
#: stack: switching warehouse (SQLite, HiveServer2) is a change of this connection, not of code
WAREHOUSE_CONN_ID = "model_factory_warehouse"
