"""docker-compose.yaml, Dockerfile and .env.example, checked statically.

There is no Docker engine or compose plugin here, so ``docker compose config`` cannot run (and a
test that skips is no test in CI): the file is parsed with PyYAML
(which resolves the ``<<`` merges as compose does) and checked against the shape of Apache
Airflow 3's own compose file: CeleryExecutor with PostgreSQL and Redis, airflow-init once, the
official health checks, secrets only from .env.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()
SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")
CONSTRAINTS = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                   if "==" in line and not line.startswith("#"))

#: names of variables and environment keys that hold a secret
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|API_KEY|TOKEN|BASIC_AUTH|AIRFLOW_CONN_|REDISCLI_AUTH", re.I)
#: ${VAR}, ${VAR:?msg}, ${VAR:-default}, … but not $${VAR} (compose's escape for the shell)
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?+])[^}]*)?\}")
ONLY_REFERENCE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}")
PLACEHOLDER = "change-me"


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _strings(node):
    """Every string anywhere below ``node`` (keys included)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _refs_as_markers(text: str) -> str:
    """``${VAR:?message}`` (a required reference) as ``REF_VAR``, so URLs holding one parse."""
    return re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}", r"REF_\1", text)


def _host(url: str) -> str | None:
    return urlsplit(_refs_as_markers(url)).hostname


