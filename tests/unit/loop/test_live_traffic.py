"""The champion's matured traffic read back from a real SQLite warehouse, then judged in shadow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_tasks.core.schema import CUSTOMER_COLUMNS, DEFAULT_ECONOMICS, OFFERS
from factory_tasks.loop.live_traffic import TRAFFIC_COLUMNS, matured_traffic
from factory_tasks.loop.shadow import shadow_difference
from factory_tasks.loop.simulator import conversion_log_odds, optimal_offers, true_policy_value
from factory_tasks.loop.windows import iso
from tests.monitoring_window import HOUR_MS, T0_MS, SqliteHook, record_feed, simulate_window, write_window

W = 150  # minutes: the response window
SHORT = dict(window_minutes=W, delay_median_minutes=20, delay_sigma=0.5)  # (almost) no conversion expires


@pytest.fixture(scope="module")
def windows():
    """v1 serving 00:00-02:00 (a noisy model), v2 from 02:00; responses as delivered."""
    return [simulate_window(T0_MS, 3_000, seed=1, score_noise=0.8, **SHORT),
            simulate_window(T0_MS + HOUR_MS, 3_000, seed=2, score_noise=0.8, **SHORT),
            simulate_window(T0_MS + 2 * HOUR_MS, 2_000, seed=3, model_version="v2", **SHORT)]


def warehouse(tmp_path, windows, feed_through_ms=T0_MS + 8 * HOUR_MS, name="warehouse.db"):
    hook = SqliteHook(tmp_path / name)
    for w in windows:
        write_window(hook, w)
    if feed_through_ms is not None:
        record_feed(hook, feed_through_ms)
    return hook


def expected(windows, version, labels_as_of_ms, since_ms=0):
    """The predictions matured as of ``labels_as_of_ms`` and their conversions, from the simulated rows."""
    p = pd.concat([w.predictions for w in windows])
    r = pd.concat([w.responses for w in windows])
    p = p[(p.model_version == version) & (p.decided_at_ms >= since_ms)
          & (p.decided_at_ms + W * 60_000 <= labels_as_of_ms)]
    attached = r[(r.status == "attached") & (r.responded_at_ms < labels_as_of_ms)]
    return p, int(p.prediction_uuid.isin(set(attached.prediction_uuid)).sum())


def test_only_the_versions_matured_decisions_with_their_labels(tmp_path, windows):
    hook = warehouse(tmp_path, windows)
    now = T0_MS + 3 * HOUR_MS + 30 * 60_000  # 03:30: decisions up to 01:00 have matured
    traffic = matured_traffic(hook, "v1", now=iso(now), response_window_minutes=W)
    want, conversions = expected(windows, "v1", now)
    assert list(traffic.columns) == list(TRAFFIC_COLUMNS)
    assert len(traffic) == len(want) and 0 < len(traffic) < 6_000
    assert (traffic.model_version == "v1").all() and (traffic.decided_at_ms + W * 60_000 <= now).all()
    assert int(traffic.conversion.sum()) == conversions > 0
    assert traffic.decided_at_ms.is_monotonic_increasing
    assert sorted(traffic.propensity) == sorted(want.propensity)
    # each decision named as the training snapshot's interaction rows name it
    assert traffic.prediction_uuid.is_unique and set(traffic.prediction_uuid) == set(want.prediction_uuid)
    row = want.set_index("prediction_uuid").loc[traffic.prediction_uuid.iloc[7]]
    assert (traffic.decided_at_ms.iloc[7], traffic.offer.iloc[7]) == (row.decided_at_ms, row.offer)
    assert set(traffic.offer) <= set(OFFERS) and set(traffic.model_offer) <= set(OFFERS)
    assert traffic.recency.dtype == np.int64 and traffic.history.dtype == np.float64
    # the other version's decisions only when asked for
    v2 = matured_traffic(hook, "v2", now=T0_MS + 8 * HOUR_MS, response_window_minutes=W)
    assert len(v2) == 2_000 and (v2.model_version == "v2").all()
    assert len(matured_traffic(hook, "v3", now=now, response_window_minutes=W)) == 0


def test_since_and_the_response_feed_bound_the_traffic(tmp_path, windows):
    since = T0_MS + HOUR_MS
    late = warehouse(tmp_path, windows, feed_through_ms=T0_MS + 4 * HOUR_MS)  # responses through 04:00 only
    traffic = matured_traffic(late, "v1", now=T0_MS + 8 * HOUR_MS, since=since, response_window_minutes=W)
    want, conversions = expected(windows, "v1", T0_MS + 4 * HOUR_MS, since)
    assert (traffic.decided_at_ms >= since).all() and len(traffic) == len(want) > 0
    assert int(traffic.conversion.sum()) == conversions  # no missing response read as a non-conversion


def test_nothing_matured_is_an_empty_frame(tmp_path, windows):
    assert len(matured_traffic(SqliteHook(tmp_path / "none.db"), "v1", now=T0_MS, response_window_minutes=W)) == 0
    no_feed = warehouse(tmp_path, windows, feed_through_ms=None)
    empty = matured_traffic(no_feed, "v1", now=T0_MS + 8 * HOUR_MS, response_window_minutes=W)
    assert len(empty) == 0 and list(empty.columns) == list(TRAFFIC_COLUMNS)
    assert empty.recency.dtype == np.int64 and empty.conversion.dtype == np.int64
    hook = warehouse(tmp_path, windows, name="fed.db")
    early = matured_traffic(hook, "v1", now=T0_MS + 2 * HOUR_MS, response_window_minutes=W)  # 00:00 + 150 min > 02:00
    assert len(early) == 0
    result = shadow_difference(object(), early, DEFAULT_ECONOMICS)
    assert result.n_rows == 0 and result.difference is None


class Oracle:
    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-conversion_log_odds(X, X["offer"].to_numpy(dtype=object))))
        return np.column_stack([1 - p, p])


def test_the_warehouse_traffic_judges_a_challenger_in_shadow(tmp_path):
    # one busy day of v1 (scores with noise) at 20% exploration; the true oracle challenges it
    sims = [simulate_window(T0_MS + h * HOUR_MS, 5_000, seed=10 + h, score_noise=1.5, exploration=0.2, **SHORT)
            for h in range(6)]
    hook = warehouse(tmp_path, sims, feed_through_ms=T0_MS + 9 * HOUR_MS)
    traffic = matured_traffic(hook, "v1", now=T0_MS + 9 * HOUR_MS, response_window_minutes=W)
    assert len(traffic) == 30_000
    customers = traffic[list(CUSTOMER_COLUMNS)]
    truth = (true_policy_value(customers, optimal_offers(customers, DEFAULT_ECONOMICS), DEFAULT_ECONOMICS)
             - true_policy_value(customers, traffic.model_offer.to_numpy(dtype=object), DEFAULT_ECONOMICS))
    result = shadow_difference(Oracle(), traffic, DEFAULT_ECONOMICS)
    assert result.n_rows == 30_000 and result.low <= truth <= result.high, (truth, result)
    assert truth > 0 and result.difference > 0, (truth, result)
