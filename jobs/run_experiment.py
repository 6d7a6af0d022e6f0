"""CML job script: cross-validate one experiment (see factory_tasks.jobs.experiment)."""

from factory_tasks.jobs.experiment import main

raise SystemExit(main())
