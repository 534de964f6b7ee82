"""The shared percentile bootstrap."""
import numpy as np
import pytest

from fgcam_lib.evaluation.stats import bootstrap_ci, mean_ci


def test_interval_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 50), rng.normal(2.0, 1.0, 2000)
    m, lo, hi = bootstrap_ci(small)
    assert m == pytest.approx(small.mean()) and lo < m < hi
    _, lo2, hi2 = bootstrap_ci(large)
    assert lo2 < 2.0 < hi2
    # width shrinks like 1/sqrt(n): 3.92 sigma / sqrt(n) for a 95% interval
    assert hi2 - lo2 == pytest.approx(3.92 / np.sqrt(2000), rel=0.15)
    assert hi2 - lo2 < (hi - lo) / 4


def test_seed_and_generator():
    v = np.random.default_rng(0).normal(size=30)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci(v, seed=np.random.default_rng(3)) == bootstrap_ci(v, seed=3)


def test_paired_difference_of_a_constant_shift_has_zero_width():
    a = np.random.default_rng(0).normal(size=40)
    est, lo, hi = bootstrap_ci([a + 1.0, a], lambda x, y, axis=-1: np.mean(x - y, axis=axis))
    assert est == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_mean_ci_drops_non_finite_values():
    m, lo, hi, n = mean_ci(np.array([1.0, np.nan, 3.0, np.inf, 2.0]))
    assert n == 3 and m == pytest.approx(2.0) and 1.0 <= lo <= m <= hi <= 3.0
    assert mean_ci(np.array([np.nan]))[3] == 0 and np.isnan(mean_ci(np.array([np.nan]))[0])
    m, lo, hi, n = mean_ci(np.array([5.0]))
    assert (m, n) == (5.0, 1) and np.isnan(lo) and np.isnan(hi)
    assert mean_ci(np.full(4, 0.5))[:3] == (0.5, 0.5, 0.5)
