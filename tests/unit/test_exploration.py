"""Thompson sampling over the least-shown items (nightrec.serving.exploration)."""

from collections import Counter

import numpy as np

from nightrec.serving.exploration import Explorer


def answer(n: int) -> list[dict]:
    return [{"item_id": i, "rank": i, "score": 1.0 - i / 100} for i in range(1, n + 1)]


def pool(explorer: Explorer, stats: dict[int, tuple[int, int]]) -> Explorer:
    ids = np.array(sorted(stats))
    explorer.set_pool(ids, np.array([stats[i][0] for i in ids]), np.array([stats[i][1] for i in ids]))
    return explorer


def test_one_position_in_every_goes_to_an_explored_item_and_ranks_are_renumbered():
    explorer = pool(Explorer(every=10, seed=1), {501: (0, 0), 502: (0, 0), 503: (0, 0)})
    items = explorer.fill(answer(30), 25, lambda item: True)
    assert len(items) == 25 and [item["rank"] for item in items] == list(range(1, 26))
    explored = [item for item in items if item.get("explored")]
    assert [item["rank"] for item in explored] == [10, 20] and {item["item_id"] for item in explored} < {501, 502, 503}
    kept = [item["item_id"] for item in items if not item.get("explored")]
    assert kept == list(range(1, 24))  # the model's order, shifted down, cut at k
    assert explorer.fill(answer(9), 9, lambda item: True) == answer(9)  # k below every: nothing explored


def test_items_the_answer_holds_or_that_are_not_allowed_are_never_explored():
    explorer = pool(Explorer(every=2, seed=2), {3: (0, 0), 40: (0, 0), 41: (0, 0), 42: (0, 0)})
    for _ in range(50):
        items = explorer.fill(answer(5), 6, lambda item: item != 41)
        explored = [item["item_id"] for item in items if item.get("explored")]
        assert sorted(explored) == [40, 42]  # ranks 2, 4 and 6 asked for three: only two may be shown
        assert len({item["item_id"] for item in items}) == len(items) == 6


def test_thompson_sampling_favours_items_that_are_clicked_and_still_tries_unknown_ones():
    explorer = pool(Explorer(every=1, seed=3), {7: (200, 60), 8: (200, 2), 9: (0, 0)})
    picks = Counter(explorer.fill([], 1, lambda item: True)[0]["item_id"] for _ in range(2000))
    # clicked 30% vs 1% of 200 times: the first wins; the unknown item's uniform prior beats 0.30 about 70% of
    # the time, which is how it gets the impressions that will tell
    assert picks[8] < 20 and picks[7] > 400 and picks[9] > 1100


def test_an_empty_pool_leaves_the_answer_alone():
    assert Explorer(every=10, seed=4).fill(answer(20), 20, lambda item: True) == answer(20)
