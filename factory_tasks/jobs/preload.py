"""Importing this module imports everything an experiment job run needs (scikit-learn, pandas,
pyarrow, skops: the bulk of a fresh run's start-up).

A workspace that keeps warm engines imports it once and forks every run from there
(``python -m cml_workspace serve --preload factory_tasks.jobs.preload``); the job itself
imports lazily, so that a bad spec fails fast in a fresh interpreter.
"""

import pandas  # noqa: F401
import pyarrow.parquet  # noqa: F401
import sklearn.model_selection  # noqa: F401
import skops.io  # noqa: F401
import threadpoolctl  # noqa: F401

import factory_tasks.jobs.experiment  # noqa: F401
import factory_tasks.training.artifacts  # noqa: F401
import factory_tasks.training.experiment  # noqa: F401
import factory_tasks.warehouse.training_data  # noqa: F401
