"""Privacy: the night's second task, right after the streams are drained and before anything reads
the data, carries out opt-out and erasure requests (docs/privacy.md).

- The `{p}:privacy` stream goes into the `privacy/requests` table (id, at, kind, user_id, requester).
- Each erasure not done yet is carried out for all its users at once:
  - every Delta table under the lake with a `user_id` column, or a `raw` one (quarantined lines),
    loses their rows (DELETE, or MERGE on the values found, run by Spark's executors), and is then
    vacuumed with no retention and its log cut at a new checkpoint, so no file and no log entry of
    an earlier version (whose statistics or DELETE predicate may name an id) keeps them: time
    travel of those tables restarts here;
  - the landing files the product writes (drained streams: `stream-*.jsonl` of interactions and
    impressions) are rewritten without their rows; files delivered by others are not ours to edit,
    so ingest leaves out erased users' rows from files delivered before it was done (a backfill
    included);
  - Redis: the entries of theirs left in the event and impression streams, their lists and
    consumed items in every version, and at last their opt-out mark.
  - Models need nothing: no artifact holds per-user data (ALS folds users in at scoring time), and
    every model trained from now on reads the lake without them.
- A report per request goes into `privacy/reports` (what was removed, where, when) and the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType

from nightrec.data import lake, storage
from nightrec.data.landing import managed_files
from nightrec.data.spark import get_spark
from nightrec.pipeline import records
from nightrec.pipeline.runtime import stage_main
from nightrec.serving import audit, impressions
from nightrec.serving.client import connect
from nightrec.serving.layout import Keys
from nightrec.serving.privacy import user_keys
from nightrec.settings import Settings

REPORTS = "privacy/reports"
REPORT_SCHEMA = pa.schema([("request_id", pa.string()), ("user_id", pa.int64()),
                           ("done_at", pa.timestamp("ms", tz="UTC")), ("removed", pa.string())])
# The records of requests keep the user id on purpose: they prove what was asked and done.
RECORDS = ("privacy/requests", REPORTS, "audit/log")
log = logging.getLogger("nightrec.privacy")


@dataclass
class PrivacyResult:
    requests: int                                          # drained tonight
    erased_users: int = 0                                  # a count: task logs and XComs name no one
    removed: dict[str, int] = field(default_factory=dict)  # where -> rows, files or keys removed


def pending_erasures(settings: Settings) -> dict[str, int]:
    """Erasure requests without a report: request id -> user id."""
    requests = lake.small_table(settings.table(records.PRIVACY.table)).to_pylist()
    done = set()
    if lake.table_exists(settings.table(REPORTS)):
        done = set(lake.small_table(settings.table(REPORTS), ["request_id"])["request_id"].to_pylist())
    return {r["id"]: r["user_id"] for r in requests if r["kind"] == "erasure" and r["id"] not in done}


def as_user_id(raw: str | None) -> int | None:
    """A raw table's text id as ingest reads it (trimmed, digits); None when it is no id."""
    text = (raw or "").strip().removeprefix("+")
    return int(text) if text.isascii() and text.isdigit() else None


def names_user(raw: str | None, users: set[int]) -> bool:
    """A quarantined raw line (JSON, or anything unreadable) that is, or mentions, one of the users."""
    try:
        return as_user_id(str(json.loads(raw or "").get("user_id"))) in users
    except (ValueError, AttributeError):  # not a JSON object: any mention of the id counts
        return any(int(n) in users for n in re.findall(r"(?<![0-9])[0-9]{1,10}(?![0-9])", raw or ""))


def erase_from_lake(spark: SparkSession, settings: Settings, users: set[int]) -> dict[str, int]:
    """Rows deleted per table, by the executors; each table that held user rows is then vacuumed
    with no retention and its log cut. Ids are matched as ingest reads them: integer columns by
    value, text ids trimmed and read as a number, quarantined raw lines when they are or mention
    one of the users (matched values deleted by MERGE: no quoting of arbitrary text)."""
    removed = {}
    wanted = sorted(users)
    for name in lake.find_tables(settings.path("lake")):
        if name in RECORDS:
            continue
        root = settings.table(name)
        table = lake.read_table(spark, root)
        kinds = {f.name: f.dataType.typeName() for f in table.schema.fields}
        if "user_id" in kinds and kinds["user_id"] in ("integer", "long"):
            deleted = lake.delete_rows(spark, root, F.col("user_id").isin(wanted))
        elif "user_id" in kinds:
            deleted = lake.delete_rows(spark, root, F.expr("try_cast(trim(user_id) AS BIGINT)").isin(wanted))
        elif "raw" in kinds:
            mentions = F.udf(lambda raw: names_user(raw, users), BooleanType())
            theirs = table.select("raw").where(F.col("raw").isNotNull() & mentions("raw"))
            deleted = lake.delete_matching(spark, root, "raw", theirs) if theirs.limit(1).count() else 0
        else:
            continue
        lake.vacuum(spark, root, dt.timedelta(0))  # older versions' files may hold them too ...
        lake.cut_log(spark, root)                  # ... and log entries: statistics, a DELETE's predicate
        removed[f"lake:{name}"] = int(deleted)
    return removed


