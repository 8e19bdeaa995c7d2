"""`nightrec synth`: realistic synthetic landing data of any size (docs/landing-format.md).

The world (catalog and users) is drawn once from the seed. Each day is then drawn on its own from
(seed, day) with vectorised numpy, written, and dropped before the next, so memory holds the world
plus one day whatever the number of events. What the data has, and why:

- item popularity is Zipf-like (weight = rank^-exponent), so a few items take most events;
- taste groups: one per category; each user has a group (some a mix of two) and most of their events
  fall on their group's items, so collaborative models have something to learn that popularity lacks;
  a segment (age band x gender) leans towards some groups, so per-segment fallback lists differ;
- events come in funnels on one (user, item): view, then maybe click, add_to_cart, purchase, in time
  order within the day;
- a share of the catalog is released inside the window (no events before), hot for a few days;
- user activity is lognormal (many light users, a few heavy ones); some users never act and some sign
  up during the window;
- the total is exactly the requested number of events, spread over the days with a weekly rhythm and
  over each day with a daily one.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightrec.constants import MAX_ID

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")  # funnel steps, in order
ZIPF_EXPONENT = 1.05
DEFAULT_END = dt.date(2024, 6, 30)
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
EPOCH = dt.date(1970, 1, 1)
CATEGORY_NAMES = ("books", "electronics", "home", "fashion", "sports", "toys", "beauty", "grocery", "garden",
                  "music", "movies", "games", "health", "auto", "pets", "baby", "office", "tools", "jewelry",
                  "outdoors")
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "CA", "ES", "IT", "NL", "PL", "SE")
COUNTRY_SHARES = (0.30, 0.12, 0.10, 0.08, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04, 0.03, 0.02)
# Share of a day's events per UTC hour: quiet nights, busy evenings.
HOURLY = (2, 1.5, 1, 1, 1, 1.5, 2.5, 3.5, 4.5, 5, 5, 5, 5.5, 5.5, 5, 5, 5, 5.5, 6, 6.5, 6.5, 6, 4.5, 3)
AGE_BANDS = (18, 25, 35, 45, 56)  # band edges, as the per-segment fallback lists cut ages
LAST_EVENT_MARGIN_US = 1_000_000  # a funnel ends at least this long before midnight


@dataclass(frozen=True)
class Config:
    users: int
    items: int
    events: int
    days: int
    seed: int = 0
    end: dt.date = DEFAULT_END
    zipf_exponent: float = ZIPF_EXPONENT
    categories: int = 20               # one taste group per category
    taste_share: float = 0.85          # share of a user's events on items of their taste group(s)
    mixed_share: float = 0.3           # users whose taste mixes a second group ...
    mix_range: tuple[float, float] = (0.2, 0.5)  # ... which takes this share of their taste events
    segment_lean: float = 0.6          # lognormal sigma: how much a segment's groups differ from the base
    new_item_share: float = 0.1        # items released inside the window
    fresh_boost: float = 4.0           # a released item's weight x (1 + boost * 2^(-age / half-life))
    fresh_half_life_days: float = 2.0
    unavailable_share: float = 0.03
    idle_user_share: float = 0.03      # users of the user file who never act
    new_user_share: float = 0.1        # users who sign up inside the window (no events before)
    missing_demographics: float = 0.02  # share of users without age, and without gender
    activity_sigma: float = 1.5        # lognormal spread of user activity
    funnel: tuple[float, float, float] = (0.3, 0.3, 0.4)  # P(click | view), P(cart | click), P(purchase | cart)
    step_seconds: tuple[float, float, float] = (40.0, 90.0, 180.0)  # mean gap before click, cart, purchase
    weekly: tuple[float, ...] = (1.0, 0.97, 0.96, 0.98, 1.03, 1.1, 1.08)  # Monday .. Sunday
    rows_per_file: int = 4_000_000

    def __post_init__(self):
        for name in ("users", "items", "days"):
            if not 1 <= getattr(self, name) <= MAX_ID:
                raise ValueError(f"{name} must be in 1..{MAX_ID}, got {getattr(self, name)}")
        if self.events < 0:
            raise ValueError(f"events must be >= 0, got {self.events}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.5 <= self.zipf_exponent <= 3:
            raise ValueError(f"zipf_exponent must be in 0.5..3, got {self.zipf_exponent}")

    @property
    def first_day(self) -> dt.date:
        return self.end - dt.timedelta(days=self.days - 1)

    def day(self, index: int) -> dt.date:
        return self.first_day + dt.timedelta(days=index)


@dataclass
class World:
    """Catalog and users, fixed by the seed; array position i is id i + 1. Days are indexes into the
    window (0 = first day; negative = before it)."""
    item_category: np.ndarray      # int, 0..categories-1
    item_weight: np.ndarray        # Zipf weight
    item_release: np.ndarray       # day index of release
    item_available: np.ndarray     # bool
    item_price: np.ndarray
    user_group: np.ndarray         # taste group = category index
    user_second: np.ndarray        # second group, -1 for none
    user_mix: np.ndarray           # share of taste events on the second group
    user_activity: np.ndarray      # 0 for users who never act
    user_first_day: np.ndarray     # day index of sign-up
    user_age: np.ndarray           # -1 unknown
    user_gender: np.ndarray        # 0 F, 1 M, -1 unknown
    user_country: np.ndarray       # index into COUNTRIES
    categories: list[str]          # category (and taste group) names
    item_order: np.ndarray         # item indexes sorted by category


def category_names(n: int) -> list[str]:
    """n distinct lower-case names: the list above, then numbered rounds of it."""
    rounds = len(CATEGORY_NAMES)
    return [CATEGORY_NAMES[i % rounds] + (f"-{i // rounds + 1}" if i >= rounds else "") for i in range(n)]


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """rank^-exponent with the ranks shuffled over the n positions (popularity unrelated to id)."""
    return (rng.permutation(n) + 1.0) ** -exponent


def split_events(events: int, first_day: dt.date, days: int, weekly) -> np.ndarray:
    """Events per day, proportional to the weekday's weight, summing exactly to `events`."""
    weights = np.array([weekly[(first_day + dt.timedelta(days=d)).weekday()] for d in range(days)], dtype=np.float64)
    share = events * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    rest = events - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1  # largest remainders
    return counts


