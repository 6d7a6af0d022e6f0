"""The architecture is a checked contract: the import-linter contracts of setup.cfg hold (so
``pytest`` alone checks them, as ``make test`` does), the checker does catch a break of them,
and the stages' ``Protocol`` of the CML client still matches the hooks the DAGs hand them."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # run from the root: dags/ (no __init__.py) is a package only from there; no cache files in the tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "setup.cfg"], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " BROKEN" not in result.stdout


def test_lint_imports_fails_on_a_module_that_breaks_the_contracts(tmp_path):
    """The same contracts on a copy of the packages with three violations added."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in (("factory_tasks", "factory_tasks"), ("dashboards", "dashboards"), ("dags", "dags"),
                           ("plugins/cml_provider", "cml_provider")):
        shutil.copytree(REPO / source, tmp_path / target, ignore=ignore)
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    # core reaching up to a stage, plain Python importing Airflow, a DAG skipping the stages
    (tmp_path / "factory_tasks" / "core" / "upward.py").write_text(
        "from factory_tasks.stages import deploy  # noqa: F401\nimport airflow  # noqa: F401\n")
    (tmp_path / "dags" / "shortcut.py").write_text("from factory_tasks.loop import alerts  # noqa: F401\n")
    # and a circle between two siblings of one layer
    (tmp_path / "factory_tasks" / "core" / "ping.py").write_text("from factory_tasks.core import pong  # noqa: F401\n")
    (tmp_path / "factory_tasks" / "core" / "pong.py").write_text("from factory_tasks.core import ping  # noqa: F401\n")

    result = _lint_imports(tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "factory_tasks.core.upward -> factory_tasks.stages.deploy" in out
    assert "factory_tasks.core.upward -> airflow" in out
    assert "dags.shortcut -> factory_tasks.loop.alerts" in out
    assert "no import cycles between the modules or sub-packages of a package BROKEN" in " ".join(out.split())
    assert ".pong -> .ping" in out or ".ping -> .pong" in out


def _parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_cml_client_protocol_matches_the_hooks():
    """Every call the stages make exists on the hook the DAGs pass, with the same parameters."""
    from cml_provider.hooks.cml import CmlHook
    from cml_provider.hooks.model_metrics import CmlModelMetricsHook

    from factory_tasks.stages.cml_client import CmlClient, CmlModelMetrics

    for protocol, hook in ((CmlClient, CmlHook), (CmlModelMetrics, CmlModelMetricsHook)):
        calls = [name for name, member in vars(protocol).items() if inspect.isfunction(member) and not name.startswith("_")]
        assert calls, protocol
        for name in calls:
            assert hasattr(hook, name), f"{hook.__name__} has no {name}()"
            assert _parameters(getattr(protocol, name)) == _parameters(getattr(hook, name)), (
                f"{protocol.__name__}.{name} and {hook.__name__}.{name} take different parameters")


def test_setup_cfg_lists_every_package():
    """A wheel holds only the packages setup.cfg names: a new sub-package must be listed there."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    roots = {name.strip(): value.strip() for name, _, value in
             (line.partition("=") for line in config["options"]["package_dir"].strip().splitlines())
             if name.strip()}
    on_disk = set()
    for package, folder in {"factory_tasks": "factory_tasks", "dashboards": "dashboards", **roots}.items():
        base = REPO / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            on_disk.add(".".join((package, *relative)))
    on_disk = {name for name in on_disk if "model_shim" not in name}  # data for the model servers, not a package
    assert on_disk - listed == set(), f"packages missing from setup.cfg: {sorted(on_disk - listed)}"
