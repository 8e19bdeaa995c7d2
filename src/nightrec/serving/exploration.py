"""Bandit exploration: one position in `exploration.every` of an answer goes to an item drawn by
Thompson sampling from the least-shown items (their impression and click counts, written nightly
by the analysis to `{<p>}:explore`), so new items get a chance to be seen and to prove themselves.
Each item's click rate has a Beta(1 + clicks, 1 + impressions - clicks) posterior; one draw per item
and answer, the best draws win. Explored items are marked in the answer and in its impression.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

REFRESH_SECONDS = 60.0  # the pool changes nightly: a worker re-reads it this often


class Explorer:
    def __init__(self, every: int, seed: int | None = None):
        self.every = every
        self.rng = np.random.default_rng(seed)
        self.ids = np.empty(0, dtype=np.int64)
        self.alpha = self.beta = np.empty(0)

    def set_pool(self, ids: np.ndarray, impressions: np.ndarray, clicks: np.ndarray) -> None:
        self.ids, self.alpha, self.beta = ids, 1.0 + clicks, 1.0 + impressions - clicks

    def fill(self, items: list[dict], k: int, allowed: Callable[[int], bool]) -> list[dict]:
        """items with ranks every, 2 x every, ... (<= k and at most one past the list's end) given to
        drawn pool items that `allowed` accepts and the answer does not hold yet; ranks renumbered."""
        positions = range(self.every, min(k, len(items) + 1) + 1, self.every)
        if not len(self.ids) or not positions:
            return items
        draws = self.rng.beta(self.alpha, self.beta)
        taken = {item["item_id"] for item in items}
        chosen = []
        for index in best_first(draws, len(positions) + len(taken) + 8):
            item = int(self.ids[index])
            if item not in taken and allowed(item):
                chosen.append({"item_id": item, "score": round(float(draws[index]), 4), "explored": True})
                taken.add(item)
                if len(chosen) == len(positions):
                    break
        answer = list(items)
        for position, item in zip(positions, chosen):
            answer.insert(position - 1, item)
        answer = answer[:k]
        for rank, item in enumerate(answer, 1):
            item["rank"] = rank
        return answer


def best_first(draws: np.ndarray, likely: int):
    """Indices by draw, best first: the `likely` best sorted (all a fill usually looks at), then the rest."""
    if likely >= len(draws):
        yield from np.argsort(-draws)
        return
    top = np.argpartition(-draws, likely)[:likely]
    yield from top[np.argsort(-draws[top])]
    rest = np.setdiff1d(np.arange(len(draws)), top, assume_unique=True)
    yield from rest[np.argsort(-draws[rest])]
