"""Item-item neighbours for "more like this": shrunk cosine over the users who took both items
(nightrec.modeling.cooccurrence), each list packed for Redis."""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame

from nightrec.modeling import cooccurrence
from nightrec.modeling.scoring import with_serving_value

OUTPUT_SCHEMA = "item_id int, item_ids array<int>, scores array<float>, value binary"


def similar_items(feedback: DataFrame, k: int, unavailable: set[int] = frozenset()) -> DataFrame:
    """feedback: (user_id, item_id, last_ts, ...). Returns (item_id, item_ids, scores, value), best
    first, value packed for Redis; items without any co-occurring neighbour get no row; unavailable
    items are never neighbours."""
    blocked = np.fromiter(unavailable, dtype=np.int64) if unavailable else None
    found = cooccurrence.neighbours(feedback, k, blocked=blocked)
    return found.mapInArrow(lambda batches: (with_serving_value(b) for b in batches), OUTPUT_SCHEMA)
