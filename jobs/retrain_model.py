"""CML job script: refit the chosen experiment on the full training snapshot (see factory_tasks.retrain)."""

from factory_tasks.retrain import main

raise SystemExit(main())
