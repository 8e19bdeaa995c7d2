"""Implicit-feedback ALS (Spark MLlib): user and item factors; score = dot product."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame

from nightrec.scoring import UserBlock
from nightrec.topk import factor_matrix


@dataclass
class AlsComponent:
    item_factors: np.ndarray          # (catalog items, rank); zero rows for items ALS never saw
    user_ids: np.ndarray | None       # sorted ids of the users it was fit on
    user_factors: np.ndarray | None   # (users, rank)

    def score(self, block: UserBlock) -> np.ndarray:
        rank = self.item_factors.shape[1]
        if block.factors is None and self.user_factors is not None:
            block.factors = self.factors_of(block.user_ids)
        if block.factors is None or block.factors.shape[1] != rank:
            return np.zeros((len(block.user_ids), len(self.item_factors)), dtype=np.float32)
        return block.factors @ self.item_factors.T

    def factors_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Factor rows for user_ids (zeros for users the model was not fit on)."""
        positions = np.minimum(np.searchsorted(self.user_ids, user_ids), len(self.user_ids) - 1)
        known = self.user_ids[positions] == user_ids
        return np.where(known[:, None], self.user_factors[positions], 0.0).astype(np.float32)

    def without_user_factors(self) -> AlsComponent:
        return dataclasses.replace(self, user_ids=None, user_factors=None)


def fit(feedback: DataFrame, catalog: np.ndarray, *, rank: int, reg_param: float, alpha: float,
        max_iter: int, seed: int, blocks: int) -> AlsComponent:
    """feedback: (user_id, item_id, strength). Spark scales reg_param by each user's/item's count,
    so values tuned for other ALS libraries don't transfer."""
    model = ALS(userCol="user_id", itemCol="item_id", ratingCol="strength", implicitPrefs=True,
                rank=rank, regParam=reg_param, alpha=alpha, maxIter=max_iter, seed=seed,
                coldStartStrategy="drop", nonnegative=False,
                # Spark's default of 10 blocks is ~4x slower on a 2-core box; one block per core instead.
                numUserBlocks=blocks, numItemBlocks=blocks).fit(feedback.select("user_id", "item_id", "strength"))
    items = model.itemFactors.toArrow()
    item_ids, item_matrix = factor_matrix(items.column("id").combine_chunks(), items.column("features").combine_chunks())
    aligned = np.zeros((len(catalog), rank), dtype=np.float32)
    positions = np.searchsorted(catalog, item_ids)
    aligned[positions] = item_matrix  # every fitted item is in the catalog: it comes from the same feedback
    users = model.userFactors.toArrow()
    user_ids, user_matrix = factor_matrix(users.column("id").combine_chunks(), users.column("features").combine_chunks())
    return AlsComponent(aligned, user_ids, user_matrix)
