"""Content-based: TF-IDF over item metadata (Spark ML); a user's profile is the strength- and
recency-weighted sum of the items they took; score = cosine(profile, item). Items nobody has
touched yet score like any other, so new items can be recommended from day one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from pyspark.ml import Pipeline
from pyspark.ml.feature import IDF, CountVectorizer, Normalizer, RegexTokenizer, StopWordsRemover
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.scoring import UserBlock, restore_sparse, sparse_arrays

NAME = "content"
REQUIRED_PARAMS = ()

# Free-text attributes used as they are; list-like ones become one token per value.
TEXT_ATTRIBUTES = ("title", "description")
TOKEN_ATTRIBUTES = ("genres", "category", "tags")


@dataclass
class ContentComponent:
    kind: ClassVar[str] = "content"
    item_vectors: sp.csr_matrix   # (catalog items, vocabulary), rows L2-normalised; empty rows allowed

    def score(self, block: UserBlock) -> np.ndarray:
        profile = block.recency @ self.item_vectors
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1))).astype(np.float32)
        scores = (profile @ self.item_vectors.T).toarray().astype(np.float32)
        return scores / np.where(norms > 0, norms, 1.0)

    def describe(self) -> dict:
        return {"vocabulary": int(self.item_vectors.shape[1])}

    def arrays(self) -> dict[str, np.ndarray]:
        return sparse_arrays("item_vectors", self.item_vectors)

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> ContentComponent:
        return cls(restore_sparse("item_vectors", arrays))


def item_text(items: DataFrame) -> DataFrame:
    """(item_id, text): free text, plus tokens like genre_comedy, year_1995, decade_1990s."""
    attrs = F.col("attributes")
    parts: list[Column] = [F.coalesce(attrs[name], F.lit("")) for name in TEXT_ATTRIBUTES]
    for name in TOKEN_ATTRIBUTES:
        values = F.split(F.coalesce(attrs[name], F.lit("")), r"[|,;]")
        parts.append(F.array_join(F.transform(values, lambda v: F.when(
            F.trim(v) != "", F.concat(F.lit(f"{name}_"), F.regexp_replace(F.lower(F.trim(v)), r"\W+", "_")))), " "))  # noqa: B023 (F.transform calls it at once)
    year = F.expr("try_cast(trim(attributes['year']) AS INT)")
    parts.append(F.when(year.isNotNull(), F.concat(F.lit("year_"), year, F.lit(" decade_"),
                                                   (F.floor(year / 10) * 10).cast("int"), F.lit("s"))))
    return items.select("item_id", F.concat_ws(" ", *parts).alias("text"))


def fit(data: TrainingSet, params: dict, opts: ModelSettingsView) -> ContentComponent | None:
    """None without an item file: there is nothing to describe items by."""
    if data.items is None:
        return None
    return fit_vectors(data.items, data.catalog, int(params.get("min_items_per_term", 2)))


def fit_vectors(items: DataFrame, catalog: np.ndarray, min_items_per_term: int = 2) -> ContentComponent:
    """items: (item_id, attributes map). Terms used by fewer than min_items_per_term items are dropped."""
    pipeline = Pipeline(stages=[
        RegexTokenizer(inputCol="text", outputCol="tokens", pattern=r"[^\w]+", toLowercase=True),
        StopWordsRemover(inputCol="tokens", outputCol="terms"),
        CountVectorizer(inputCol="terms", outputCol="tf", minDF=float(min_items_per_term)),
        IDF(inputCol="tf", outputCol="tfidf"),
        Normalizer(inputCol="tfidf", outputCol="vector", p=2.0),
    ])
    text = item_text(items)
    fitted = pipeline.fit(text)
    vocabulary = len(fitted.stages[2].vocabulary)
    rows, cols, values = [], [], []
    for row in fitted.transform(text).select("item_id", "vector").toLocalIterator():
        position = np.searchsorted(catalog, row.item_id)
        if position < len(catalog) and catalog[position] == row.item_id:
            rows.extend([position] * len(row.vector.indices))
            cols.extend(row.vector.indices)
            values.extend(row.vector.values)
    matrix = sp.csr_matrix((np.asarray(values, dtype=np.float32), (rows, cols)), shape=(len(catalog), vocabulary))
    return ContentComponent(matrix)
