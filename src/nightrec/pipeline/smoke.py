"""Smoke check: ask the lookup service (in process, against the live Redis) for real answers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow.compute as pc
from fastapi.testclient import TestClient

from nightrec.constants import GLOBAL_SOURCE, MAX_ID, SEGMENT_PREFIX
from nightrec.data import lake
from nightrec.pipeline.runtime import stage_main
from nightrec.serving.api import create_app
from nightrec.serving.client import connect
from nightrec.serving.layout import Keys
from nightrec.settings import Settings


class SmokeFailed(RuntimeError):
    pass


@dataclass
class SmokeResult:
    live_version: str
    personalized_items: int
    unknown_user_source: str


def unmarked(settings: Settings, personal, tries: int = 100) -> int:
    """A user with a personal list who has not opted out since the score stage ran."""
    keys, client = Keys(settings.redis.prefix), connect(settings.redis.url, settings.redis.cluster)
    try:
        candidates = pc.sort_indices(personal)[:tries]
        return next((u for u in pc.take(personal, candidates).to_pylist() if not client.exists(keys.opted_out(u))),
                    pc.min(personal).as_py())
    finally:
        client.close()


def run(settings: Settings, ds: dt.date) -> SmokeResult:
    gold = lake.small_table(settings.table("gold/recommendations"), ["user_id", "model_version"], [ds])
    if gold.num_rows == 0:
        raise SmokeFailed(f"gold/recommendations has no users for {ds}")
    fallback = pc.or_(pc.starts_with(gold["model_version"], SEGMENT_PREFIX),
                      pc.equal(gold["model_version"], GLOBAL_SOURCE))
    personal = gold.filter(pc.invert(fallback))["user_id"]
    if len(personal) == 0:
        raise SmokeFailed(f"gold/recommendations has no personal lists for {ds}")
    users = gold["user_id"]
    known, unknown = unmarked(settings, personal), pc.max(users).as_py() + 1
    if unknown > MAX_ID:
        taken = set(users.to_pylist())
        unknown = next(u for u in range(1, MAX_ID) if u not in taken)
    with TestClient(create_app(settings, internal=True)) as client:
        health = client.get("/healthz").json()
        personal = client.get(f"/v1/users/{known}/recommendations", params={"k": 10})
        fallback = client.get(f"/v1/users/{unknown}/recommendations", params={"k": 10})
        bad_k = client.get(f"/v1/users/{known}/recommendations", params={"k": 0})
    problems = []
    if personal.status_code != 200 or len(personal.json()["items"]) != 10 \
            or personal.json()["source"] != "personalized":
        problems.append(f"user {known}: {personal.status_code} {personal.text[:200]}")
    if fallback.status_code != 200 or fallback.json()["source"] != "trending":
        problems.append(f"unknown user {unknown}: {fallback.status_code} {fallback.text[:200]}")
    if bad_k.status_code != 422:
        problems.append(f"k=0 answered {bad_k.status_code}, expected 422")
    if problems:
        raise SmokeFailed("lookup service smoke check failed: " + "; ".join(problems))
    return SmokeResult(health["live_version"], len(personal.json()["items"]), fallback.json()["source"])


def main(argv=None) -> dict:
    return stage_main("smoke", run, argv, needs_spark=False)
