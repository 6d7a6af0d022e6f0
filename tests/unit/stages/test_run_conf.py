"""What a run's conf hands the stages: config paths confined to the config folders, and
numbers within the bounds the DAGs' Param schemas declare. Both are the input's fault, so the
DAGs fail such a task at once (``BAD_INPUT_ERRORS``), with an error that names the param."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from factory_tasks.core.settings import REPO_ROOT
from factory_tasks.loop.config import LoopConfigError
from factory_tasks.stages.deploy import deploy_request, review_window
from factory_tasks.stages.errors import BAD_INPUT_ERRORS
from factory_tasks.stages.interactions import load_loop_settings
from factory_tasks.stages.model_factory import validate_grid_file
from factory_tasks.stages.monitoring import monitoring_window

SECRET = "pbkdf2_sha256$600000$c2FsdA$c2VjcmV0aGFzaA"
START = datetime(2026, 12, 1, 3, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, 4, tzinfo=timezone.utc)


@pytest.fixture
def secrets_file(tmp_path):
    """A readable file outside the config folders, like var/secrets/dashboard_users.json."""
    path = tmp_path / "secrets" / "dashboard_users.json"
    path.parent.mkdir()
    path.write_text('{"alice": "%s"}\n' % SECRET)
    return path


def _refused(call, *args):
    with pytest.raises(BAD_INPUT_ERRORS) as info:
        call(*args)
    text = str(info.value)
    assert "outside the config folders" in text, text
    assert SECRET not in text and "root:" not in text
    return text


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/shadow", "../../etc/passwd", "config/../../../etc/passwd"])
def test_a_grid_path_outside_the_config_folders_is_refused_unread(path):
    text = _refused(validate_grid_file, path)
    assert "grid_path" in text and "MODEL_FACTORY_CONFIG_DIRS" in text


def test_secrets_next_to_the_config_are_refused(secrets_file, monkeypatch):
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", str(secrets_file.parent.parent / "config"))
    _refused(validate_grid_file, str(secrets_file))
    _refused(load_loop_settings, str(secrets_file))
    _refused(monitoring_window, str(secrets_file), START, END)


def test_a_symlink_inside_a_config_folder_that_leads_out_is_refused(tmp_path, secrets_file, monkeypatch):
    config = tmp_path / "config"
    config.mkdir()
    (config / "grid.yaml").symlink_to(secrets_file)
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", str(config))
    _refused(validate_grid_file, str(config / "grid.yaml"))


def test_a_loop_config_path_outside_is_refused(secrets_file):
    _refused(load_loop_settings, "/etc/passwd")
    _refused(monitoring_window, "../../etc/passwd", START, END)


def test_files_in_the_configured_folders_are_read(tmp_path, monkeypatch):
    assert validate_grid_file("config/grid.yaml")["grid_path"] == str(REPO_ROOT / "config" / "grid.yaml")
    extra = tmp_path / "configs"
    extra.mkdir()
    (extra / "loop.yaml").write_text((REPO_ROOT / "config" / "closed_loop.yaml").read_text())
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", f"config:{extra}")  # relative to the repository
    assert load_loop_settings(str(extra / "loop.yaml")).traffic.customers_per_window > 0
    assert validate_grid_file(str(REPO_ROOT / "config" / "grid.yaml"))["max_parallel"] >= 1


def test_an_invalid_loop_config_is_bad_input(tmp_path, monkeypatch):
    """The monitoring DAG's tasks fail it without retries (the sensor included)."""
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", str(tmp_path))
    (tmp_path / "loop.yaml").write_text("traffic:\n  customers_per_window: -1\n")
    with pytest.raises(BAD_INPUT_ERRORS) as info:
        monitoring_window(str(tmp_path / "loop.yaml"), START, END)
    assert isinstance(info.value, LoopConfigError) and "traffic.customers_per_window" in str(info.value)


def test_a_file_that_is_not_a_loop_config_is_not_quoted(secrets_file, monkeypatch):
    monkeypatch.setenv("MODEL_FACTORY_CONFIG_DIRS", str(secrets_file.parent))
    with pytest.raises(LoopConfigError) as info:
        load_loop_settings(str(secrets_file))
    text = str(info.value).replace(str(secrets_file), "<file>")
    assert "not a closed-loop config file" in text and SECRET not in text and "alice" not in text


@pytest.mark.parametrize("value", [100000000000000000000, 0, -3, 1.5, True])
def test_max_parallel_out_of_range(value):
    with pytest.raises(BAD_INPUT_ERRORS, match=r"param max_parallel: .* from 1 to \d+"):
        validate_grid_file("config/grid.yaml", value)


@pytest.mark.parametrize("minutes", [1e308, float("inf"), float("nan"), -1])
def test_review_window_out_of_range(minutes):
    with pytest.raises(BAD_INPUT_ERRORS, match="param review_window_minutes: .* from 0 to"):
        review_window("2026-12-01T00:00:00+00:00", minutes)


@pytest.mark.parametrize("kwargs, name", [
    ({"cpu": 1e308, "memory_gb": 2.0, "replicas": 2}, "cpu"),
    ({"cpu": 1.0, "memory_gb": 0.0, "replicas": 2}, "memory_gb"),
    ({"cpu": 1.0, "memory_gb": 2.0, "replicas": 10**20}, "replicas"),
    ({"cpu": 1.0, "memory_gb": 2.0, "replicas": 2, "exploration_epsilon": 0.6}, "exploration_epsilon"),
    ({"cpu": 1.0, "memory_gb": 2.0, "replicas": 2, "exploration_epsilon": -0.1}, "exploration_epsilon"),
    ({"cpu": 1.0, "memory_gb": 2.0, "replicas": 2, "exploration_epsilon": float("nan")}, "exploration_epsilon"),
])
def test_deploy_resources_out_of_range(kwargs, name):
    with pytest.raises(BAD_INPUT_ERRORS, match=f"param {name}: "):
        deploy_request({}, **{"exploration_epsilon": 0.1, **kwargs})


@pytest.mark.parametrize("epsilon", [0, 0.1, 0.5])
def test_the_deployment_environment_carries_the_exploration(epsilon):
    from factory_tasks.core.names import EXPLORATION_EPSILON_ENV, MODEL_VERSION_ENV
    from factory_tasks.serving.loading import PolicyConfig

    files = {MODEL_VERSION_ENV: "v1"}
    request = deploy_request(files, cpu=1.0, memory_gb=2.0, replicas=2, exploration_epsilon=epsilon)
    assert request["environment"] == {MODEL_VERSION_ENV: "v1", EXPLORATION_EPSILON_ENV: repr(float(epsilon))}
    assert files == {MODEL_VERSION_ENV: "v1"}  # the model's files' environment is not changed in place
    # what the endpoint reads back at load is the param's value
    assert PolicyConfig.from_environ(request["environment"]).epsilon == epsilon


def test_values_in_range_pass():
    assert validate_grid_file("config/grid.yaml", 8)["max_parallel"] == 8
    assert review_window("2026-12-01T00:00:00+00:00", 120)["minutes"] == 120.0
    assert deploy_request({}, cpu=1.0, memory_gb=2.0, replicas=2, exploration_epsilon=0.1)["replicas"] == 2
