"""Implicit-feedback ALS (Spark MLlib): item factors learnt in Spark; users folded in when scored.

A fitted model keeps only the item side. A user's factors are the exact least-squares answer to
their history given the item factors: the same normal equations Spark's last half-iteration solves,
so folding in the training users reproduces Spark's user factors. Users are therefore scored on
their latest history (tonight's events included) without refitting, and no user's factors are
stored in a model artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame

from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.moments import spread
from nightrec.modeling.retrieval import FactorView
from nightrec.modeling.scoring import UserBlock
from nightrec.modeling.topk import factor_matrix

NAME = "als"
REQUIRED_PARAMS = ("rank", "reg_param", "alpha", "max_iter")

OUTER_PRODUCTS_PER_CHUNK = 1 << 21  # floats of per-interaction outer products held at once (16 MB)
FOLD_IN_FLOATS = 1 << 23             # floats of the users' (rank x rank) systems solved at once (64 MB)


@dataclass
class AlsComponent:
    kind: ClassVar[str] = "als"
    item_factors: np.ndarray          # (catalog items, rank); zero rows for items ALS never saw
    alpha: float                      # confidence per unit of strength, as fit
    reg_param: float                  # Spark's regParam (scaled by each user's number of items)
    _gram: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    _known: np.ndarray | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict:
        return {"rank": int(self.item_factors.shape[1]), "alpha": self.alpha, "reg_param": self.reg_param}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors}

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> AlsComponent:
        return cls(arrays["item_factors"], float(description["alpha"]), float(description["reg_param"]))

    def score(self, block: UserBlock) -> np.ndarray:
        return self.fold_in(block.history) @ self.item_factors.T

    def flop(self, block: UserBlock) -> float:
        """Fold-in (outer products, right-hand sides, one LU per user) and the scores' matmul."""
        users, n_items, rank = block.history.shape[0], len(self.item_factors), self.item_factors.shape[1]
        return 2.0 * block.history.nnz * rank * (rank + 1) + users * (2 / 3) * rank**3 + 2.0 * users * n_items * rank

    def scaled_scores(self, block: UserBlock, weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight/σ)·scores, μ and σ per user, with no pass over the scores: a user's scores x·yᵢ
        over the catalog have mean x·ȳ and mean square xᵀ(YᵀY/n)x."""
        users = self.fold_in(block.history)
        mean, std = self.moments(users)
        scaled = (users.astype(np.float64) * (weight / std)[:, None]).astype(np.float32)
        return scaled @ self.item_factors.T, mean, std

    def view(self, block: UserBlock) -> FactorView:
        """For scoring at a shortlist (nightrec.modeling.retrieval)."""
        users = self.fold_in(block.history)
        return FactorView(users, self.item_factors, *self.moments(users))

    def moments(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each user's mean and spread of x·yᵢ over the catalog, with no pass over the scores: mean
        x·ȳ, mean square xᵀ(YᵀY/n)x."""
        users = users.astype(np.float64)
        n = max(len(self.item_factors), 1)
        mean = users @ (self.gram_and_sum()[1] / n)
        return mean, spread(mean, np.einsum("ur,rs,us->u", users, self.gram() / n, users))

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """(users, rank) factors solving Spark's implicit normal equations for each history row:
        (YᵀY + Σ c·y yᵀ + λ·n I) x = Σ (1 + c)·y over the user's n items with strength > 0,
        c = alpha·strength. Items the fit never saw (zero factors) are left out, as Spark never
        saw them either; users without items get zeros. Users are solved in chunks that keep the
        (users, rank, rank) systems under FOLD_IN_FLOATS."""
        history = history.tocsr()
        history.sum_duplicates()
        known = self.known_items()
        if len(known) < history.shape[1]:
            history = _only_columns(history, known)
        rank = self.item_factors.shape[1]
        solved = np.zeros((history.shape[0], rank), dtype=np.float32)
        per_chunk = max(1, FOLD_IN_FLOATS // (rank * rank))
        for start in range(0, history.shape[0], per_chunk):
            solved[start:start + per_chunk] = self._solve(history[start:start + per_chunk])
        return solved

    def _solve(self, history: sp.csr_matrix) -> np.ndarray:
        rank = self.item_factors.shape[1]
        confidence = self.alpha * np.abs(history.data.astype(np.float64))
        positive = history.data > 0
        owners = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
        n_items = np.bincount(owners[positive], minlength=history.shape[0])
        y = self.item_factors[history.indices].astype(np.float64)
        b = sp.csr_matrix((np.where(positive, 1.0 + confidence, 0.0), np.arange(history.nnz), history.indptr),
                          shape=(history.shape[0], history.nnz)) @ y
        a = np.empty((history.shape[0], rank, rank))
        a[:] = self.gram()
        a[:, np.arange(rank), np.arange(rank)] += (self.reg_param * n_items)[:, None]
        _add_weighted_outer_products(a, history.indptr, y, confidence)
        solved = np.zeros((history.shape[0], rank), dtype=np.float32)
        users = n_items > 0
        if users.any():
            solved[users] = np.linalg.solve(a[users], b[users][:, :, None])[:, :, 0]
        return solved

    def known_items(self) -> np.ndarray:
        """Catalog positions the fit saw (non-zero factors); cached, as every user block asks."""
        if self._known is None:
            self._known = np.flatnonzero(self.item_factors.any(axis=1))
        return self._known

    def gram(self) -> np.ndarray:
        return self.gram_and_sum()[0]

    def gram_and_sum(self) -> tuple[np.ndarray, np.ndarray]:
        """YᵀY and Σy over the catalog, in float64; cached, as every user block asks."""
        if self._gram is None:
            y = self.item_factors.astype(np.float64)
            self._gram = (y.T @ y, y.sum(axis=0))
        return self._gram


def _only_columns(matrix: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """The matrix with every entry outside `columns` dropped (same shape)."""
    keep = np.zeros(matrix.shape[1], dtype=bool)
    keep[columns] = True
    return sp.csr_matrix(matrix.multiply(keep[None, :]))


def _add_weighted_outer_products(a: np.ndarray, indptr: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> None:
    """a[u] += Σ_i weights_i · rows_i rows_iᵀ over each user's slice indptr[u]:indptr[u+1], in
    chunks of whole users so the (interactions, rank, rank) products stay small. Each user's sum
    is one sparse (users x interactions) product: a ufunc reduceat over 3-d slices is 5x slower."""
    rank = rows.shape[1]
    per_chunk = max(1, OUTER_PRODUCTS_PER_CHUNK // (rank * rank))
    n_users = len(indptr) - 1
    user = 0
    while user < n_users:
        # whole users only, at least one, until the chunk holds per_chunk interactions
        stop = min(max(int(np.searchsorted(indptr, indptr[user] + per_chunk, side="right")) - 1, user + 1), n_users)
        first, last = indptr[user], indptr[stop]
        if last > first:
            chunk = rows[first:last]
            products = np.einsum("ni,nj->nij", chunk * weights[first:last, None], chunk).reshape(last - first, -1)
            owners = sp.csr_matrix((np.ones(last - first), np.arange(last - first), indptr[user:stop + 1] - first),
                                   shape=(stop - user, last - first))
            a[user:stop] += (owners @ products).reshape(stop - user, rank, rank)
        user = stop


def fit(data: TrainingSet, params: dict, opts: ModelSettingsView) -> AlsComponent:
    return fit_factors(data.feedback, data.catalog, rank=int(params["rank"]), reg_param=float(params["reg_param"]),
                       alpha=float(params["alpha"]), max_iter=int(params["max_iter"]), seed=opts.seed,
                       blocks=opts.blocks)


def fit_factors(feedback: DataFrame, catalog: np.ndarray, *, rank: int, reg_param: float, alpha: float,
                max_iter: int, seed: int, blocks: int) -> AlsComponent:
    """feedback: (user_id, item_id, strength). Spark scales reg_param by each user's/item's count,
    so values tuned for other ALS libraries don't transfer."""
    model = ALS(userCol="user_id", itemCol="item_id", ratingCol="strength", implicitPrefs=True,
                rank=rank, regParam=reg_param, alpha=alpha, maxIter=max_iter, seed=seed,
                coldStartStrategy="drop", nonnegative=False,
                # Spark's default of 10 blocks is ~4x slower on a 2-core box; one block per core instead.
                numUserBlocks=blocks, numItemBlocks=blocks).fit(feedback.select("user_id", "item_id", "strength"))
    items = model.itemFactors.toArrow()
    item_ids, item_matrix = factor_matrix(items.column("id").combine_chunks(),
                                          items.column("features").combine_chunks())
    aligned = np.zeros((len(catalog), rank), dtype=np.float32)
    positions = np.searchsorted(catalog, item_ids)
    aligned[positions] = item_matrix  # every fitted item is in the catalog: it comes from the same feedback
    return AlsComponent(aligned, float(alpha), float(reg_param))
