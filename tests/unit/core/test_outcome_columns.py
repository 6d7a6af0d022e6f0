"""Reading the per-fold scores of ``experiment_outcomes`` back."""

from __future__ import annotations

import json

import numpy as np

from factory_tasks.core.outcome_columns import folds_matrix


def _same(a: np.ndarray, b: list[list[float]]) -> bool:
    return np.array_equal(a, np.array(b, dtype=np.float64), equal_nan=True)


def test_folds_matrix_reads_the_json_lists_with_nan_for_what_is_missing():
    nan = np.nan
    values = [json.dumps([0.1, None, 0.3]), None, "", "[0.4, 0.5, 0.6]"]
    assert _same(folds_matrix(values), [[0.1, nan, 0.3], [nan] * 3, [nan] * 3, [0.4, 0.5, 0.6]])


def test_folds_matrix_survives_bad_rows_and_ragged_lists():
    nan = np.nan
    values = ["[0.1, 0.2, 0.3]", "not json", '["x", 0.5]', "[0.7]", "[Infinity, 1, 2]", '{"a": 1}']
    assert _same(folds_matrix(values), [[0.1, 0.2, 0.3], [nan] * 3, [nan, 0.5, nan], [0.7, nan, nan],
                                        [nan, 1, 2], [nan] * 3])
    assert folds_matrix([]).shape == (0, 0) and folds_matrix([None, None]).shape == (2, 0)
