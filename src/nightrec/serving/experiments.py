"""Online experiments as serving sees them: a definition (a name and its variants, each a share of
users and the model it serves), the deterministic assignment of users to variants, and its JSON
form in Redis (docs/redis-layout.md) and in MLflow (nightrec.modeling.experiment_store).

A user's variant is a pure function of the experiment and the user id: the same on every worker,
every night and in the Spark job that scores the variants, for known and unknown users alike.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from nightrec.serving.layout import check_variant

BUCKETS = 10_000  # a variant's share is whole basis points of the users
CHAMPION, CHALLENGER = "champion", "challenger"
_MODEL = re.compile(rf"^({CHAMPION}|{CHALLENGER}|[1-9][0-9]{{0,8}})$")
_MASK = (1 << 64) - 1
RULES = ("max_per_category",)  # rule settings a variant may override


class ExperimentError(ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    name: str
    model: str                    # "champion", "challenger" (followed each night) or a version number (pinned)
    weight: int                   # share of users, relative to the other variants' weights
    rules: dict[str, int] = field(default_factory=dict)  # e.g. {"max_per_category": 2}

    @property
    def follows_champion(self) -> bool:
        """Serves exactly what users outside an experiment get, so it needs no lists of its own."""
        return self.model == CHAMPION and not self.rules


def parse_variant(text: str) -> Variant:
    """NAME=MODEL:WEIGHT[:RULE=VALUE,...], e.g. control=champion:90, treatment=challenger:10,
    diverse=champion:10:max_per_category=2, pinned=12:50."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or len(parts) not in (2, 3):
        raise ExperimentError(f"variant {text!r}: write NAME=MODEL:WEIGHT[:RULE=VALUE,...], e.g. control=champion:90")
    model, weight = parts[0], parts[1]
    _check_name(name, "variant")
    if not _MODEL.match(model):
        raise ExperimentError(f"variant {name}: model {model!r} is not {CHAMPION}, {CHALLENGER} or a version number")
    if not weight.isdigit() or not 1 <= int(weight) <= BUCKETS:
        raise ExperimentError(f"variant {name}: weight {weight!r} must be a whole number from 1 to {BUCKETS}")
    rules = {}
    for setting in parts[2].split(",") if len(parts) == 3 else ():
        key, _, value = setting.partition("=")
        if key not in RULES or not value.isdigit() or int(value) < 1:
            raise ExperimentError(f"variant {name}: rule {setting!r} is not one of {', '.join(RULES)} = a positive "
                                  f"whole number")
        rules[key] = int(value)
    return Variant(name, model, int(weight), rules)


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    started_at: str               # ISO time of `experiment start`; part of the salt: a restart reshuffles
    until: str | None = None      # last day (YYYY-MM-DD) it runs; the nightly analysis ends it after that day

    def __post_init__(self):
        _check_name(self.name, "experiment")
        names = [v.name for v in self.variants]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ExperimentError(f"experiment {self.name}: needs two or more variants with distinct names, "
                                  f"got {names}")
        if sum(v.weight for v in self.variants) > BUCKETS:
            raise ExperimentError(f"experiment {self.name}: weights add up to more than {BUCKETS}")
        if self.until is not None:
            dt.date.fromisoformat(self.until)  # a ValueError names the bad date

    @property
    def id(self) -> str:
        """Names one run of the experiment: a version's variant lists belong to exactly one."""
        return f"{self.name}@{self.started_at}"

    @cached_property
    def salt(self) -> int:
        digest = hashlib.blake2b(f"{self.name}/{self.started_at}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    @cached_property
    def bounds(self) -> list[int]:
        """Upper bucket bound of each variant: variant i owns buckets [bounds[i-1], bounds[i])."""
        total, running, bounds = sum(v.weight for v in self.variants), 0, []
        for variant in self.variants:
            running += variant.weight
            bounds.append(round(BUCKETS * running / total))
        return bounds

    def assign(self, user_id: int) -> Variant:
        return self.variants[bisect.bisect_right(self.bounds, mix64(self.salt ^ int(user_id)) % BUCKETS)]

    def assign_many(self, user_ids: np.ndarray) -> np.ndarray:
        """Index into `variants` of each user's variant: assign() for a whole array (the score stage)."""
        buckets = mix64_array(np.uint64(self.salt) ^ np.asarray(user_ids, dtype=np.uint64)) % np.uint64(BUCKETS)
        return np.searchsorted(np.asarray(self.bounds, dtype=np.uint64), buckets, side="right")

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ExperimentError(f"experiment {self.name} has no variant {name!r}")

    @property
    def keyed(self) -> list[Variant]:
        """Variants that need lists of their own (the others serve the champion's)."""
        return [v for v in self.variants if not v.follows_champion]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Experiment:
        data = json.loads(text)
        return cls(data["name"], tuple(Variant(v["name"], v["model"], int(v["weight"]), dict(v.get("rules") or {}))
                                       for v in data["variants"]), data["started_at"], data.get("until"))


def _check_name(name: str, what: str) -> None:
    try:
        check_variant(name)
    except ValueError as error:
        raise ExperimentError(f"{what} {error}") from None


def mix64(x: int) -> int:
    """SplitMix64's finaliser: every input bit moves every output bit, so consecutive ids spread evenly."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix64_array(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as mix64 masks
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
