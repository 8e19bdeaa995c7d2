"""The approximate index behind retrieved scoring: an HNSW graph over the ALS item factors, searched
by inner product (usearch; chosen among the package index's libraries by bench/ann.py), and the
Retrieval a night scores with."""

from __future__ import annotations

import datetime as dt

import numpy as np
from pyspark.sql import DataFrame

from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.retrieval import Retrieval, use_retrieval
from nightrec.modeling.scoring import Bundle
from nightrec.settings import ModelSettings

CONNECTIVITY = 32       # graph edges per item: recall at a depth of hundreds needs more than the default 16
EXPANSION_ADD = 128


class ItemIndex:
    """Catalog positions of the items with factors, searchable by a user's factors (top inner
    products). Built once per night on the driver; pickled (as the library's own bytes) into the
    bundle every Spark task receives."""

    def __init__(self, factors: np.ndarray, positions: np.ndarray, threads: int = 0):
        from usearch.index import Index

        self.index = Index(ndim=factors.shape[1], metric="ip", dtype="f32", connectivity=CONNECTIVITY,
                           expansion_add=EXPANSION_ADD)
        if len(positions):
            self.index.add(np.asarray(positions, dtype=np.int64), np.ascontiguousarray(factors, dtype=np.float32),
                           threads=threads)

    def search(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """(users, depth) positions, best first, -1 padded; on the calling thread (a Spark task's core)."""
        found = np.full((len(queries), depth), -1, dtype=np.int32)
        if len(self.index) == 0 or len(queries) == 0:
            return found
        self.index.expansion_search = max(2 * depth, 128)  # a search keeps at most this many candidates
        matches = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth, threads=1)
        keys = matches.keys.astype(np.int64).reshape(len(queries), -1)
        # one query gives one Matches, without counts
        counts = matches.counts.reshape(-1) if hasattr(matches, "counts") else np.array([len(matches.keys)])
        found[:, :keys.shape[1]] = np.where(np.arange(keys.shape[1]) < counts[:, None], keys, -1)
        return found

    def describe(self) -> str:
        return f"HNSW (usearch, {CONNECTIVITY} edges per item) over {len(self.index):,} ALS item factors"

    def __getstate__(self) -> dict:
        return {"bytes": bytes(self.index.save())}

    def __setstate__(self, state: dict) -> None:
        from usearch.index import Index

        self.index = Index.restore(state["bytes"], view=True)  # searches the bytes in place: no second copy
        self._bytes = state["bytes"]


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
