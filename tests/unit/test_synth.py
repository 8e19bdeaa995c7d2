import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nightrec.cli import app
from nightrec.data import synth

CONFIG = synth.Config(users=3000, items=600, events=60_000, days=7, seed=7, end=dt.date(2024, 3, 10))


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "landing"
    summary = synth.generate(CONFIG, out)
    return out, summary


@pytest.fixture(scope="module")
def events(landing):
    out, _ = landing
    frames = []
    for folder in sorted((out / "interactions").iterdir()):
        for path in sorted(folder.glob("*.parquet")):
            frame = pq.read_table(path).to_pandas()
            frame["dt"] = dt.date.fromisoformat(folder.name.removeprefix("dt="))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def world():
    return synth.build_world(CONFIG)


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def test_layout_schema_and_summary(landing, events):
    out, summary = landing
    days = [f"dt={CONFIG.first_day + dt.timedelta(days=d)}" for d in range(7)]
    assert sorted(p.name for p in (out / "interactions").iterdir()) == days
    assert all([p.name for p in (out / "interactions" / d).iterdir()] == ["part-00000.parquet"] for d in days)
    schema = pq.read_schema(out / "interactions" / days[0] / "part-00000.parquet")
    assert [(f.name, f.type) for f in schema] == [
        ("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()), ("value", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC"))]
    assert (events.value == 1.0).all()
    assert summary["rows"] == len(events) == CONFIG.events  # exactly the requested count
    assert (summary["days"], summary["files"], summary["first_day"], summary["last_day"]) == (7, 7, "2024-03-04",
                                                                                               "2024-03-10")
    assert summary["users_with_events"] == events.user_id.nunique()
    assert summary["items_with_events"] == events.item_id.nunique()


def test_same_seed_same_bytes_other_seed_other_rows(landing, tmp_path):
    out, _ = landing
    again = synth.generate(CONFIG, tmp_path / "again")
    assert files_of(tmp_path / "again") == files_of(out)
    assert again["users_with_events"] == landing[1]["users_with_events"]
    other = synth.Config(**{**CONFIG.__dict__, "seed": 8})
    synth.generate(other, tmp_path / "other")
    first = pq.read_table(out / "interactions" / "dt=2024-03-10").to_pandas()
    second = pq.read_table(tmp_path / "other" / "interactions" / "dt=2024-03-10").to_pandas()
    assert len(first) == len(second) and not first.equals(second)


def test_every_ts_inside_its_day_and_no_duplicate_rows(events):
    assert (events.ts.dt.tz is not None) and (events.ts.dt.date == events.dt).all()
    assert not events.duplicated(["user_id", "item_id", "event_type", "ts"]).any()
    assert events.groupby("dt").ts.is_monotonic_increasing.all()  # each file is in time order


def test_days_follow_a_mild_weekly_rhythm():
    counts = synth.split_events(1_000_003, dt.date(2024, 6, 3), 14, synth.Config.weekly)  # Monday first
    assert counts.sum() == 1_000_003
    weekend, midweek = counts[[5, 6, 12, 13]].mean(), counts[[1, 2, 8, 9]].mean()
    assert 1.05 < weekend / midweek < 1.25
    assert list(synth.split_events(5, dt.date(2024, 6, 3), 7, synth.Config.weekly)).count(0) == 2


def test_funnel_depths_add_up_exactly():
    rng = np.random.default_rng(0)
    for total in (1, 2, 7, 10_001):
        depth = synth.funnel_depths(rng, total, (0.3, 0.3, 0.4))
        assert depth.sum() == total and depth.min() >= 1 and depth.max() <= 4


def test_ties_move_up_by_the_least_amount():
    assert list(synth.strictly_increasing(np.array([0, 0, 0, 5, 5, 9]))) == [0, 1, 2, 5, 6, 9]


