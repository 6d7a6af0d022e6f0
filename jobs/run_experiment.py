"""CML job script: cross-validate one experiment (see factory_tasks.experiment_job)."""

from factory_tasks.experiment_job import main

raise SystemExit(main())
