"""The shared documents and names every other package uses: the contracts that cross process
boundaries (``contracts``), the interaction schema and offer economics (``schema``), the value
types of config files (``config_types``), the estimator and metric registries, the columns of
``experiment_outcomes``, file, job and connection names, the bounds of a run's numeric params,
settings, the clock, bounded text for messages, atomic writes and the code version. It imports
nothing else of ``factory_tasks``."""