def test_item_popularity_is_zipf_like(events):
    counts = events.item_id.value_counts().to_numpy()
    top_1_percent = counts[:CONFIG.items // 100].sum() / len(events)
    assert top_1_percent > 0.25  # 6 of 600 items
    ranks = np.arange(1, len(counts) + 1)
    head = slice(2, 100)  # the slope of log(count) against log(rank) where counts are well above noise
    slope = np.polyfit(np.log(ranks[head]), np.log(counts[head]), 1)[0]
    assert -1.4 < slope < -0.7


def test_users_act_mostly_in_their_taste_groups_categories(events, world):
    user = events.user_id.to_numpy() - 1
    category = world.item_category[events.item_id.to_numpy() - 1]
    own = (category == world.user_group[user]) | (category == world.user_second[user])
    assert own.mean() > 0.8
    # Visible in the data alone: a user's most frequent category has most of their events.
    per_user = events.assign(category=category).groupby(["user_id", "category"]).size()
    top = per_user.groupby("user_id").max() / per_user.groupby("user_id").sum()
    assert top[per_user.groupby("user_id").sum() >= 20].median() > 0.6
    assert len(world.categories) == 20 and np.bincount(world.user_group).min() > 0


def test_funnel_order_purchases_follow_views_of_the_same_user_and_item(events):
    counts = events.event_type.value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    first_view = events[events.event_type == "view"].groupby(["user_id", "item_id"]).ts.min().rename("first_view")
    later = events[events.event_type != "view"].join(first_view, on=["user_id", "item_id"])
    assert later.first_view.notna().all() and (later.first_view < later.ts).all()
    first_click = events[events.event_type == "click"].groupby(["user_id", "item_id"]).ts.min().rename("first_click")
    buys = events[events.event_type == "purchase"].join(first_click, on=["user_id", "item_id"])
    assert (buys.first_click < buys.ts).all()


def test_new_items_appear_inside_the_window_and_have_no_events_before(landing, events):
    out, _ = landing
    items = pq.read_table(out / "items.parquet").to_pandas()
    assert list(items.columns) == ["item_id", "title", "category", "available", "price", "released"]
    assert list(items.item_id) == list(range(1, CONFIG.items + 1))
    inside = items.released > CONFIG.first_day
    assert 0.05 < inside.mean() < 0.15  # new_item_share 0.1
    released = events.join(items.set_index("item_id").released, on="item_id").released
    assert (events.dt >= released).all()
    new_items = set(items.item_id[inside])
    assert events.item_id.isin(new_items).any()
    assert set(items.available) == {"0", "1"} and 0.005 < (items.available == "0").mean() < 0.08
    assert items.category.nunique() == 20


def test_users_file_has_everyone_including_users_without_events(landing, events):
    out, _ = landing
    users = pq.read_table(out / "users.parquet").to_pandas()
    assert list(users.columns) == ["user_id", "age", "gender", "country", "signup_date"]
    assert list(users.user_id) == list(range(1, CONFIG.users + 1))
    silent = set(users.user_id) - set(events.user_id)
    assert len(silent) > 0.03 * CONFIG.users
    assert set(users.gender.dropna()) == {"F", "M"} and users.age.dropna().between(14, 85).all()
    first_event = events.groupby("user_id").dt.min()
    signup = users.set_index("user_id").signup_date.loc[first_event.index]
    assert (first_event >= signup).all()  # nobody acts before signing up
    per_user = events.user_id.value_counts()
    assert per_user.median() < per_user.mean() / 2  # heavy tail: many light users, a few heavy ones


def test_cli_writes_a_folder_and_prints_one_json_line(tmp_path):
    runner = CliRunner()
    args = ["synth", "--users", "50", "--items", "30", "--events", "500", "--days", "2", "--end", "2024-01-02",
            "--seed", "3", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["days"], summary["first_day"]) == (500, 2, "2024-01-01")
    assert (tmp_path / "out/interactions/dt=2024-01-02/part-00000.parquet").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_tiny_and_edge_sizes_still_hold_the_rules(tmp_path):
    config = synth.Config(users=1, items=1, events=25, days=3, seed=1)
    summary = synth.generate(config, tmp_path / "tiny")
    frame = pq.read_table(tmp_path / "tiny" / "interactions").to_pandas()
    assert summary["rows"] == len(frame) == 25 and set(frame.user_id) == {1} and set(frame.item_id) == {1}
    assert not frame.duplicated(["user_id", "item_id", "event_type", "ts"]).any()
    assert synth.generate(synth.Config(users=5, items=5, events=0, days=2), tmp_path / "empty")["rows"] == 0
    with pytest.raises(ValueError, match="users must be"):
        synth.Config(users=0, items=1, events=1, days=1)


def recall_at_10(scores: np.ndarray, seen: np.ndarray, truth: np.ndarray) -> float:
    scores = np.where(seen, -np.inf, scores)
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    hits = np.take_along_axis(truth, top, axis=1).sum(1)
    return float((hits / np.minimum(truth.sum(1), 10)).mean())


def test_a_collaborative_model_beats_popularity_on_each_users_latest_items(events):
    """The test bed's point: an item-item model (EASE, in numpy) fit on each user's earlier items finds
    more of their latest 20% than the most popular items do."""
    last = events.groupby(["user_id", "item_id"]).ts.max().reset_index().sort_values(["user_id", "ts"])
    last["n"] = last.groupby("user_id").item_id.transform("size")
    held = last.groupby("user_id").cumcount() >= np.ceil(last.n * 0.8)
    users = np.unique(last.user_id[last.n >= 5]) - 1
    train, test = last[~held], last[held & (last.n >= 5)]
    seen = np.zeros((CONFIG.users, CONFIG.items), dtype=bool)
    seen[train.user_id - 1, train.item_id - 1] = True
    truth = np.zeros_like(seen)
    truth[test.user_id - 1, test.item_id - 1] = True
    x = seen.astype(np.float64)
    inverse = np.linalg.inv(x.T @ x + 100.0 * np.eye(CONFIG.items))
    ease = -inverse / np.diag(inverse)
    np.fill_diagonal(ease, 0.0)
    popular = recall_at_10(np.broadcast_to(x.sum(0), (len(users), CONFIG.items)), seen[users], truth[users])
    collaborative = recall_at_10(x[users] @ ease, seen[users], truth[users])
    assert collaborative > 1.3 * popular, (collaborative, popular)
