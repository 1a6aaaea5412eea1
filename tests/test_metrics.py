"""Tests of mpiqe_hf.metrics against hand-computed values."""

import math
import warnings

import numpy as np
import pytest

from mpiqe_hf.metrics import compute_metrics, fit_logistic, krcc, logistic_4, plcc, rmse, srcc


PRED = [1.0, 2.0, 3.0, 4.0, 5.0]
TARGET = [2.0, 1.0, 4.0, 3.0, 5.0]


def test_hand_computed_values():
    # rank differences -1, 1, -1, 1, 0: SRCC = 1 - 6 * 4 / (5 * 24) = 0.8
    assert srcc(PRED, TARGET) == pytest.approx(0.8)
    # 10 pairs, 2 discordant ((1,2) and (3,4)): tau = (8 - 2) / 10
    assert krcc(PRED, TARGET) == pytest.approx(0.6)
    # both are 1..5: cov = 2 * 0.8 ... PLCC equals the SRCC here
    assert plcc(PRED, TARGET) == pytest.approx(0.8)
    assert rmse(PRED, TARGET) == pytest.approx(math.sqrt(4 / 5))
    assert srcc(PRED, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert plcc([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])


def test_logistic_plcc():
    x = np.linspace(-3, 3, 25)
    y = logistic_4(x, 5.0, 1.0, 0.5, 0.7)
    assert plcc(x, y) < 0.99
    assert plcc(x, y, logistic=True) == pytest.approx(1.0, abs=1e-6)
    assert fit_logistic(x, y)[:3] == pytest.approx([5.0, 1.0, 0.5], abs=1e-4)
    # the fit absorbs a decreasing relation too
    assert plcc(x, -y, logistic=True) == pytest.approx(1.0, abs=1e-6)


def test_compute_metrics_keys_and_values():
    out = compute_metrics(np.array(PRED), np.array(TARGET))
    assert set(out) == {"srcc", "plcc", "plcc_logistic", "krcc", "rmse"}
    assert out["srcc"] == pytest.approx(0.8) and out["krcc"] == pytest.approx(0.6)
    assert out["plcc_logistic"] >= out["plcc"] - 1e-9
    assert all(isinstance(v, float) for v in out.values())
    col = compute_metrics(np.array(PRED)[:, None], TARGET)  # (N, 1) column is accepted
    assert col["srcc"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "pred, target, match",
    [
        ([1, 2, 3], [1, 2], "Length mismatch"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, float("nan"), 3], [1, 2, 3], "NaN"),
        ([1, 2, 3], [1, float("inf"), 3], "NaN or infinite"),
        ([2, 2, 2], [1, 2, 3], "predictions are constant"),
        ([1, 2, 3], [4, 4, 4], "targets are constant"),
        ([[1, 2], [3, 4]], [1, 2, 3, 4], "one-dimensional"),
        (["a", "b", "c"], [1, 2, 3], "numeric"),
    ],
)
@pytest.mark.parametrize("metric", [srcc, krcc, plcc, rmse, compute_metrics])
def test_errors(metric, pred, target, match):
    with pytest.raises(ValueError, match=match):
        metric(pred, target)


def test_logistic_plcc_with_fewer_points_than_parameters_falls_back_to_raw():
    with pytest.warns(RuntimeWarning, match="Logistic fit failed"):
        value = plcc([0.1, 0.5, 0.2], [1.0, 3.0, 2.0], logistic=True)
    assert value == pytest.approx(plcc([0.1, 0.5, 0.2], [1.0, 3.0, 2.0]))


def test_a_near_flat_logistic_fit_says_nothing_of_its_unused_covariance():
    rng = np.random.default_rng(0)
    size = int(rng.integers(5, 60))
    predictions = np.round(rng.normal(size=size) * 10 ** rng.uniform(-4, 1), 1)  # a few distinct values
    targets = rng.normal(size=size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = plcc(predictions, targets, logistic=True)
    assert np.isfinite(value)
    assert not [w for w in caught if "overflow" in str(w.message)]
