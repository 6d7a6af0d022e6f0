"""Model Factory's plain Python: everything the factory computes, with no Airflow and no CML
client in it. Sub-packages, bottom to top (each may use those below it, never those above;
``docs/architecture.md`` and the import-linter contract in ``setup.cfg`` say so exactly):
``core`` (shared documents and names), ``training`` and ``warehouse`` (side by side),
``loop`` (the closed loop), ``serving``, ``jobs`` (the bodies of the CML jobs) and ``stages``
(what the DAG tasks call)."""

__version__ = "0.1.0"