def age_band(age: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array(AGE_BANDS), age, side="right")


def build_world(config: Config) -> World:
    rng = np.random.default_rng([config.seed, 0])
    n_items, n_users, days = config.items, config.users, config.days
    n_cat = min(config.categories, n_items)
    # Catalog: every category has items; sizes differ.
    size_share = rng.lognormal(0.0, 0.4, n_cat)
    category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, n_items - n_cat, p=size_share / size_share.sum())])
    category = rng.permutation(category).astype(np.int16)
    weight = zipf_weights(n_items, config.zipf_exponent, rng)
    release = -rng.integers(30, 3650, n_items)  # catalog items: released before the window
    new = min(int(round(config.new_item_share * n_items)), n_items - 1) if days > 1 else 0
    if new:
        release[rng.choice(n_items, new, replace=False)] = rng.integers(1, days, new)
    available = rng.random(n_items) >= config.unavailable_share
    price = np.round(rng.lognormal(3.0, 0.5, n_cat)[category] * rng.lognormal(0.0, 0.6, n_items), 2)

    # Users: demographics, then a taste group leaning on their segment, then activity.
    age = np.clip(np.rint(rng.normal(36, 13, n_users)), 14, 85).astype(np.int16)
    gender = (rng.random(n_users) < 0.5).astype(np.int8)
    segment = age_band(age) * 2 + gender
    age[rng.random(n_users) < config.missing_demographics] = -1
    gender[rng.random(n_users) < config.missing_demographics] = -1
    group_mass = np.bincount(category, weights=weight, minlength=n_cat)
    lean = group_mass * rng.lognormal(0.0, config.segment_lean, ((len(AGE_BANDS) + 1) * 2, n_cat))
    group = draw_rows(np.cumsum(lean, axis=1), segment, rng.random(n_users))
    second = np.full(n_users, -1, dtype=np.int64)
    mixed = (rng.random(n_users) < config.mixed_share) & (n_cat > 1)
    other = draw_rows(np.cumsum(group_mass)[None, :], np.zeros(mixed.sum(), dtype=np.int64), rng.random(mixed.sum()))
    clash = other == group[mixed]
    other[clash] = (other[clash] + rng.integers(1, max(n_cat, 2), clash.sum())) % n_cat
    second[mixed] = other
    mix = np.where(mixed, rng.uniform(*config.mix_range, n_users), 0.0)
    # Lognormal activity, capped at 3.5 sigma (1 user in ~4300) so the heaviest stay human-sized.
    activity = np.exp(np.minimum(rng.normal(0.0, config.activity_sigma, n_users), 3.5 * config.activity_sigma))
    first_day = -rng.integers(1, 1500, n_users)  # signed up before the window ...
    joins = rng.random(n_users) < config.new_user_share
    idle = rng.random(n_users) < config.idle_user_share
    joins[0] = idle[0] = False  # ... someone is there to act from the first day
    if days > 1:
        first_day[joins] = rng.integers(1, days, joins.sum())  # ... or inside it
    activity[idle] = 0.0
    country = rng.choice(len(COUNTRIES), n_users, p=np.array(COUNTRY_SHARES) / sum(COUNTRY_SHARES)).astype(np.int8)
    return World(category, weight, release, available, price, group, second, mix, activity, first_day, age, gender,
                 country, category_names(n_cat), np.argsort(category, kind="stable"))


