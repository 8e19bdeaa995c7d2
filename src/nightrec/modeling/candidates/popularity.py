"""Popularity: global or trending (time-decayed) item scores, and lists per user segment."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.moments import row_moments
from nightrec.modeling.retrieval import ItemScoresView
from nightrec.modeling.scoring import UserBlock

NAME = "popularity"
REQUIRED_PARAMS = ("half_life_days",)
TOP_KEPT = 4096  # most popular items a shortlist can draw from, its users' seen ones skipped

AGE_BANDS = ((0, 18), (18, 25), (25, 35), (35, 45), (45, 56), (56, None))  # [low, high) years


@dataclass
class PopularityComponent:
    kind: ClassVar[str] = "popularity"
    item_scores: np.ndarray   # per catalog item

    _ranked: tuple | None = field(default=None, repr=False, compare=False)  # see view()

    def score(self, block: UserBlock) -> np.ndarray:
        return np.tile(self.item_scores, (len(block.user_ids), 1))

    def view(self, block: UserBlock) -> ItemScoresView:
        """For scoring at a shortlist (nightrec.modeling.retrieval): the same scores for everyone."""
        if self._ranked is None:  # once per component: the best few thousand, and the moments
            scores = self.item_scores.astype(np.float32)
            head = min(len(scores), TOP_KEPT)
            top = np.argpartition(-scores, head - 1)[:head] if head else np.empty(0, dtype=np.int64)
            mean, std = row_moments(scores[None, :], len(scores))
            self._ranked = (scores, top[np.argsort(-scores[top], kind="stable")].astype(np.int32), mean[0], std[0])
        return ItemScoresView(*self._ranked, len(block.user_ids))

    def describe(self) -> dict:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_scores": self.item_scores}

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> PopularityComponent:
        return cls(arrays["item_scores"])


def decayed_users(as_of: dt.datetime, half_life_days: float):
    """Column: 1 per (user, item) pair, halved every half_life_days of age (0 = no decay)."""
    if half_life_days <= 0:
        return F.lit(1.0)
    age_days = (F.lit(as_of).cast("double") - F.col("last_ts").cast("double")) / 86400.0
    return F.pow(F.lit(2.0), -F.greatest(age_days, F.lit(0.0)) / F.lit(float(half_life_days)))


def item_scores(feedback: DataFrame, as_of: dt.datetime, half_life_days: float) -> DataFrame:
    """(item_id, score): how many users took each item, recent ones counting more when trending."""
    return feedback.groupBy("item_id").agg(F.sum(decayed_users(as_of, half_life_days)).alias("score"))


def fit(data: TrainingSet, params: dict, opts: ModelSettingsView) -> PopularityComponent:
    return fit_scores(data.feedback, data.catalog, data.as_of, float(params["half_life_days"]))


def fit_scores(feedback: DataFrame, catalog: np.ndarray, as_of: dt.datetime,
               half_life_days: float) -> PopularityComponent:
    scores = item_scores(feedback, as_of, half_life_days).toPandas()
    aligned = np.zeros(len(catalog), dtype=np.float32)
    aligned[np.searchsorted(catalog, scores["item_id"].to_numpy())] = scores["score"].to_numpy(dtype=np.float32)
    return PopularityComponent(aligned)


def user_segments(users: DataFrame) -> DataFrame:
    """(user_id, segment) for the users (user_id, attributes map) whose age or gender is known."""
    age = F.expr("try_cast(trim(attributes['age']) AS INT)")
    gender = F.upper(F.trim(F.col("attributes")["gender"]))
    return users.select("user_id", segment_key(age, gender).alias("segment")).where("segment IS NOT NULL")


def segment_key(age: Column, gender: Column) -> Column:
    """e.g. 'age=25-34|gender=F', 'gender=M' or null."""
    band = F.when(age.isNull(), None)
    for low, high in AGE_BANDS:
        band = band.when(age < high if high else F.lit(True), F.lit(f"age={low}-{high - 1}" if high else f"age={low}+"))
    # Free-text genders become part of Redis key names: only short plain codes make a segment.
    key = F.concat_ws("|", band, F.when(gender.rlike(r"^[A-Z0-9_-]{1,20}$"), F.concat(F.lit("gender="), gender)))
    return F.when(key != "", key)


def segment_lists(feedback: DataFrame, users: DataFrame, as_of: dt.datetime, half_life_days: float, k: int,
                  min_users: int) -> DataFrame:
    """(segment, item_ids, scores): the k most popular items among each segment's users.

    users: (user_id, attributes map). Segments with fewer than min_users users are left out: their
    members get the global list.
    """
    members = user_segments(users)
    sizes = members.groupBy("segment").agg(F.count("*").alias("members")).where(F.col("members") >= min_users)
    scored = (feedback.join(members.join(sizes, "segment"), "user_id")
              .groupBy("segment", "item_id").agg(F.sum(decayed_users(as_of, half_life_days)).alias("score")))
    return ranked_lists(scored, "segment", k)


def ranked_lists(scored: DataFrame, key: str, k: int) -> DataFrame:
    """(key, item_id, score) -> (key, item_ids, scores): the k best per key, score desc then item id."""
    from pyspark.sql import Window

    order = Window.partitionBy(key).orderBy(F.col("score").desc(), "item_id")
    best = scored.withColumn("r", F.row_number().over(order)).where(F.col("r") <= k)
    return best.groupBy(key).agg(F.array_sort(F.collect_list(F.struct("r", "item_id", "score"))).alias("l")).select(
        key, F.col("l.item_id").alias("item_ids"), F.col("l.score").cast("array<float>").alias("scores"))
