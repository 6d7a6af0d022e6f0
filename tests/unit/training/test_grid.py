"""The experiment grid: loading and validating config/grid.yaml, and expanding it into specs.

One negative test per validation rule; each asserts that the message names the key path and
the problem. Grids are written as real files, because line numbers are part of the messages.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from factory_tasks.core.contracts import ExperimentSpec
from factory_tasks.core.estimators import ESTIMATORS
from factory_tasks.core.schema import OFFERS
from factory_tasks.training.grid import (
    MAX_GRID_FILE_BYTES,
    GridConfig,
    GridError,
    expand_grid,
    grid_hash,
    load_grid,
    main,
)

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "config" / "grid.yaml"
SNAPSHOT = {"path": "snapshots/historical_customer_interactions-abc.parquet", "hash": "ab" * 32}
SPEC_FIELDS = {
    "schema_version", "experiment_id", "family", "estimator", "params", "cv_folds", "metrics", "ranking_metric",
    "resources", "economics", "random_state", "data_snapshot",
}

BASE = {
    "cv": {"folds": 3, "random_state": 7},
    "metrics": ["roc_auc", "log_loss", "policy_value"],
    "ranking_metric": "roc_auc",
    "max_parallel": 2,
    "max_experiments": 50,
    "economics": {"conversion_value": 100.0,
                  "offer_costs": {"Discount": 8.0, "Buy One Get One": 4.0, "No Offer": 0.0}},
    "data": {"table": "historical_customer_interactions"},
    "families": {
        "logistic_regression": {
            "estimator": "LogisticRegression",
            "resources": {"cpu": 1, "memory_gb": 1},
            "params": {"C": [0.1, 1.0], "max_iter": [500]},
        },
        "random_forest": {
            "estimator": "RandomForestClassifier",
            "resources": {"cpu": 2, "memory_gb": 4},
            "params": {"n_estimators": [50], "max_depth": [4, 8, None]},
        },
    },
}


def base() -> dict:
    return copy.deepcopy(BASE)


def write(tmp_path: Path, data, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def problems(tmp_path: Path, data) -> list[str]:
    """The problems of an invalid grid (fails the test if the grid loads)."""
    path = write(tmp_path, data)
    with pytest.raises(GridError) as info:
        load_grid(path)
    assert str(path) in str(info.value)  # the message names the file
    return info.value.problems


def assert_problem(found: list[str], key: str, *fragments: str) -> str:
    """Exactly one problem names ``key`` (as ``: key:``) and it contains every fragment."""
    matching = [p for p in found if f": {key}: " in p]
    assert len(matching) == 1, f"expected one problem at {key!r}, got:\n" + "\n".join(found)
    for fragment in fragments:
        assert fragment in matching[0], f"{fragment!r} not in {matching[0]!r}"
    return matching[0]


# ------------------------------------------------------------------------------------------
# The shipped grid


def test_shipped_grid_loads_and_covers_the_default_families():
    config = load_grid(SHIPPED)
    estimators = {f.estimator for f in config.families.values()}
    assert {"LogisticRegression", "HistGradientBoostingClassifier", "RandomForestClassifier"} <= estimators
    assert "GradientBoostingClassifier" not in estimators  # allowed, but slow: not in the default
    assert 1 <= config.size <= config.max_experiments
    assert config.metrics == ["roc_auc", "log_loss", "average_precision", "accuracy", "policy_value", "policy_uplift"]
    assert config.ranking_metric == "roc_auc"
    assert config.max_parallel == 4
    assert set(config.economics.offer_costs) == set(OFFERS)
    assert config.data.table == "historical_customer_interactions"
    assert config.data.interactions_table == "customer_interactions"
    rf = next(f for f in config.families.values() if f.estimator == "RandomForestClassifier")
    lr = next(f for f in config.families.values() if f.estimator == "LogisticRegression")
    assert (rf.resources.cpu, rf.resources.memory_gb) > (lr.resources.cpu, lr.resources.memory_gb)


def test_omitted_settings_take_documented_defaults(tmp_path):
    data = {"economics": BASE["economics"],
            "families": {"lr": {"estimator": "LogisticRegression", "params": {}}}}
    config = load_grid(write(tmp_path, data))
    assert (config.cv.folds, config.max_parallel, config.max_experiments) == (5, 4, 200)
    assert config.ranking_metric == "roc_auc" and "policy_value" in config.metrics
    assert config.data.table == "historical_customer_interactions"
    # resources default to the estimator's profile in the registry; params: {} is one run
    entry = ESTIMATORS["LogisticRegression"]
    assert (config.families["lr"].resources.cpu, config.families["lr"].resources.memory_gb) == (entry.cpu, entry.memory_gb)
    assert config.families["lr"].size == 1


def test_a_bare_scalar_is_a_one_value_list(tmp_path):
    data = base()
    data["families"]["logistic_regression"]["params"]["max_iter"] = 500
    config = load_grid(write(tmp_path, data))
    assert config.families["logistic_regression"].params["max_iter"] == [500]


def test_validated_config_round_trips_through_its_dump(tmp_path):
    config = load_grid(write(tmp_path, base()))
    assert GridConfig.model_validate(config.model_dump()) == config


# ------------------------------------------------------------------------------------------
# File-level problems


def test_missing_file(tmp_path):
    with pytest.raises(GridError) as info:
        load_grid(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "file not found" in str(info.value)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    found = problems(tmp_path, "cv:\n  folds: 5\nmetrics: [roc_auc, log_loss\n")
    assert len(found) == 1
    assert "grid.yaml:4:1: YAML syntax error: expected ',' or ']'" in found[0]  # where the stream ended


def test_yaml_syntax_error_position(tmp_path):
    (found,) = problems(tmp_path, "cv:\n  folds: 5\n   random_state: 1\n")
    assert "YAML syntax error" in found
    assert ":3:" in found  # line 3, where the bad indentation is


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    (found,) = problems(tmp_path, text)
    assert "top level must be a mapping" in found and kind in found


def test_empty_file(tmp_path):
    (found,) = problems(tmp_path, "# only a comment\n")
    assert "empty" in found


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: a list of nine strings, then ``levels`` lists of nine aliases of the one before
    (9**10 strings in the last)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(5)  # an expanded bomb takes minutes and gigabytes: fail fast instead of hanging
def test_yaml_alias_bomb_is_refused_before_anything_expands(tmp_path):
    text = alias_bomb() + yaml.safe_dump(base(), sort_keys=False)
    tracemalloc.start()
    try:
        (found,) = problems(tmp_path, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == (f"{tmp_path / 'grid.yaml'}:1:5: YAML aliases/anchors are not allowed in a grid file "
                     "(found &l0): write each value out in full")
    assert peak < 5_000_000  # bytes: the aliases were never followed


def test_yaml_aliases_are_refused_even_when_harmless(tmp_path):
    text = yaml.safe_dump(base(), sort_keys=False).replace(
        "resources:\n      cpu: 2\n      memory_gb: 4\n", "resources: *small\n").replace(
        "resources:\n      cpu: 1\n", "resources: &small\n      cpu: 1\n")
    assert "&small" in text and "*small" in text
    (found,) = problems(tmp_path, text)
    line = text.splitlines().index("    resources: &small") + 1
    assert found.startswith(f"{tmp_path / 'grid.yaml'}:{line}:16: YAML aliases/anchors are not allowed")
    assert "(found &small)" in found


def test_yaml_undefined_alias_is_refused_as_an_alias(tmp_path):
    (found,) = problems(tmp_path, "cv: *defaults\n")
    assert found.endswith(":1:5: YAML aliases/anchors are not allowed in a grid file (found *defaults): "
                          "write each value out in full")


def test_yaml_nested_too_deeply(tmp_path):
    (found,) = problems(tmp_path, "families: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert "grid.yaml:1:42: nested more than 32 levels deep" in found


def with_flow_list(data: dict, family: str, name: str, values: list) -> str:
    """``data`` as YAML text with ``families.<family>.params.<name>`` written as one flow list."""
    data["families"][family]["params"][name] = "VALUES"
    return yaml.safe_dump(data, sort_keys=False).replace("VALUES", "[" + ",".join(map(str, values)) + "]")


def test_grid_file_larger_than_the_size_cap(tmp_path):
    text = with_flow_list(base(), "random_forest", "n_estimators", list(range(700_000)))  # refused by size, unparsed
    (found,) = problems(tmp_path, text)
    size = len(text.encode())
    assert size > 4 * MAX_GRID_FILE_BYTES
    assert found == (f"{tmp_path / 'grid.yaml'}: the file is {size:,} bytes, over the 1,048,576-byte (1 MiB) "
                     "limit for a grid file; a grid is a few KB: list a few values per hyperparameter, not thousands")
    assert MAX_GRID_FILE_BYTES == 1024 * 1024


def test_the_size_cap_holds_for_files_without_a_size():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(GridError) as info:
        load_grid("/dev/zero")
    assert info.value.problems == [
        "/dev/zero: the file is more than 1,048,576 bytes, over the 1,048,576-byte (1 MiB) limit for a grid "
        "file; a grid is a few KB: list a few values per hyperparameter, not thousands"]


def test_unknown_top_level_key_suggests_the_right_one(tmp_path):
    data = base()
    data["max_paralel"] = 3
    assert_problem(problems(tmp_path, data), "max_paralel", "unknown key", "Did you mean 'max_parallel'?")


def test_unknown_nested_key(tmp_path):
    data = base()
    data["families"]["random_forest"]["resources"]["gpus"] = 1
    assert_problem(problems(tmp_path, data), "families.random_forest.resources.gpus", "unknown key",
                   "Valid keys here: cpu, memory_gb")


def test_duplicate_yaml_keys_are_reported_not_silently_dropped(tmp_path):
    text = yaml.safe_dump(base(), sort_keys=False).replace(
        "  random_forest:\n", "  logistic_regression:\n    estimator: LogisticRegression\n    params: {}\n  random_forest:\n")
    found = problems(tmp_path, text)
    assert_problem(found, "families.logistic_regression", "duplicate key 'logistic_regression'", "first written on line")


def test_problems_carry_line_numbers_and_come_in_file_order(tmp_path):
    data = base()
    data["cv"]["folds"] = 1
    data["families"]["random_forest"]["params"]["max_depth"] = [-1]
    path = write(tmp_path, data)
    lines = path.read_text().splitlines()
    with pytest.raises(GridError) as info:
        load_grid(path)
    found = info.value.problems
    assert len(found) == 2
    folds_line = next(i for i, line in enumerate(lines, 1) if "folds:" in line)
    assert found[0].startswith(f"{path}:{folds_line}: cv.folds: ")
    assert "families.random_forest.params.max_depth[0]" in found[1]


def test_every_problem_is_reported_at_once(tmp_path):
    data = base()
    data["cv"]["folds"] = 50
    data["metrics"].append("f1")
    data["economics"]["conversion_value"] = -1
    data["families"]["random_forest"]["estimator"] = "RandomForest"
    data["families"]["logistic_regression"]["params"]["C"] = ["abc", 1.0]
    found = problems(tmp_path, data)
    assert len(found) == 5, found
    for key in ("cv.folds", "metrics[3]", "economics.conversion_value", "families.random_forest.estimator",
                "families.logistic_regression.params.C[0]"):
        assert_problem(found, key)
    assert isinstance(GridError("x", found), ValueError)


# ------------------------------------------------------------------------------------------
# Families, estimators and hyperparameters


def test_unknown_estimator_lists_valid_ones(tmp_path):
    data = base()
    data["families"]["random_forest"]["estimator"] = "XGBClassifier"
    assert_problem(problems(tmp_path, data), "families.random_forest.estimator", "'XGBClassifier' is not a known estimator",
                   *ESTIMATORS)


def test_unknown_hyperparameter_suggests_close_matches(tmp_path):
    data = base()
    data["families"]["random_forest"]["params"]["max_dept"] = [3]
    assert_problem(problems(tmp_path, data), "families.random_forest.params.max_dept",
                   "not a hyperparameter of RandomForestClassifier", "Did you mean 'max_depth'")


@pytest.mark.parametrize("family, name, value, expected", [
    ("logistic_regression", "C", "abc", "must be a float in the range (0.0, inf]. Got 'abc'"),
    ("random_forest", "max_depth", -1, "must be an int in the range [1, inf) or None. Got -1"),
    ("random_forest", "n_estimators", 1.5, "must be an int in the range [1, inf). Got 1.5"),
    ("random_forest", "criterion", "gini_impurity", "criterion"),
    ("random_forest", "n_estimators", True, "takes no true/false value"),
])
def test_values_are_checked_with_scikit_learns_constraints(tmp_path, family, name, value, expected):
    data = base()
    data["families"][family]["params"][name] = [value]
    assert_problem(problems(tmp_path, data), f"families.{family}.params.{name}[0]", expected)


def test_numeric_text_gets_a_yaml_hint(tmp_path):
    text = yaml.safe_dump(base(), sort_keys=False).replace("- 0.1\n", "- 1e-3\n")  # YAML 1.1 reads this as text
    found = problems(tmp_path, text)
    assert_problem(found, "families.logistic_regression.params.C[0]", "Got '1e-3'", "1.0e-3")


@pytest.mark.parametrize("value", [[3, 4], {"a": 1}])
def test_non_scalar_values(tmp_path, value):
    data = base()
    data["families"]["random_forest"]["params"]["max_depth"] = [4, value]
    assert_problem(problems(tmp_path, data), "families.random_forest.params.max_depth[1]",
                   "values must be single numbers, text, true/false or null")


def test_a_mapping_instead_of_a_value_list(tmp_path):
    data = base()
    data["families"]["random_forest"]["params"]["max_depth"] = {"low": 4}
    assert_problem(problems(tmp_path, data), "families.random_forest.params.max_depth", "must be a list of values")


def test_non_finite_values(tmp_path):
    text = yaml.safe_dump(base(), sort_keys=False).replace("- 0.1\n", "- .inf\n")
    assert_problem(problems(tmp_path, text), "families.logistic_regression.params.C[0]", "no infinity")


def test_empty_value_list(tmp_path):
    data = base()
    data["families"]["random_forest"]["params"]["max_depth"] = []
    assert_problem(problems(tmp_path, data), "families.random_forest.params.max_depth", "empty list")


def test_duplicate_values_in_a_list(tmp_path):
    data = base()
    data["families"]["random_forest"]["params"]["max_depth"] = [4, 8, 4]
    assert_problem(problems(tmp_path, data), "families.random_forest.params.max_depth[2]",
                   "duplicate value 4 (already at max_depth[0])")


def test_int_and_float_of_equal_value_are_different_values(tmp_path):
    # max_features: 1 is one feature, 1.0 is all of them
    data = base()
    data["families"]["random_forest"]["params"]["max_features"] = [1, 1.0]
    assert load_grid(write(tmp_path, data)).families["random_forest"].params["max_features"] == [1, 1.0]


@pytest.mark.parametrize("family, name", [
    ("random_forest", "random_state"),
    ("random_forest", "n_jobs"),
    ("random_forest", "verbose"),
    ("logistic_regression", "n_jobs"),
])
def test_parameters_the_factory_sets_are_refused(tmp_path, family, name):
    data = base()
    data["families"][family]["params"][name] = [1]
    assert_problem(problems(tmp_path, data), f"families.{family}.params.{name}", "is set by the factory",
                   "remove it from the grid")


def test_deprecated_parameters_are_refused(tmp_path):
    data = base()
    data["families"]["logistic_regression"]["params"]["penalty"] = ["l2"]
    assert_problem(problems(tmp_path, data), "families.logistic_regression.params.penalty", "deprecated")


def test_combinations_that_only_fit_rejects(tmp_path):
    data = base()
    data["families"]["logistic_regression"]["params"]["l1_ratio"] = [0.0, 0.5]  # needs solver saga
    assert_problem(problems(tmp_path, data), "families.logistic_regression.params",
                   "2 of 4 combinations fail in LogisticRegression.fit", '"l1_ratio": 0.5', "lbfgs")
    data["families"]["logistic_regression"]["params"]["solver"] = ["saga"]
    load_grid(write(tmp_path, data))


def test_fit_check_can_be_skipped(tmp_path):
    data = base()
    data["families"]["logistic_regression"]["params"]["l1_ratio"] = [0.5]
    load_grid(write(tmp_path, data), check_fit=False)


def test_empty_family(tmp_path):
    data = base()
    data["families"]["gradient_boosting"] = None
    assert_problem(problems(tmp_path, data), "families.gradient_boosting", "family is empty")


def test_family_without_params_mapping(tmp_path):
    data = base()
    data["families"]["random_forest"]["params"] = None
    assert_problem(problems(tmp_path, data), "families.random_forest.params", "params must be a mapping")


def test_family_missing_its_estimator(tmp_path):
    data = base()
    del data["families"]["random_forest"]["estimator"]
    assert_problem(problems(tmp_path, data), "families.random_forest.estimator", "required key is missing")


@pytest.mark.parametrize("families", [None, {}])
def test_no_families(tmp_path, families):
    data = base()
    data["families"] = families
    assert_problem(problems(tmp_path, data), "families", "no families")


def test_families_key_missing(tmp_path):
    data = base()
    del data["families"]
    assert_problem(problems(tmp_path, data), "families", "required key is missing")


def test_family_names_are_plain(tmp_path):
    data = base()
    data["families"]["random forest!"] = data["families"].pop("random_forest")
    assert_problem(problems(tmp_path, data), 'families["random forest!"]', "may use only ASCII letters")


def test_grid_larger_than_max_experiments(tmp_path):
    data = base()
    data["max_experiments"] = 4
    assert_problem(problems(tmp_path, data), "families", "the grid has 5 experiments",
                   "logistic_regression 2, random_forest 3", "more than max_experiments (4)")


@pytest.mark.timeout(60)  # checking every value (duplicates pairwise) would take hours: fail fast
def test_a_huge_value_list_meets_the_cap_before_its_values_are_checked(tmp_path):
    path = write(tmp_path, with_flow_list(base(), "random_forest", "n_estimators", [0] * 100_000))
    assert path.stat().st_size < MAX_GRID_FILE_BYTES
    with pytest.raises(GridError) as info:
        load_grid(path)
    # Only the cap: no value was checked (each 0 would be "must be >= 1" or a duplicate).
    (found,) = info.value.problems
    assert ": families: the grid has 300002 experiments (logistic_regression 2, random_forest 300000), " \
           "more than max_experiments (50)" in found


def test_a_huge_cartesian_product_is_counted_not_expanded(tmp_path):
    data = base()
    del data["max_experiments"]  # the default cap, 200
    names = ["n_estimators", "max_depth", "min_samples_split", "min_samples_leaf", "max_leaf_nodes",
             "max_features", "min_impurity_decrease", "ccp_alpha", "max_samples", "min_weight_fraction_leaf"]
    data["families"]["random_forest"]["params"] = {name: list(range(2, 102)) for name in names}
    (found,) = problems(tmp_path, data)  # 100**10 points: expanding them would never end
    assert_problem([found], "families", f"the grid has {100 ** 10 + 2} experiments",
                   f"random_forest {100 ** 10}", "more than max_experiments (200)")


def test_the_cap_leaves_other_problems_reported(tmp_path):
    data = base()
    data["max_experiments"] = 4
    data["cv"]["folds"] = 1
    found = problems(tmp_path, data)
    assert len(found) == 2
    assert_problem(found, "cv.folds")
    assert_problem(found, "families", "more than max_experiments (4)")


def test_the_same_experiment_in_two_families(tmp_path):
    data = base()
    data["families"]["lr_again"] = {"estimator": "LogisticRegression", "params": {"C": [1.0], "max_iter": [500]}}
    assert_problem(problems(tmp_path, data), "families.lr_again", "repeats an experiment of family 'logistic_regression'")


@pytest.mark.parametrize("key, value", [("cpu", 0), ("cpu", -1), ("memory_gb", 0), ("memory_gb", -2.5)])
def test_non_positive_resources(tmp_path, key, value):
    data = base()
    data["families"]["random_forest"]["resources"][key] = value
    assert_problem(problems(tmp_path, data), f"families.random_forest.resources.{key}", "greater than 0",
                   f"(got {value})")


# ------------------------------------------------------------------------------------------
# CV, metrics, economics, data, caps


@pytest.mark.parametrize("folds, expected", [
    ("5", "valid integer"), (5.0, "valid integer"), (True, "valid integer"),
    (1, "greater than or equal to 2"), (21, "less than or equal to 20"),
])
def test_bad_cv_folds(tmp_path, folds, expected):
    data = base()
    data["cv"]["folds"] = folds
    assert_problem(problems(tmp_path, data), "cv.folds", expected)


def test_bad_cv_random_state(tmp_path):
    data = base()
    data["cv"]["random_state"] = -3
    assert_problem(problems(tmp_path, data), "cv.random_state", "greater than or equal to 0")


def test_unknown_metric(tmp_path):
    data = base()
    data["metrics"] = ["roc_auc", "f1"]
    assert_problem(problems(tmp_path, data), "metrics[1]", "'f1' is not a valid metric", "Valid options are")


def test_duplicate_metric(tmp_path):
    data = base()
    data["metrics"] = ["roc_auc", "log_loss", "roc_auc"]
    assert_problem(problems(tmp_path, data), "metrics[2]", "duplicate metric 'roc_auc'")


def test_empty_metrics(tmp_path):
    data = base()
    data["metrics"] = []
    assert_problem(problems(tmp_path, data), "metrics", "at least 1 item")


def test_ranking_metric_must_be_among_metrics(tmp_path):
    data = base()
    data["ranking_metric"] = "average_precision"
    assert_problem(problems(tmp_path, data), "ranking_metric", "'average_precision' is not among metrics")


def test_accuracy_cannot_rank(tmp_path):
    data = base()
    data["metrics"].append("accuracy")
    data["ranking_metric"] = "accuracy"
    assert_problem(problems(tmp_path, data), "ranking_metric", "accuracy cannot rank", "85%")


def test_missing_offer_cost(tmp_path):
    data = base()
    del data["economics"]["offer_costs"]["No Offer"]
    assert_problem(problems(tmp_path, data), "economics.offer_costs", "missing a cost for 'No Offer'")


def test_extra_offer(tmp_path):
    data = base()
    data["economics"]["offer_costs"]["Discout"] = 1.0
    assert_problem(problems(tmp_path, data), "economics.offer_costs.Discout", "unknown offer 'Discout'",
                   "Did you mean 'Discount'?")


@pytest.mark.parametrize("key, path, value, expected", [
    ("offer_costs.Discount", ("offer_costs", "Discount"), -1.0, "greater than or equal to 0"),
    ('offer_costs["Buy One Get One"]', ("offer_costs", "Buy One Get One"), -0.5, "greater than or equal to 0"),
    ("conversion_value", ("conversion_value",), -100, "greater than 0"),
    ("conversion_value", ("conversion_value",), 0, "greater than 0"),
])
def test_negative_economics(tmp_path, key, path, value, expected):
    data = base()
    target = data["economics"]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert_problem(problems(tmp_path, data), f"economics.{key}", expected, f"(got {value})")


def test_economics_is_required(tmp_path):
    data = base()
    del data["economics"]
    assert_problem(problems(tmp_path, data), "economics", "required key is missing")


@pytest.mark.parametrize("key", ["max_parallel", "max_experiments"])
def test_caps_must_be_positive_integers(tmp_path, key):
    data = base()
    data[key] = 0
    assert_problem(problems(tmp_path, data), key, "greater than or equal to 1")


@pytest.mark.parametrize("table", ["x; drop table y", "1abc", "a.b.c", ""])
def test_table_name_is_a_plain_identifier(tmp_path, table):
    data = base()
    data["data"]["table"] = table
    assert_problem(problems(tmp_path, data), "data.table", "must be a table name")


@pytest.mark.parametrize("table", ["x; drop table y", "1abc", "a.b.c", ""])
def test_interactions_table_name_is_a_plain_identifier(tmp_path, table):
    data = base()
    data["data"]["interactions_table"] = table
    assert_problem(problems(tmp_path, data), "data.interactions_table", "must be a table name")


def test_interactions_table_defaults_to_the_closed_loops_and_differs_from_the_history(tmp_path):
    from factory_tasks.warehouse.loop_tables import CUSTOMER_INTERACTIONS

    assert load_grid(write(tmp_path, base())).data.interactions_table == CUSTOMER_INTERACTIONS
    data = base()
    data["data"]["interactions_table"] = data["data"]["table"].upper()
    assert_problem(problems(tmp_path, data), "data", "interactions_table must differ from table")


# ------------------------------------------------------------------------------------------
# Expansion


@pytest.fixture
def config(tmp_path) -> GridConfig:
    return load_grid(write(tmp_path, base()))


def ids(specs: list[ExperimentSpec]) -> list[str]:
    return [s.experiment_id for s in specs]


def test_one_spec_per_grid_point_with_the_documented_fields(config):
    specs = expand_grid(config, SNAPSHOT)
    assert len(specs) == 5 and len(set(ids(specs))) == 5
    doc = specs[0].model_dump(mode="json")
    assert set(doc) == SPEC_FIELDS
    assert doc["data_snapshot"] == SNAPSHOT
    assert doc["cv_folds"] == 3 and doc["random_state"] == 7
    assert doc["resources"] == {"cpu": 2.0, "memory_gb": 4.0}
    assert doc["economics"] == {"conversion_value": 100.0,
                                "offer_costs": {"Buy One Get One": 4.0, "Discount": 8.0, "No Offer": 0.0}}
    for spec in specs:
        assert len(spec.experiment_id) == 16 and int(spec.experiment_id, 16) >= 0
        round_trip = ExperimentSpec.model_validate_json(json.dumps(spec.model_dump(mode="json")))
        assert round_trip == spec


def test_experiment_id_recipe(config):
    """The id is sha256 over the canonical JSON of the documented fields (docs/architecture.md)."""
    spec = expand_grid(config, SNAPSHOT)[0]
    payload = {
        "estimator": spec.estimator,
        "params": spec.params,
        "cv_folds": spec.cv_folds,
        "metrics": sorted(spec.metrics),
        "random_state": spec.random_state,
        "economics": spec.economics.model_dump(mode="json"),
        "data_snapshot_hash": SNAPSHOT["hash"],
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert spec.experiment_id == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_same_grid_and_data_give_the_same_ids(tmp_path, config):
    # reformatted file: other key order, flow style, comments -> same experiments
    data = base()
    reordered = {k: data[k] for k in reversed(list(data))}
    text = "# a comment\n" + yaml.safe_dump(reordered, default_flow_style=True)
    again = load_grid(write(tmp_path, text, "other.yaml"))
    assert ids(expand_grid(again, SNAPSHOT)) == ids(expand_grid(config, SNAPSHOT))
    assert grid_hash(again) == grid_hash(config)


def test_ids_do_not_depend_on_the_snapshot_path_or_metric_order(tmp_path, config):
    moved = {**SNAPSHOT, "path": "elsewhere/x.parquet"}
    assert ids(expand_grid(config, moved)) == ids(expand_grid(config, SNAPSHOT))
    data = base()
    data["metrics"] = list(reversed(data["metrics"]))
    assert ids(expand_grid(load_grid(write(tmp_path, data)), SNAPSHOT)) == ids(expand_grid(config, SNAPSHOT))


def test_new_data_changes_every_id(config):
    before = set(ids(expand_grid(config, SNAPSHOT)))
    after = set(ids(expand_grid(config, {**SNAPSHOT, "hash": "cd" * 32})))
    assert not before & after


def test_changing_a_value_changes_only_the_affected_ids(tmp_path, config):
    data = base()
    data["families"]["random_forest"]["params"]["max_depth"] = [4, 8, 12]  # None -> 12
    before, after = set(ids(expand_grid(config, SNAPSHOT))), set(ids(expand_grid(load_grid(write(tmp_path, data)), SNAPSHOT)))
    assert len(before - after) == 1 and len(after - before) == 1


@pytest.mark.parametrize("change", [
    lambda d: d["cv"].update(folds=4),
    lambda d: d["cv"].update(random_state=8),
    lambda d: d["economics"]["offer_costs"].update(Discount=7.5),
    lambda d: d["metrics"].append("brier_score"),
    lambda d: d["families"]["random_forest"].update(estimator="GradientBoostingClassifier",
                                                     params={"n_estimators": [50], "max_depth": [4, 8, None]}),
])
def test_every_input_of_the_id_changes_it(tmp_path, config, change):
    data = base()
    change(data)
    changed = load_grid(write(tmp_path, data))
    before = ids(expand_grid(config, SNAPSHOT))
    after = ids(expand_grid(changed, SNAPSHOT))
    assert set(before) != set(after)
    assert grid_hash(changed) != grid_hash(config)


def test_heaviest_families_come_first(tmp_path):
    data = base()
    data["families"] = {
        "a_lr": {"estimator": "LogisticRegression", "resources": {"cpu": 1, "memory_gb": 1}, "params": {"C": [1.0]}},
        "b_gb": {"estimator": "GradientBoostingClassifier", "resources": {"cpu": 1, "memory_gb": 2},
                 "params": {"n_estimators": [20]}},
        "c_hgb": {"estimator": "HistGradientBoostingClassifier", "resources": {"cpu": 2, "memory_gb": 2},
                  "params": {"max_iter": [20]}},
        "d_rf": {"estimator": "RandomForestClassifier", "resources": {"cpu": 2, "memory_gb": 4},
                 "params": {"n_estimators": [20]}},
    }
    specs = expand_grid(load_grid(write(tmp_path, data)), SNAPSHOT)
    # 2 cpu before 1 cpu; within equal cpu, the costlier estimator first
    assert [s.family for s in specs] == ["d_rf", "c_hgb", "b_gb", "a_lr"]


def test_points_within_a_family_follow_the_file(config):
    rf = [s.params for s in expand_grid(config, SNAPSHOT) if s.family == "random_forest"]
    assert rf == [{"n_estimators": 50, "max_depth": d} for d in (4, 8, None)]
    assert list(rf[0]) == ["n_estimators", "max_depth"]


def test_expansion_is_deterministic(config):
    assert [s.model_dump() for s in expand_grid(config, SNAPSHOT)] == [s.model_dump() for s in expand_grid(config, SNAPSHOT)]


def test_shipped_grid_expands(tmp_path):
    config = load_grid(SHIPPED)
    specs = expand_grid(config, SNAPSHOT)
    assert len(specs) == config.size
    assert len(set(ids(specs))) == len(specs)
    cpus = [s.resources.cpu for s in specs]
    assert cpus == sorted(cpus, reverse=True)


def test_snapshot_must_have_path_and_hash(config):
    with pytest.raises(ValueError):
        expand_grid(config, {"path": "x.parquet"})


# ------------------------------------------------------------------------------------------
# Command line (a real subprocess)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    python = REPO / ".venv" / "bin" / "python"
    return subprocess.run(
        [str(python if python.exists() else sys.executable), "-m", "factory_tasks.training.grid", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_cli_validate_shipped_grid():
    result = run_cli("validate", "config/grid.yaml")
    assert result.returncode == 0, result.stderr
    config = load_grid(SHIPPED)
    for name in config.families:
        assert name in result.stdout
    assert f"total {config.size} experiments" in result.stdout
    assert f"at most {config.max_parallel} in flight at once" in result.stdout


def test_cli_validate_reports_every_problem_and_exits_2(tmp_path):
    data = base()
    data["max_paralel"] = 3
    data["families"]["random_forest"]["params"]["max_depth"] = [4, -1]
    path = write(tmp_path, data)
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "2 problems" in result.stderr
    assert f"{path}:" in result.stderr
    assert "max_paralel: unknown key" in result.stderr
    assert "families.random_forest.params.max_depth[1]" in result.stderr


def test_cli_main_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_cli_expand_prints_specs_as_json_lines():
    result = run_cli("expand", "config/grid.yaml")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    config = load_grid(SHIPPED)
    assert len(lines) == config.size
    assert all(set(line) == SPEC_FIELDS for line in lines)


# ------------------------------------------------------------------------------------------
# A file that is not a grid is never quoted back


@pytest.mark.parametrize("text", [
    '{"alice": "pbkdf2_sha256$600000$c2FsdA$c2VjcmV0aGFzaA"}\n',  # like var/secrets/dashboard_users.json
    "root:$6$c2FsdA$c2VjcmV0aGFzaA:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # /etc/shadow
    "'root:$6$c2FsdA$c2VjcmV0aGFzaA:19000:0:99999:7:::': x\n",  # a mapping of such lines
    "- c2VjcmV0aGFzaA\n- pbkdf2_sha256\n",
])
def test_a_file_that_is_not_a_grid_is_reported_without_its_content(tmp_path, text):
    (found,) = problems(tmp_path, text)
    found = found.replace(str(tmp_path), "<tmp>")
    assert "not a grid file" in found
    for secret in ("c2VjcmV0aGFzaA", "alice", "root", "daemon", "pbkdf2"):
        assert secret not in found, found


def test_an_unknown_key_is_quoted_short_and_sanitized(tmp_path):
    data = base()
    data["max_paralel" + "x" * 200 + "\x1b[31m"] = 3
    (found,) = problems(tmp_path, data)
    assert "unknown key" in found and "max_paralel" in found
    assert "x" * 50 not in found and "\x1b" not in found


def test_max_parallel_has_an_upper_bound(tmp_path):
    data = base()
    data["max_parallel"] = 100000000000000000000
    assert_problem(problems(tmp_path, data), "max_parallel", "less than or equal to")
