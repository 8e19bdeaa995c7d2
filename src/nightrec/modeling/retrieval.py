"""Retrieved scoring for large catalogs: each user's exact blend at a shortlist of a few hundred
catalog positions instead of at every item.

A block's shortlist is the union, per user, of the approximate top-`depth` of the user's ALS
factors over the item factors (an HNSW index built once per night on the driver and broadcast with
the bundle), each other component's own best columns (the item-item model's head, the neighbours'
co-occurring items, the most popular items) and the trending list. The blend at those positions is
exact: every component is standardised by its mean and spread over the whole catalog (ALS's from
its factors, the others' from their non-zero scores), so an item on the shortlist gets the score
exact scoring gives it, and the rules (seen, unavailable, category cap) apply as they do there. An
item no source names is lost: bench/retrieval.py measures how much that costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from numba import njit

from nightrec.modeling.moments import row_moments, spread

MODES = ("auto", "exact", "retrieved")


class View(Protocol):
    """A component's scores for one block of users, read at chosen catalog positions."""

    mean: np.ndarray   # per user, over the whole catalog
    std: np.ndarray

    def at(self, positions: np.ndarray) -> np.ndarray:
        """(users, width) float32 scores at (users, width) positions (-1: padding, any value)."""

    def best(self, depth: int, history: sp.csr_matrix) -> np.ndarray | None:
        """(users, depth) positions of its best unseen scores (-1 padded; history: CSR, indices
        sorted), or None when it names none of its own (ALS: the index does)."""


@dataclass
class FactorView:
    """ALS: the users' folded-in factors against the item factors. The index names its candidates."""

    factors: np.ndarray             # (users, rank) float32
    items: np.ndarray               # (catalog, rank) float32
    mean: np.ndarray
    std: np.ndarray

    def at(self, positions: np.ndarray) -> np.ndarray:
        return factor_scores_at(self.factors, self.items, positions)

    def best(self, depth: int, history: sp.csr_matrix) -> None:
        return None


@dataclass
class ColumnsView:
    """Dense scores at some catalog positions (`columns`; None: all of them), zero elsewhere: the
    item-item model's head, or any component's full scores."""

    scores: np.ndarray              # (users, columns) float32
    columns: np.ndarray | None
    slot: np.ndarray | None         # catalog position -> column, -1 when not covered (None: identity)
    n_items: int                    # the catalog's: the moments are over all of it
    mean: np.ndarray = field(init=False)
    std: np.ndarray = field(init=False)

    def __post_init__(self):
        self.mean, self.std = row_moments(self.scores, self.n_items)

    def at(self, positions: np.ndarray) -> np.ndarray:
        return _dense_at(self.scores, positions, self.slot if self.slot is not None else np.empty(0, np.int32))

    def best(self, depth: int, history: sp.csr_matrix) -> np.ndarray:
        scores = self.scores.copy()
        rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
        slots = history.indices if self.slot is None else self.slot[history.indices]
        scores[rows[slots >= 0], slots[slots >= 0]] = -np.inf
        depth = min(depth, scores.shape[1])
        if depth == 0:
            return np.empty((len(scores), 0), dtype=np.int32)
        found = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        found = np.where(np.isfinite(np.take_along_axis(scores, found, axis=1)), found, -1)
        return found if self.columns is None else np.where(found >= 0, self.columns[found], -1)


@dataclass
class SparseView:
    """Scores that are zero but at a few positions per user (CSR, indices sorted): the neighbours'."""

    scores: sp.csr_matrix
    mean: np.ndarray = field(init=False)
    std: np.ndarray = field(init=False)

    def __post_init__(self):
        self.scores.sort_indices()
        n, scores = max(self.scores.shape[1], 1), self.scores.astype(np.float64)  # as row_moments sums
        self.mean = np.asarray(scores.sum(axis=1)).ravel() / n
        self.std = spread(self.mean, np.asarray(scores.multiply(scores).sum(axis=1)).ravel() / n)

    def at(self, positions: np.ndarray) -> np.ndarray:
        s = self.scores
        return _sparse_at(s.indptr, s.indices, s.data.astype(np.float32, copy=False), positions)

    def best(self, depth: int, history: sp.csr_matrix) -> np.ndarray:
        s = self.scores
        return _sparse_best(s.indptr, s.indices, s.data.astype(np.float32, copy=False), history.indptr,
                            history.indices, depth)


class ItemScoresView:
    """The same score of each item for every user (popularity): its moments once per catalog."""

    def __init__(self, item_scores: np.ndarray, top: np.ndarray, mean: float, std: float, users: int):
        self.item_scores, self.top = item_scores, top
        self.mean, self.std = np.full(users, mean), np.full(users, std)

    def at(self, positions: np.ndarray) -> np.ndarray:
        return np.where(positions >= 0, self.item_scores[np.maximum(positions, 0)], np.float32(0.0))

    def best(self, depth: int, history: sp.csr_matrix) -> np.ndarray:
        return _first_unseen(self.top, history.indptr, history.indices, depth)