def _env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def _healthcheck_text(name: str) -> str:
    test = SERVICES[name]["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


AIRFLOW_SERVICES = {name for name, s in SERVICES.items() if _command(s)[:1] == ["airflow"]}
ONE_SHOT = {name for name, s in SERVICES.items() if str(s.get("restart")) == "no"}
LONG_RUNNING = set(SERVICES) - ONE_SHOT
AIRFLOW_WITH_INIT = AIRFLOW_SERVICES | {"airflow-init"}


# -- the topology ----------------------------------------------------------------------------
def test_every_airflow_component_is_a_service():
    commands = {tuple(_command(s)[:3]) for s in SERVICES.values()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert ("airflow", component) in commands, component
    assert ("airflow", "celery", "worker") in commands
    assert {"postgres", "redis", "airflow-init", "hive-metastore", "hiveserver2", "cml-workspace",
            "dashboard"} <= set(SERVICES)


def test_airflow_init_migrates_creates_the_user_once_and_everything_airflow_waits_for_it():
    init = SERVICES["airflow-init"]
    script = "\n".join(_command(init))
    assert "airflow db migrate" in script
    # user creation: the admin's password, from .env, into the simple auth manager's file
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "AIRFLOW_ADMIN_PASSWORD" in script
    assert ONLY_REFERENCE.fullmatch(_env(init)["AIRFLOW_ADMIN_PASSWORD"])
    assert str(init["restart"]) == "no"
    assert "healthcheck" not in init and "ports" not in init
    # the experiments' pool exists before a scheduler starts (a task in a missing pool is never
    # scheduled), counting deferred experiments: they hold their slot while their run goes on
    from factory_tasks.core.names import EXPERIMENT_POOL

    pool_line = next((line for line in script.splitlines() if "airflow pools set" in line), "")
    assert f"airflow pools set {EXPERIMENT_POOL} " in pool_line and "--include-deferred" in pool_line, script
    # and every Airflow process may resize it over the REST API, as the admin of .env
    assert ONLY_REFERENCE.fullmatch(_env(init)["AIRFLOW_CONN_AIRFLOW_API"])
    for name in AIRFLOW_SERVICES:
        assert (SERVICES[name]["depends_on"].get("airflow-init") or {}).get("condition") == \
            "service_completed_successfully", name


def test_executor_is_celery_everywhere():
    assert AIRFLOW_SERVICES >= {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                                "airflow-triggerer", "airflow-worker", "flower"}
    for name in AIRFLOW_WITH_INIT:
        assert _env(SERVICES[name]).get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
    for name, service in SERVICES.items():
        assert _env(service).get("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor") == "CeleryExecutor", name
    assert "LocalExecutor" not in COMPOSE_TEXT


def test_celery_reaches_redis_and_postgres_and_there_are_two_workers_or_more():
    workers = [s for s in SERVICES.values() if _command(s)[:3] == ["airflow", "celery", "worker"]]
    assert sum(int((w.get("deploy") or {}).get("replicas", 1)) for w in workers) >= 2
    for worker in workers:
        assert "ports" not in worker and "container_name" not in worker  # replicas need neither
        assert _env(worker).get("DUMB_INIT_SETSID") == "0"  # warm shutdown, as Airflow's file
    for name in AIRFLOW_WITH_INIT:
        env = _env(SERVICES[name])
        assert _host(env["AIRFLOW__CELERY__BROKER_URL"]) == "redis", name
        assert _host(env["AIRFLOW__CELERY__RESULT_BACKEND"]) == "postgres", name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert _host(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]) == "postgres", name


def test_flower_is_optional_under_a_profile():
    flower = [n for n, s in SERVICES.items() if _command(s)[:3] == ["airflow", "celery", "flower"]]
    assert flower == ["flower"]
    assert SERVICES["flower"].get("profiles") == ["flower"]
    # nothing in the default profile needs it
    for name, service in SERVICES.items():
        if not service.get("profiles"):
            assert "flower" not in (service.get("depends_on") or {}), name


def test_execution_api_url_and_one_jwt_secret_for_every_component():
    api = SERVICES["airflow-apiserver"]
    assert any(p.split(":")[-1] == "8080" for p in api["ports"])
    secrets = set()
    for name in AIRFLOW_WITH_INIT:
        env = _env(SERVICES[name])
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        secrets.add(env["AIRFLOW__API_AUTH__JWT_SECRET"])
        assert ONLY_REFERENCE.fullmatch(env["AIRFLOW__CORE__FERNET_KEY"]), name
    assert len(secrets) == 1 and ONLY_REFERENCE.fullmatch(secrets.pop())


# -- health checks and dependencies ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_every_long_running_service_has_a_healthcheck(name):
    service = SERVICES[name]
    assert service.get("restart") in ("always", "unless-stopped"), f"{name}: no restart policy"
    check = service.get("healthcheck") or {}
    assert not check.get("disable") and check.get("test"), f"{name} has no health check"
    assert check["test"] != ["NONE"], name


@pytest.mark.parametrize("name,expected", [
    ("postgres", "pg_isready -U airflow"),
    ("redis", "redis-cli ping"),
    ("airflow-apiserver", "curl --fail http://localhost:8080/api/v2/version"),
    ("airflow-scheduler", "curl --fail http://localhost:8974/health"),
    ("airflow-dag-processor", "airflow jobs check --job-type DagProcessorJob"),
    ("airflow-triggerer", "airflow jobs check --job-type TriggererJob"),
    ("airflow-worker", "celery --app airflow.providers.celery.executors.celery_executor.app inspect ping"),
    ("flower", "http://localhost:5555/healthcheck"),
    ("hive-metastore", "/dev/tcp/localhost/9083"),
    ("hiveserver2", "/dev/tcp/localhost/10000"),
    ("cml-workspace", "http://localhost:8787/health"),
    ("dashboard", "http://localhost:5006/liveness"),
])
def test_health_checks_are_the_official_or_sensible_ones(name, expected):
    assert expected in _healthcheck_text(name)


def test_the_scheduler_serves_its_health_check_and_the_dashboard_its_liveness_endpoint():
    assert _env(SERVICES["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert "--liveness" in "\n".join(_command(SERVICES["dashboard"]))
    # the workspace's port in its command is the one its check asks
    assert _command(SERVICES["cml-workspace"])[_command(SERVICES["cml-workspace"]).index("--port") + 1] == "8787"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_waits_for_health_or_completion(name):
    depends = SERVICES[name].get("depends_on") or {}
    assert isinstance(depends, dict), f"{name}: depends_on without conditions"
    for dependency, spec in depends.items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        condition = (spec or {}).get("condition")
        if dependency in ONE_SHOT:
            assert condition == "service_completed_successfully", f"{name} -> {dependency}: {condition}"
        else:
            assert "healthcheck" in SERVICES[dependency], dependency
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
    if name in AIRFLOW_WITH_INIT:
        assert {"postgres", "redis"} <= set(depends), name


def test_one_shot_services_are_awaited_by_someone():
    for name in ONE_SHOT:
        waiting = [n for n, s in SERVICES.items()
                   if ((s.get("depends_on") or {}).get(name) or {}).get("condition") == "service_completed_successfully"]
        assert waiting, f"{name} runs once but nothing waits for it"


# -- images ---------------------------------------------------------------------------------------
#: postgres releases are major.minor; the others major.minor.patch
FULL_VERSION = {"postgres": re.compile(r"\d+\.\d+(-[a-z0-9.]+)?"), None: re.compile(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?")}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned_to_an_exact_tag(name):
    image = SERVICES[name]["image"]
    assert "$" not in image, f"{name}: the image comes from a variable"
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest", name
    pattern = FULL_VERSION.get(repo, FULL_VERSION[None])
    assert pattern.fullmatch(tag), f"{name}: {image} is not an exact release tag"


def test_the_factory_image_is_built_from_the_pinned_airflow():
    airflow = CONSTRAINTS["apache-airflow"]
    assert f"apache-airflow=={airflow}" in SETUP["options"]["install_requires"]
    match = re.search(r"^FROM apache/airflow:(\S+)$", DOCKERFILE, re.M)
    assert match, "the Dockerfile does not start from apache/airflow"
    version, _, python = match.group(1).partition("-python")
    assert version == airflow, f"image {version} but constraints pin apache-airflow=={airflow}"
    assert f">={python}" in SETUP["options"]["python_requires"]
    factory = {SERVICES[n]["image"] for n in SERVICES if SERVICES[n].get("build")}
    assert factory == {f"model-factory:{SETUP['metadata']['version']}"}
    assert all(SERVICES[n].get("build") for n in SERVICES if SERVICES[n]["image"] in factory)


def test_the_dockerfile_installs_what_the_services_need_with_the_constraints_pins():
    install = " ".join(re.findall(r"RUN pip install ((?:.*\\\n)*.*)", DOCKERFILE)).replace("\\\n", " ")
    assert "-c constraints.txt" in install and "-e ." in install
    pins = dict(re.findall(r'"?([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([^\s"]+)"?', install))
    assert {"apache-airflow-providers-celery", "psycopg2-binary"} <= set(pins)  # Celery; the postgres driver
    assert "celery[redis]" in install  # the broker's transport
    for package, version in pins.items():
        assert CONSTRAINTS.get(package) == version, f"Dockerfile {package}=={version}, constraints {CONSTRAINTS.get(package)}"


# -- secrets and .env ----------------------------------------------------------------------------
def test_no_literal_secret_anywhere():
    # every secret-like environment value (the x- anchors included) is one required ${VAR:?…}
    checked = 0
    for name, service in list(SERVICES.items()) + [(k, v) for k, v in COMPOSE.items() if k.startswith("x-")]:
        for key, value in _env(service).items():
            if SECRET_NAME.search(key) and not key.endswith(("_USERS", "_FILE")):
                assert isinstance(value, str) and ONLY_REFERENCE.fullmatch(value), f"{name}.{key} = {value!r}"
                checked += 1
    assert checked >= 15
    # every URL with a password anywhere (commands and health checks too) takes it from .env
    urls = [url for text in _strings(COMPOSE)
            for url in re.findall(r"[a-z0-9+]+://[^\s'\"/@]*@[^\s'\"]+", _refs_as_markers(text))]
    assert len(urls) >= 3
    for url in urls:
        split = urlsplit(url)
        if split.password is not None:
            assert re.fullmatch(r"REF_[A-Z0-9_]+", split.password), url
    # a secret variable is always required, never defaulted
    for var, modifier in INTERPOLATION.findall(COMPOSE_TEXT):
        if SECRET_NAME.search(var):
            assert modifier.startswith(":?"), f"${{{var}{modifier}}} has a default or no check"
    assert not any(PLACEHOLDER in text for text in _strings(COMPOSE))  # .env.example's placeholders
    # flags that take a secret get a reference or a file, never a value
    assert not re.search(r"--(requirepass|cookie-secret|api-key)[ =\"',]+(?![ =\"',])(?!\$\{)", COMPOSE_TEXT)
    assert not re.search(r"--basic-auth[ =\"',]+(?![ =\"',])(?!/)", COMPOSE_TEXT)


def test_env_example_lists_exactly_the_variables_used():
    used = {var for var, _ in INTERPOLATION.findall(COMPOSE_TEXT)}
    documented = set(_env_example())
    assert used - documented == set(), "used but not in .env.example"
    assert documented - used == set(), "in .env.example but not used"


def test_env_example_holds_placeholders_and_says_how_to_generate_them():
    example = _env_example()
    text = (REPO / ".env.example").read_text()
    for var, value in example.items():
        if SECRET_NAME.search(var) and not var.startswith("AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"):
            assert PLACEHOLDER in value, f"{var} in .env.example looks like a real value"
            comment = text[:text.index(f"\n{var}=")].rsplit("\n\n", 1)[-1]
            assert "Generate" in comment or "openssl" in comment or "repeat" in comment, f"{var}: how to make it?"
    assert "Fernet.generate_key" in text


def test_secrets_never_reach_a_command_line_except_redis_requirepass():
    for name, service in SERVICES.items():
        for var, _ in INTERPOLATION.findall(" ".join(_command(service))):
            assert name == "redis" and var == "REDIS_PASSWORD", f"{name}: ${var} on its command line"


# -- the factory's pieces --------------------------------------------------------------------------
def test_airflow_reaches_the_bundled_services_through_the_project_connections():
    example = _env_example()
    warehouse = urlsplit(example["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"])
    assert (warehouse.scheme, warehouse.hostname, warehouse.port) == ("hiveserver2", "hiveserver2", 10000)
    cml = json.loads(example["AIRFLOW_CONN_CML_DEFAULT"])
    assert cml["conn_type"] == "cml" and cml["extra"]["project_name"] == "model-factory"
    assert urlsplit(cml["host"]).hostname == "cml-workspace" and urlsplit(cml["host"]).port == 8787
    assert urlsplit(cml["extra"]["model_service_url"]).port == 8788
    workspace = _command(SERVICES["cml-workspace"])
    assert workspace[workspace.index("--model-port") + 1] == "8788"
    for name in AIRFLOW_WITH_INIT:
        env = _env(SERVICES[name])
        assert env["AIRFLOW_CONN_CML_DEFAULT"].startswith("${AIRFLOW_CONN_CML_DEFAULT:?"), name
        assert env["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"].startswith("${AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE:?"), name
        assert env["MODEL_FACTORY_OBJECT_STORE"].startswith("file:///opt/model-factory/var/"), name
    assert "AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE" in _env(SERVICES["dashboard"])


def test_airflow_reaches_the_bundled_hive():
    assert "thrift://hive-metastore:9083" in SERVICES["hiveserver2"]["environment"]["SERVICE_OPTS"]
    assert "10000:10000" in SERVICES["hiveserver2"]["ports"]
    # the metastore initialises its schema (no IS_RESUME) into its volume; HiveServer2 skips it
    metastore = SERVICES["hive-metastore"]
    assert str(_env(metastore).get("IS_RESUME", "false")).lower() == "false"
    db = re.search(r"databaseName=([^;]+)", _env(metastore)["SERVICE_OPTS"]).group(1)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in metastore["volumes"]}
    assert any(db.startswith(target + "/") and source == "hive-metastore-db" for target, source in mounts.items())
    assert str(_env(SERVICES["hiveserver2"])["IS_RESUME"]).lower() == "true"
    shared = {v.split(":")[0] for v in metastore["volumes"]} & {v.split(":")[0] for v in SERVICES["hiveserver2"]["volumes"]}
    assert "hive-warehouse" in shared


def test_the_training_table_is_seeded_in_the_bundled_hive_before_a_worker_starts():
    init = SERVICES["training-table-init"]
    assert _command(init) == ["python", "-m", "stack", "seed-training-table"]  # tests/hive runs it on HiveServer2
    assert str(init["restart"]) == "no" and init["depends_on"]["hiveserver2"]["condition"] == "service_healthy"
    assert _env(init)["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"] == _env(SERVICES["airflow-worker"])["AIRFLOW_CONN_MODEL_FACTORY_WAREHOUSE"]
    assert SERVICES["airflow-worker"]["depends_on"]["training-table-init"]["condition"] == "service_completed_successfully"


def test_the_dashboard_serves_both_apps_as_stack_dashboard_does():
    from stack.dashboard import APPS, serve_command

    script = "\n".join(_command(SERVICES["dashboard"]))
    assert "panel serve" in script and "python -m panel" in script  # the image's entrypoint runs `python`
    for app in APPS:
        assert f"/opt/model-factory/{app.relative_to(REPO)}" in script, app.name
        assert (REPO / "dashboards" / app.name).exists()
    assert "--auth-module /opt/model-factory/dashboards/login.py" in script and "--address 0.0.0.0" in script
    assert _env(SERVICES["dashboard"])["MODEL_FACTORY_DASHBOARD_USERS"] == "/tmp/dashboard_users.json"
    # what makes the pages fast under make dashboard makes them fast here too
    assert "--warm --reuse-sessions warm --setup /opt/model-factory/dashboards/serve_setup.py" in script
    assert {"--warm", "--reuse-sessions", "--setup"} <= set(serve_command(5006))
    env = _env(SERVICES["dashboard"])
    assert ONLY_REFERENCE.fullmatch(env["PANEL_COOKIE_SECRET"])
    assert "5006:5006" in SERVICES["dashboard"]["ports"]


def test_ports_volumes_and_code_are_consistent():
    declared_volumes = set(COMPOSE.get("volumes") or {})
    host_ports, used_volumes = [], set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"
                used_volumes.add(source)
        host_ports += [p.split(":")[0] for p in service.get("ports", [])]
    assert used_volumes == declared_volumes
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"
    assert {"8080", "5006", "10000", "8787"} <= set(host_ports)
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    modules = [_command(s)[2] for s in SERVICES.values() if _command(s)[:2] == ["python", "-m"]]
    assert modules
    # a top-level package lives where setup.cfg's package_dir puts it (local/stack, ...), else at the root
    package_dir = dict(line.split(" = ") for line in SETUP["options"]["package_dir"].splitlines() if " = " in line)
    for module in modules:
        top, *rest = module.split(".")
        assert (REPO / package_dir.get(top, top)).joinpath(*rest).exists(), module
    # the image's entrypoint runs `airflow <command>` unless the command is bash or python
    for name, service in SERVICES.items():
        if service.get("build") and "entrypoint" not in service:
            assert _command(service)[0] in ("airflow", "bash", "python"), name