def draw_rows(cumulative: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each (row, uniform u): the column drawn from that row's cumulative weights (2-D)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    totals = cumulative[:, -1]
    width = cumulative.shape[1]
    flat = (cumulative / totals[:, None] + np.arange(len(cumulative))[:, None]).ravel()
    picks = np.searchsorted(flat, rows + u, side="right") - rows * width
    return np.clip(picks, 0, width - 1)


@dataclass
class Sampler:
    """Weighted draws within blocks of a sorted array (one block per category, or one for all).

    `key` holds block + the cumulative share inside the block, so one searchsorted serves every
    block; zero-weight entries (items not released yet) can never be drawn."""
    order: np.ndarray      # block-sorted position -> item index
    key: np.ndarray
    last: np.ndarray       # per block: the last position with weight (or -1 when none has)
    start: np.ndarray      # per block: its first position

    @classmethod
    def build(cls, weights: np.ndarray, blocks: np.ndarray, n_blocks: int, order: np.ndarray) -> "Sampler":
        """order: the positions sorted by block (stable)."""
        w = weights[order]
        sorted_blocks = blocks[order].astype(np.int64)
        bounds = np.searchsorted(sorted_blocks, np.arange(n_blocks + 1))
        cumulative = np.cumsum(w)
        before = np.concatenate([[0.0], cumulative])[bounds]
        totals = np.diff(before)
        inside = (cumulative - before[sorted_blocks]) / np.where(totals > 0, totals, 1.0)[sorted_blocks]
        running = np.maximum.accumulate(np.where(w > 0, np.arange(len(w)), -1))
        last = np.where(bounds[1:] > bounds[:-1], running[np.maximum(bounds[1:] - 1, 0)], -1)
        last = np.where(last >= bounds[:-1], last, -1)
        return cls(order, sorted_blocks + inside, last, bounds[:-1])

    def has(self, block: np.ndarray) -> np.ndarray:
        return self.last[block] >= 0

    def draw(self, block: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item index per (block, u in [0, 1)); every block must have weight (see has)."""
        position = np.searchsorted(self.key, block + u, side="right")
        return self.order[np.clip(position, self.start[block], self.last[block])]


def item_weights_on(world: World, day: int, config: Config) -> np.ndarray:
    """Each item's weight on a day: 0 before release, boosted for its first days."""
    age = (day - world.item_release).astype(np.float64)
    boost = 1.0 + config.fresh_boost * np.exp2(-np.maximum(age, 0.0) / config.fresh_half_life_days)
    return np.where(age >= 0, world.item_weight * boost, 0.0)


def funnel_depths(rng: np.random.Generator, events: int, funnel) -> np.ndarray:
    """Funnel depths (1 = view only .. 4 = up to purchase) adding up to exactly `events`; the last
    funnel is cut short when needed (a shorter funnel is still a funnel)."""
    if events <= 0:
        return np.zeros(0, dtype=np.int64)
    click, cart, purchase = funnel
    mean = 1 + click + click * cart + click * cart * purchase
    n = int(events / mean * 1.02) + 32
    while True:
        r = rng.random((n, 3))
        depth = 1 + (r[:, 0] < click) * (1 + (r[:, 1] < cart) * (1 + (r[:, 2] < purchase)))
        total = np.cumsum(depth)
        if total[-1] >= events:
            break
        n = int(n * 1.5) + 32
    k = int(np.searchsorted(total, events))  # first funnel reaching the count
    depth = depth[:k + 1].astype(np.int64)
    depth[k] -= total[k] - events
    return depth


def strictly_increasing(sorted_values: np.ndarray) -> np.ndarray:
    """Sorted int64 -> the nearest strictly increasing sequence, moving ties up by a few units."""
    steps = np.arange(len(sorted_values), dtype=np.int64)
    return np.maximum.accumulate(sorted_values - steps) + steps


def day_events(world: World, config: Config, day: int, count: int) -> pa.Table:
    """One day's `count` events, sorted by ts, all timestamps distinct (so no duplicate rows)."""
    rng = np.random.default_rng([config.seed, 1, day])
    depth = funnel_depths(rng, count, config.funnel)
    n = len(depth)
    # Who: active users who have signed up, by activity.
    present = np.where(world.user_first_day <= day, world.user_activity, 0.0)
    user_cdf = np.cumsum(present)
    # Sorted draws make the search ~10x faster; funnels are interchangeable, so nothing else changes.
    user = np.minimum(np.searchsorted(user_cdf, np.sort(rng.random(n)) * user_cdf[-1], side="right"), len(user_cdf) - 1)
    # What: mostly the taste group's (or second group's) released items, else anything released.
    weights = item_weights_on(world, day, config)
    n_cat = len(world.categories)
    by_category = Sampler.build(weights, world.item_category, n_cat, order=world.item_order)
    everything = Sampler.build(weights, np.zeros(len(weights), dtype=np.int64), 1, order=np.arange(len(weights)))
    r = rng.random((n, 3))
    second = world.user_second[user]
    group = np.where((second >= 0) & (r[:, 1] < world.user_mix[user]), second, world.user_group[user])
    taste = (r[:, 0] < config.taste_share) & by_category.has(group)
    item = np.empty(n, dtype=np.int64)
    item[taste] = by_category.draw(group[taste], r[taste, 2])
    item[~taste] = everything.draw(np.zeros((~taste).sum(), dtype=np.int64), r[~taste, 2])
    # When: a start hour by the daily rhythm, then a gap before each further step.
    hour_cdf = np.cumsum(HOURLY) / sum(HOURLY)
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(n), side="right"), 23)
    start = hour * US_PER_HOUR + (rng.random(n) * US_PER_HOUR).astype(np.int64)
    gaps = (1.0 + rng.exponential(1.0, (n, 3)) * np.array(config.step_seconds)).clip(max=3600.0)
    offsets = np.zeros((n, 4), dtype=np.int64)
    offsets[:, 1:] = np.cumsum((gaps * 1e6).astype(np.int64), axis=1)
    duration = offsets[np.arange(n), depth - 1]
    start = np.minimum(start, US_PER_DAY - LAST_EVENT_MARGIN_US - duration)
    # One row per step.
    funnel = np.repeat(np.arange(n), depth)
    step = np.arange(len(funnel)) - np.repeat(np.cumsum(depth) - depth, depth)
    ts = start[funnel] + offsets[funnel, step]
    order = np.argsort(ts, kind="stable")
    ts = strictly_increasing(ts[order])
    if len(ts) and ts[-1] >= US_PER_DAY:
        raise AssertionError("an event left its day")  # impossible: 1 s margin against a few µs of tie moves
    funnel, step = funnel[order], step[order]
    day_start = (config.day(day) - EPOCH).days * US_PER_DAY
    return pa.table({
        "user_id": pa.array(user[funnel] + 1, pa.int64()),
        "item_id": pa.array(item[funnel] + 1, pa.int64()),
        "event_type": pc.take(pa.array(EVENT_TYPES, pa.string()), pa.array(step.astype(np.int8))),
        "value": pa.array(np.ones(len(ts)), pa.float64()),
        "ts": pa.array(ts + day_start, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })


def items_table(world: World, config: Config) -> pa.Table:
    ids = np.arange(1, len(world.item_category) + 1)
    names = np.array(world.categories, dtype=object)[world.item_category]
    released = world.item_release + (config.first_day - EPOCH).days
    return pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "title": pa.array([f"{name.split('-')[0].capitalize()} item {i}" for name, i in zip(names, ids)], pa.string()),
        "category": pa.array(names, pa.string()),
        "available": pa.array(np.where(world.item_available, "1", "0"), pa.string()),
        "price": pa.array(world.item_price, pa.float64()),
        "released": pa.array(released.astype(np.int32), pa.int32()).cast(pa.date32()),
    })


