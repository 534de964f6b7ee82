"""Confidence intervals over images, shared by the evaluation, ablation and sanity summaries.

One percentile bootstrap (``scipy.stats.bootstrap``, ``method="percentile"``) so that every
table in the workbench reports intervals computed the same way.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "mean_ci"]


def bootstrap_ci(
    samples: Sequence[np.ndarray] | np.ndarray,
    statistic: Callable[..., np.ndarray] | None = None,
    *,
    paired: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """``(estimate, ci_low, ci_high)``: a statistic and its percentile-bootstrap interval.

    ``samples``: one array (default statistic: the mean) or several of equal length,
    resampled together when ``paired`` (images measured under several conditions).
    ``statistic(*arrays, axis=-1)`` must be vectorised, as ``scipy.stats.bootstrap``
    wants. Fewer than 2 values give NaN bounds; constant data a zero-width interval.
    ``seed`` may be a Generator to draw several intervals from one stream.
    """
    from scipy.stats import bootstrap

    arrays = [np.asarray(samples, dtype=float)] if isinstance(samples, np.ndarray) else \
        [np.asarray(a, dtype=float) for a in samples]
    stat = statistic or (lambda *a, axis=-1: np.mean(a[0], axis=axis))
    n = arrays[0].shape[-1]
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    est = float(stat(*arrays, axis=-1))
    if n < 2:
        return est, float("nan"), float("nan")
    if all(np.all(a == a.flat[0]) for a in arrays):
        return est, est, est
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    res = bootstrap(tuple(arrays), stat, paired=paired and len(arrays) > 1, vectorized=True,
                    n_resamples=n_resamples, confidence_level=confidence, method="percentile", rng=rng)
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000,
            seed: int | np.random.Generator = 0) -> tuple[float, float, float, int]:
    """``(mean, ci_low, ci_high, n)`` over the finite entries of ``values``.

    Non-finite values (e.g. the Proportion of an all-zero map) are dropped and not counted.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return (*bootstrap_ci(v, confidence=confidence, n_resamples=n_resamples, seed=seed), int(v.size))
