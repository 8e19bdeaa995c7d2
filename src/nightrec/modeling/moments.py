"""Per-user moments of score rows: what the blend standardises each component by."""

from __future__ import annotations

import numpy as np
from numba import njit


def standardize(scores: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Per-row z-score times weight, in place on a float32 array, in one read and one write of it
    (a component's fresh scores: at a 100k catalog a pass costs as much as the ALS matmul); a
    constant row becomes zeros."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    mean, std = row_moments(scores, scores.shape[1])
    _center_and_scale(scores, mean.astype(np.float32), (weight / std).astype(np.float32))
    return scores


def row_moments(scores: np.ndarray, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean and standard deviation over n_columns, the columns beyond the array's being
    zeros; a standard deviation of 0 is reported as 1 (a constant row stays constant)."""
    sums, squares = _sums(np.ascontiguousarray(scores, dtype=np.float32))
    mean = sums / max(n_columns, 1)
    return mean, spread(mean, squares / max(n_columns, 1))


def spread(mean: np.ndarray, mean_square: np.ndarray) -> np.ndarray:
    """Standard deviations from means and mean squares; one at float32 rounding of the mean (a
    constant row) is reported as 1, so the row stays constant when divided by it."""
    std = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    return np.where(std > 1e-6 * np.maximum(np.abs(mean), 1e-30), std, 1.0)


@njit(nogil=True, cache=True)
def _sums(scores):
    """Each row's sum and sum of squares, in float64: one read of the array."""
    n_rows, n_columns = scores.shape
    sums, squares = np.zeros(n_rows), np.zeros(n_rows)
    for r in range(n_rows):
        total, total_sq = 0.0, 0.0
        for j in range(n_columns):
            v = np.float64(scores[r, j])
            total += v
            total_sq += v * v
        sums[r], squares[r] = total, total_sq
    return sums, squares


@njit(nogil=True, cache=True)
def _center_and_scale(scores, mean, scale):
    for r in range(scores.shape[0]):
        m, c = mean[r], scale[r]
        for j in range(scores.shape[1]):
            scores[r, j] = (scores[r, j] - m) * c