@dataclass
class Retrieval:
    """How a bundle scores users at shortlists: the index over its ALS item factors (None without
    ALS), the trending list's catalog positions, and how many candidates each source names."""

    index: object | None            # nightrec.modeling.ann.ItemIndex
    trending: np.ndarray            # catalog positions, best first
    depth: int

    def width(self, sources: int) -> int:
        """The widest shortlist: trending, the index (up to twice depth, for users with long
        histories) and each other source, `depth` each."""
        return (sources + 2) * self.depth

    def shortlist(self, views: dict[str, View], history: sp.csr_matrix) -> np.ndarray:
        """(users, width) catalog positions, ascending per row, -1 padded at the end."""
        trending = self.trending[:self.depth].astype(np.int32)
        parts = [np.broadcast_to(trending, (history.shape[0], len(trending)))]
        for view in views.values():
            if isinstance(view, FactorView) and self.index is not None:
                # a user's consumed items take places among the index's answers: ask for that many more
                seen = int(np.diff(history.indptr).max(initial=0))
                parts.append(self.index.search(view.factors, self.depth + min(seen, self.depth)))
            else:
                best = view.best(self.depth, history)
                if best is not None:
                    parts.append(best)
        return union_rows(np.concatenate([np.asarray(p, dtype=np.int32) for p in parts], axis=1))


def use_retrieval(mode: str, catalog_items: int, min_items: int) -> bool:
    if mode not in MODES:
        raise ValueError(f"model.retrieval is {mode!r}; use one of {MODES}")
    return mode == "retrieved" or (mode == "auto" and catalog_items >= min_items)


@njit(nogil=True, cache=True)
def union_rows(candidates):
    """Each row's distinct non-negative positions, ascending, -1 padded to the widest row."""
    n_rows, n_cols = candidates.shape
    out = np.full((n_rows, n_cols), -1, dtype=np.int32)
    width = 0
    for r in range(n_rows):
        row = np.sort(candidates[r])
        n, last = 0, -1
        for value in row:
            if value >= 0 and value != last:
                out[r, n] = value
                n += 1
                last = value
        width = max(width, n)
    return out[:, :width].copy()


@njit(nogil=True, cache=True)
def factor_scores_at(users, items, positions):
    """users[r] · items[positions[r, w]]; 0 at padding."""
    n_rows, width = positions.shape
    rank = users.shape[1]
    out = np.zeros((n_rows, width), dtype=np.float32)
    for r in range(n_rows):
        for w in range(width):
            p = positions[r, w]
            if p >= 0:
                total = np.float32(0.0)
                for j in range(rank):
                    total += users[r, j] * items[p, j]
                out[r, w] = total
    return out


@njit(nogil=True, cache=True)
def mask_at(scores, positions, indptr, indices, unavailable):
    """-inf where a position is padding, consumed by the row's user (indices sorted per row), or
    unavailable (bool per catalog position; empty: none)."""
    n_rows, width = positions.shape
    for r in range(n_rows):
        i, end = indptr[r], indptr[r + 1]
        for w in range(width):
            p = positions[r, w]
            if p < 0:
                scores[r, w] = -np.inf
                continue
            while i < end and indices[i] < p:
                i += 1
            if (i < end and indices[i] == p) or (len(unavailable) and unavailable[p]):
                scores[r, w] = -np.inf


@njit(nogil=True, cache=True)
def _dense_at(scores, positions, slot):
    n_rows, width = positions.shape
    out = np.zeros((n_rows, width), dtype=np.float32)
    for r in range(n_rows):
        for w in range(width):
            p = positions[r, w]
            if p >= 0:
                column = slot[p] if len(slot) else p
                if column >= 0:
                    out[r, w] = scores[r, column]
    return out


@njit(nogil=True, cache=True)
def _sparse_at(indptr, indices, data, positions):
    """Both sides sorted per row: one merge per row."""
    n_rows, width = positions.shape
    out = np.zeros((n_rows, width), dtype=np.float32)
    for r in range(n_rows):
        i, end = indptr[r], indptr[r + 1]
        for w in range(width):
            p = positions[r, w]
            if p < 0:
                continue
            while i < end and indices[i] < p:
                i += 1
            if i < end and indices[i] == p:
                out[r, w] = data[i]
    return out


@njit(nogil=True, cache=True)
def _first_unseen(top, indptr, indices, depth):
    """Per row, the first `depth` of `top` (positions, best first) the row's user has not taken."""
    out = np.full((len(indptr) - 1, depth), -1, dtype=np.int32)
    for r in range(len(indptr) - 1):
        seen = indices[indptr[r]:indptr[r + 1]]
        n = 0
        for p in top:
            if n == depth:
                break
            i = np.searchsorted(seen, p)
            if i < len(seen) and seen[i] == p:
                continue
            out[r, n] = p
            n += 1
    return out


@njit(nogil=True, cache=True)
def _sparse_best(indptr, indices, data, seen_indptr, seen_indices, depth):
    out = np.full((len(indptr) - 1, depth), -1, dtype=np.int32)
    for r in range(len(indptr) - 1):
        start, end = indptr[r], indptr[r + 1]
        values = data[start:end].copy()
        s, s_end = seen_indptr[r], seen_indptr[r + 1]
        for i in range(start, end):
            while s < s_end and seen_indices[s] < indices[i]:
                s += 1
            if s < s_end and seen_indices[s] == indices[i]:
                values[i - start] = -np.inf
        order = np.argsort(-values)
        n = 0
        for j in order[:depth]:
            if np.isfinite(values[j]):
                out[r, n] = indices[start + j]
                n += 1
    return out
