"""docker-compose.yaml cannot run here (no Docker engine): check it statically instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAME = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN|AIRFLOW_CONN_", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_every_airflow_component_is_a_service():
    commands = {tuple(s.get("command", []))[:2] for s in SERVICES.values()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert ("airflow", component) in commands, component
    assert ("airflow", "db") in commands  # migration before the components start


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_secrets_are_interpolated_never_literal(name):
    for key, value in _env(SERVICES[name]).items():
        if SECRET_NAME.search(key):
            assert isinstance(value, str) and value.startswith("${"), f"{name}.{key} holds a literal"


def test_every_interpolated_variable_is_documented_in_env_example():
    used = set(INTERPOLATION.findall((REPO / "docker-compose.yaml").read_text()))
    documented = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#")}
    assert used <= documented, used - documented


def test_ports_volumes_and_dependencies_are_consistent():
    declared_volumes = set(COMPOSE.get("volumes") or {})
    host_ports = []
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        host_ports += [p.split(":")[0] for p in service.get("ports", [])]
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        assert service.get("image") or service.get("build"), name
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"
    assert "8080" in host_ports


def test_services_run_code_that_exists():
    dockerfile = (REPO / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    assert (REPO / "dashboards").is_dir()
    modules = [s["command"][2] for s in SERVICES.values() if s.get("command", [None])[0] == "python"]
    for module in modules:
        assert (REPO / module.replace(".", "/")).exists(), module


def test_airflow_reaches_the_bundled_hive_through_the_warehouse_connection():
    assert {"hive-metastore", "hiveserver2"} <= set(SERVICES)
    assert "thrift://hive-metastore:9083" in SERVICES["hiveserver2"]["environment"]["SERVICE_OPTS"]
    assert "10000:10000" in SERVICES["hiveserver2"]["ports"]
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"].startswith("hiveserver2://airflow@hiveserver2:10000/")
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE" in _env(SERVICES[name])
