"""The bodies of the CML jobs: one experiment's cross-validation run (``experiment``), the
retrain of the chosen experiment on the full training set (``retrain``) and the modules a warm
engine imports before it forks a run (``preload``). The scripts under ``jobs/`` at the top level
only call into here."""