def erase_from_landing(settings: Settings, users: set[int]) -> dict[str, int]:
    """Rows removed from the landing files the product wrote (drained streams), rewritten in place."""
    removed = files = 0
    for entry in managed_files(settings.path("landing")):
        lines = storage.read_bytes(entry.uri).decode().splitlines(keepends=True)
        kept = [line for line in lines if not names_user(line, users)]
        if len(kept) == len(lines):
            continue
        removed, files = removed + len(lines) - len(kept), files + 1
        if kept:
            storage.write_bytes(entry.uri, "".join(kept).encode())
        else:
            storage.delete(entry.uri)
    return {"landing:rows": removed, "landing:files": files}


def erase_from_redis(client, keys: Keys, users: set[int]) -> dict[str, int]:
    """Their entries left in the streams, their keys in every version."""
    events = [i for i, f in client.xrange(keys.events) if int(f.get(b"user_id", b"0")) in users]
    if events:
        client.xdel(keys.events, *events)
    # An impression entry is a batch of many users' answers. A drained one goes whole (the landing
    # files hold the others'); one not drained yet is written again without theirs, then deleted.
    drained = records.order((client.get(keys.impressions_drained) or b"0-0").decode())
    batches = 0
    for stream_id, fields in client.xrange(keys.impressions):
        lines = fields[b"rows"].split(b"\n")
        kept = [line for line, answer in zip(lines, impressions.rows(fields)) if answer["user_id"] not in users]
        if len(kept) == len(lines):
            continue
        if kept and records.order(stream_id.decode()) > drained:
            client.xadd(keys.impressions, {b"fields": fields[b"fields"], b"rows": b"\n".join(kept)})
        client.xdel(keys.impressions, stream_id)
        batches += 1
    user_key_count = sum(client.delete(*user_keys(client, keys, u)) for u in users)
    return {"redis:events": len(events), "redis:impression_batches": batches, "redis:keys": user_key_count}


# Remove an erasure's mark only while it still names that erasure (a later request keeps its own);
# ARGV[2], when given, is the user's earlier opt-out, which outlives the erasure.
UNMARK_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


def unmark(client, keys: Keys, settings: Settings, pending: dict[str, int]) -> None:
    requests = lake.small_table(settings.table(records.PRIVACY.table)).to_pylist()
    opted_out = {r["user_id"]: f"opt_out:{r['id']}" for r in sorted(requests, key=lambda r: records.order(r["id"]))
                 if r["kind"] == "opt_out"}
    for request, user in pending.items():
        client.eval(UNMARK_SCRIPT, 1, keys.opted_out(user), f"erasure:{request}", opted_out.get(user, ""))


def run(settings: Settings, ds: dt.date) -> PrivacyResult:
    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster)
    try:
        drained = records.drain(client, keys, records.PRIVACY, settings)
        if not lake.table_exists(settings.table(records.PRIVACY.table)):
            return PrivacyResult(drained)
        pending = pending_erasures(settings)
        if not pending:
            return PrivacyResult(drained)
        users = set(pending.values())
        # Spark only on nights with erasures to carry out (most nights have none)
        spark = get_spark(settings, "nightrec-privacy")
        removed = {**erase_from_lake(spark, settings, users), **erase_from_landing(settings, users),
                   **erase_from_redis(client, keys, users)}
        unmark(client, keys, settings, pending)  # nothing of theirs is left: the mark goes last
        for request, user in pending.items():
            client.xadd(keys.audit, audit.entry("erasure_done", audit.night_actor(ds.isoformat()), user,
                                                request=request, removed=removed))
        records.drain(client, keys, records.AUDIT, settings)  # those rows name them: into the table now
        # The reports commit the erasure: a run killed before them does it all again (idempotent).
        done_at = dt.datetime.now(dt.timezone.utc)
        lake.append_small(settings.table(REPORTS), pa.Table.from_pylist(
            [{"request_id": request, "user_id": user, "done_at": done_at, "removed": json.dumps(removed)}
             for request, user in pending.items()], schema=REPORT_SCHEMA))
        log.info("erased %d users: %s", len(users), removed)
        return PrivacyResult(drained, len(users), removed)
    finally:
        client.close()


def main(argv=None) -> dict:
    return stage_main("privacy", run, argv, needs_spark=False)
