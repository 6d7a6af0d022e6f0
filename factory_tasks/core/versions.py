"""What computed a result: a hash of the experiment code's content, and the library versions.

The code version hashes the bytes of every file the experiment job runs (the ``factory_tasks``
package and ``jobs/run_experiment.py``), not a git commit: a commit misses uncommitted edits,
and a CML project need not be a git checkout. The orchestrator computes it from its copy to
decide reuse; the job computes it from the copy it actually runs and records that.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

from factory_tasks import __version__
from factory_tasks.core.contracts import RESULT_SHAPING_LIBRARIES, Provenance

PACKAGE_DIR = Path(__file__).resolve().parents[1]
EXPERIMENT_SCRIPT_NAME = "run_experiment.py"


def experiment_code_files(package_dir: Path = PACKAGE_DIR, jobs_dir: Path | None = None) -> list[Path]:
    """The files whose content makes up the experiment job's code, in a stable order."""
    jobs_dir = jobs_dir if jobs_dir is not None else package_dir.parent / "jobs"
    files = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    script = jobs_dir / EXPERIMENT_SCRIPT_NAME
    return files + ([script] if script.is_file() else [])


def hash_code(package_dir: Path = PACKAGE_DIR, jobs_dir: Path | None = None) -> str:
    """``<package version>+<16 hex of sha256 over (relative path, content) of each file>``."""
    digest = hashlib.sha256()
    root = package_dir.parent
    for path in experiment_code_files(package_dir, jobs_dir):
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return f"{__version__}+{digest.hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The content hash of the code this process would run (computed once per process)."""
    return hash_code()


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries a result or a saved model depends on."""
    import numpy
    import pandas
    import sklearn
    import skops

    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "skops": skops.__version__,
    }


def current_provenance() -> Provenance:
    """The code version and result-shaping library versions of this process."""
    versions = library_versions()
    return Provenance(code_version=code_version(),
                      library_versions={lib: versions[lib] for lib in RESULT_SHAPING_LIBRARIES})
