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
