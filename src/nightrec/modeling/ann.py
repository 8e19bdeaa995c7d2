"""The approximate index behind retrieved scoring: an HNSW graph over the ALS item factors, searched
by inner product (faiss; chosen among the package index's libraries by bench/ann.py), and the
Retrieval a night scores with."""

from __future__ import annotations

import datetime as dt

import numpy as np
from pyspark.sql import DataFrame

from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.retrieval import Retrieval, use_retrieval
from nightrec.modeling.scoring import Bundle
from nightrec.settings import ModelSettings

EDGES = 32                # graph edges per item: recall at a depth of hundreds needs more than faiss's 16
BUILD_CANDIDATES = 128    # efConstruction


class ItemIndex:
    """Catalog positions of the items with factors, searchable by a user's factors (top inner
    products). Built once per night on the driver (all its cores); pickled (faiss's own bytes) into
    the bundle every Spark task receives."""

    def __init__(self, factors: np.ndarray, positions: np.ndarray):
        import faiss

        self.positions = np.asarray(positions, dtype=np.int32)
        self.index = faiss.IndexHNSWFlat(factors.shape[1], EDGES, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = BUILD_CANDIDATES
        if len(self.positions):
            self.index.add(np.ascontiguousarray(factors, dtype=np.float32))

    def search(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """(users, depth) positions, best first, -1 padded; on one thread (a Spark task's core)."""
        import faiss

        if self.index.ntotal == 0 or len(queries) == 0:
            return np.full((len(queries), depth), -1, dtype=np.int32)
        faiss.omp_set_num_threads(1)
        # a graph search keeps efSearch candidates: at least the depth asked for
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth,
                                     params=faiss.SearchParametersHNSW(efSearch=max(depth, 64)))
        return np.where(found >= 0, self.positions[np.maximum(found, 0)], -1).astype(np.int32)

    def describe(self) -> str:
        return f"HNSW (faiss, {EDGES} edges per item) over {self.index.ntotal:,} ALS item factors"

    def __getstate__(self) -> dict:
        import faiss

        return {"positions": self.positions, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        import faiss

        self.positions, self.index = state["positions"], faiss.deserialize_index(state["index"])


def retrieval_for(bundle: Bundle, feedback: DataFrame, m: ModelSettings, as_of: dt.datetime) -> Retrieval | None:
    """How a night scores with this bundle (model.retrieval): None (exact, every catalog item) or a
    Retrieval with its index over the ALS item factors and the trending list of `feedback`
    (user_id, item_id, strength, last_ts)."""
    from nightrec.modeling.candidates import popularity

    if not use_retrieval(m.retrieval, len(bundle.item_ids), m.retrieval_min_items):
        return None
    depth = m.retrieval_depth
    als = [c for name, c in bundle.components.items() if isinstance(c, AlsComponent) and bundle.weights[name] > 0]
    index = None
    if als:
        known = als[0].known_items()
        index = ItemIndex(als[0].item_factors[known], known)
    top = (popularity.item_scores(feedback, as_of, m.trending_half_life_days).orderBy("score", ascending=False)
           .limit(depth).select("item_id").toArrow().column(0).to_numpy().astype(np.int64))
    positions = np.searchsorted(bundle.item_ids, top)
    known = (positions < len(bundle.item_ids)) & (bundle.item_ids[np.minimum(positions, len(bundle.item_ids) - 1)]
                                                  == top)
    return Retrieval(index, positions[known].astype(np.int32), depth)


def describe(retrieval: Retrieval | None) -> str:
    """What MLflow and `nightrec status` show of how the lists were scored."""
    if retrieval is None:
        return "exact: every catalog item scored for every user"
    source = retrieval.index.describe() if retrieval.index is not None else "no ALS index"
    return f"retrieved: {retrieval.depth} candidates per source ({source}; the other components; trending)"
