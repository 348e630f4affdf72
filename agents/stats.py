"""Leaderboard statistics in plain numpy: bootstrap CIs and rliable's IQM.

* :func:`bootstrap_ci`: percentile bootstrap confidence interval of a mean.
* :func:`iqm`: interquartile mean, the mean of the middle 50% of the values (same trimming as
  ``scipy.stats.trim_mean(x, 0.25)``, which rliable uses).
* :func:`stratified_bootstrap_iqm`: IQM over a runs x tasks score matrix with a stratified
  bootstrap CI: each resample draws runs with replacement *within each task* (rliable's
  ``StratifiedBootstrap``), then takes the IQM of all resampled scores.

All resampling uses ``numpy.random.default_rng(seed)``: the same inputs give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "iqm", "stratified_bootstrap_iqm", "DEFAULT_RESAMPLES"]

#: Bootstrap resamples used by the leaderboard (rliable's default for its CIs is 2000).
DEFAULT_RESAMPLES = 2000


def _iqm_rows(a: np.ndarray) -> np.ndarray:
    """IQM of each row of a 2-D array."""
    n = a.shape[1]
    cut = int(0.25 * n)
    s = np.sort(a, axis=1)
    return s[:, cut: n - cut].mean(axis=1)


def iqm(x: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean (25% trimmed from each end, scipy's rounding)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        return float("nan")
    return float(_iqm_rows(a[None, :])[0])


def bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `x` (a single value gives a zero-width interval)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def stratified_bootstrap_iqm(
    scores_per_task: Sequence[Sequence[float]],
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(iqm, ci_low, ci_high)`` of all scores, runs resampled within each task.

    `scores_per_task` holds one sequence of run scores per task (tasks may differ in run count);
    NaN runs are dropped, empty tasks skipped. Returns NaNs when nothing is left.
    """
    tasks = [np.asarray(t, dtype=np.float64).ravel() for t in scores_per_task]
    tasks = [t[np.isfinite(t)] for t in tasks]
    tasks = [t for t in tasks if t.size]
    if not tasks:
        return (float("nan"), float("nan"), float("nan"))
    point = iqm(np.concatenate(tasks))
    rng = np.random.default_rng(seed)
    resampled = np.concatenate(
        [t[rng.integers(0, t.size, size=(resamples, t.size))] for t in tasks], axis=1
    )
    stats = _iqm_rows(resampled)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return (point, float(lo), float(hi))