def users_table(world: World, config: Config) -> pa.Table:
    signup = world.user_first_day + (config.first_day - EPOCH).days
    return pa.table({
        "user_id": pa.array(np.arange(1, len(world.user_group) + 1), pa.int64()),
        "age": pa.array(world.user_age.astype(np.int64), pa.int64(), mask=world.user_age < 0),
        "gender": pc.take(pa.array(["F", "M"]),
                          pa.array(world.user_gender.astype(np.int64), mask=world.user_gender < 0)),
        "country": pc.take(pa.array(COUNTRIES), pa.array(world.user_country.astype(np.int64))),
        "signup_date": pa.array(signup.astype(np.int32), pa.int32()).cast(pa.date32()),
    })


def write_table(table: pa.Table, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path.stat().st_size


def landing_paths(out: Path) -> list[Path]:
    """What synth writes (and --overwrite replaces) in a landing folder."""
    found = [out / "interactions"] if (out / "interactions").exists() else []
    return found + sorted(p for name in ("items", "users") for p in out.glob(f"{name}.*"))


def generate(config: Config, out: Path, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> dict:
    """Write the landing folder; returns the summary (rows, days, users with events, ... seconds).
    `progress` is told about each day before it is drawn."""
    started = time.monotonic()
    out = Path(out)
    existing = landing_paths(out)
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds landing data ({', '.join(p.name for p in existing)}); "
                              "choose another folder or pass --overwrite to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    world = build_world(config)
    written = write_table(items_table(world, config), out / "items.parquet")
    written += write_table(users_table(world, config), out / "users.parquet")
    users_seen = np.zeros(config.users, dtype=bool)
    items_seen = np.zeros(config.items, dtype=bool)
    rows = files = 0
    for day, count in enumerate(split_events(config.events, config.first_day, config.days, config.weekly)):
        if count == 0:
            continue
        if progress:
            progress(f"day {day + 1}/{config.days} ({config.day(day)}): {count:,} events")
        table = day_events(world, config, day, int(count))
        users_seen[table.column("user_id").to_numpy() - 1] = True
        items_seen[table.column("item_id").to_numpy() - 1] = True
        folder = out / "interactions" / f"dt={config.day(day).isoformat()}"
        for part, offset in enumerate(range(0, table.num_rows, config.rows_per_file)):
            written += write_table(table.slice(offset, config.rows_per_file), folder / f"part-{part:05d}.parquet")
            files += 1
        rows += table.num_rows
        del table
    return {"out": str(out), "rows": rows, "days": config.days, "first_day": config.first_day.isoformat(),
            "last_day": config.end.isoformat(), "files": files, "users": config.users,
            "users_with_events": int(users_seen.sum()), "items": config.items,
            "items_with_events": int(items_seen.sum()), "categories": len(world.categories),
            "seed": config.seed, "mb": round(written / 2**20, 1), "seconds": round(time.monotonic() - started, 2)}
