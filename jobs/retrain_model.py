"""CML job script: refit the chosen experiment on the full training snapshot (see factory_tasks.jobs.retrain)."""

from factory_tasks.jobs.retrain import main

raise SystemExit(main())
