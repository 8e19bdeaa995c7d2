"""Hostile landing input: a day folder holding a good CSV and one file of each kind that other
teams' systems deliver. Each case checks the night's outcome, what the summary says, the
quarantine/files row and that silver holds exactly the good rows."""

import codecs
import csv
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import settings_environ
from helpers import HEADER, synthetic_rows, write_csv
from nightrec.data import lake, storage
from nightrec.data.spark import use_storage
from nightrec.pipeline import ingest, validate
from nightrec.settings import load_settings

DAY = dt.date(2024, 3, 10)
GOOD = synthetic_rows(DAY, users=20, items=8, per_user=2)   # 40 rows in good.csv
MORE = synthetic_rows(DAY, users=30, items=12, per_user=1, seed=9)[20:]  # 10 other good rows
INT64 = pa.int64()


def key(row) -> tuple:
    """A landing row as silver holds it (Spark returns UTC timestamps without a zone)."""
    return int(row[0]), int(row[1]), row[2], dt.datetime.fromisoformat(row[4].replace("Z", ""))


def jsonl(rows, columns=HEADER) -> str:
    return "\n".join(json.dumps(dict(zip(columns, r))) for r in rows) + "\n"


def parquet_table(rows, user_type=INT64) -> pa.Table:
    return pa.table({"user_id": pa.array([r[0] for r in rows]).cast(user_type), "item_id": [r[1] for r in rows],
                     "event_type": [r[2] for r in rows],
                     "ts": [dt.datetime.fromisoformat(r[4].replace("Z", "+00:00")) for r in rows]})


def csv_text(rows, header=HEADER, line_end="\n") -> str:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    return line_end.join(lines) + line_end


@dataclass
class Case:
    write: Callable[[Path], None]     # writes the hostile file(s) beside good.csv
    status: str                       # what the ingest says of the hostile file
    reason: str = ""                  # in the summary and in quarantine/files
    extra_good: list = field(default_factory=list)   # its rows that belong in silver
    duplicates: int = 0


def write_bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def write_text(name: str, text: str, encoding: str = "utf-8"):
    return lambda folder: (folder / name).write_text(text, encoding=encoding)


def truncated_parquet(folder: Path) -> None:
    pq.write_table(parquet_table(MORE), folder / "whole.parquet")
    data = (folder / "whole.parquet").read_bytes()
    (folder / "whole.parquet").unlink()
    (folder / "upload.parquet").write_bytes(data[: len(data) // 2])


def quoted_newlines(folder: Path) -> None:
    with open(folder / "notes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((*HEADER, "comment"))
        writer.writerows((*r, "first line\nsecond, with a comma") for r in MORE)


def symlink_to(rows):
    def write(folder: Path) -> None:
        target = write_csv(folder.parent.parent.parent / "elsewhere" / "shared.csv", rows)
        (folder / "linked.csv").symlink_to(target)
    return write


def nested_folder(folder: Path) -> None:
    write_csv(folder / "retry" / "more.csv", MORE)


def two_parquet_schemas(folder: Path) -> None:
    pq.write_table(parquet_table(MORE[:5], pa.int64()), folder / "a.parquet")
    pq.write_table(parquet_table(MORE[5:], pa.string()), folder / "b.parquet")  # ids as text in this producer's files


CASES = {
    # the four kinds of file that used to stop the day
    "csv with another header": Case(write_text("renamed.csv",
                                               csv_text(MORE, ("uid", "item_id", "event_type", "value", "ts"))),
                                    "quarantined",
                                    "no column(s) user_id; its columns are: uid, item_id, event_type, value, ts"),
    "csv missing a required column": Case(write_text("short.csv", csv_text([r[:4] for r in MORE], HEADER[:4])),
                                          "quarantined", "no column(s) ts"),
    "corrupt parquet": Case(write_bytes("junk.parquet", os.urandom(5000)), "quarantined",
                            "not a readable Parquet file"),
    "truncated parquet (partial upload)": Case(truncated_parquet, "quarantined", "not a readable Parquet file"),
    "0-byte csv": Case(write_bytes("empty.csv", b""), "empty", "0 bytes"),
    "header-only csv": Case(write_text("header.csv", csv_text([])), "empty", "a header and no rows"),
    "jsonl with one very long line": Case(write_text("long.jsonl",
                                                     json.dumps({"user_id": 1, "blob": "x" * 1_200_000}) + "\n"),
                                          "quarantined", "a line of over 1,000,000 bytes"),
    "re-delivered file under another name": Case(lambda f: write_csv(f / "good-retry.csv", GOOD), "ok",
                                                 duplicates=len(GOOD)),
    # schema drift
    "csv with reordered and extra columns": Case(
        write_text("wide.csv", csv_text([(r[4], r[2], r[1], r[0], "web") for r in MORE],
                                        ("ts", "event_type", "item_id", "user_id", "channel"))),
        "ok", extra_good=MORE),
    "csv without the optional value column": Case(write_text("novalue.csv",
                                                             csv_text([(r[0], r[1], r[2], r[4]) for r in MORE],
                                                                      ("user_id", "item_id", "event_type", "ts"))),
                                                  "ok", extra_good=MORE),
    "csv header in other case with blanks": Case(write_text("caps.csv", csv_text(MORE, (" User_ID", "Item_Id ",
                                                                                        "EVENT_TYPE", "value", "Ts"))),
                                                 "ok", extra_good=MORE),
    "parquet files of two schemas": Case(two_parquet_schemas, "ok", extra_good=MORE),
    "parquet without ts": Case(lambda f: pq.write_table(parquet_table(MORE).drop(["ts"]), f / "nots.parquet"),
                               "quarantined", "no column(s) ts"),
    "jsonl with other keys": Case(write_text("keys.jsonl", jsonl(MORE, ("uid", "iid", "event_type", "value", "ts"))),
                                  "quarantined", "no column(s) user_id, item_id"),
    "jsonl that is not json": Case(write_text("text.jsonl", "hello\nworld\n"), "quarantined", "not JSON lines"),
    "blank-lines-only jsonl": Case(write_text("blank.jsonl", "\n\n  \n"), "empty", "no records"),
    "good jsonl": Case(write_text("more.jsonl", jsonl(MORE)), "ok", extra_good=MORE),
    # encodings and line endings
    "utf-8 csv with a byte-order mark": Case(write_bytes("bom.csv", codecs.BOM_UTF8 + csv_text(MORE).encode()), "ok",
                                             extra_good=MORE),
    "utf-16 csv": Case(write_text("wide-chars.csv", csv_text(MORE), encoding="utf-16"), "quarantined", "UTF-16"),
    "csv with windows line endings": Case(write_text("crlf.csv", csv_text(MORE, line_end="\r\n")), "ok",
                                          extra_good=MORE),
    "csv with quoted newlines in a field": Case(quoted_newlines, "ok", extra_good=MORE),
    "binary junk named .csv": Case(write_bytes("junk.csv", b"\x89PNG\r\n\x1a\n" + os.urandom(3000)), "quarantined",
                                   "the header line is not UTF-8 text"),
    # what lands in folders
    "unknown file type": Case(write_text("notes.txt", "see ticket 42"), "quarantined", "unsupported file type '.txt'"),
    "file still being written": Case(write_text("events.csv.tmp", csv_text(MORE)), "skipped", "still being written"),
    "symlink to a good file": Case(symlink_to(MORE), "ok", extra_good=MORE),
    "dangling symlink": Case(lambda f: (f / "gone.csv").symlink_to(f / "nowhere.csv"), "quarantined",
                             "cannot be opened"),
    "nested folder": Case(nested_folder, "skipped", "a folder inside a day folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_file_beside_a_good_one_does_not_stop_the_day(spark, make_settings, name):
    case = CASES[name]
    settings = make_settings()
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "good.csv", GOOD)
    case.write(folder)

    ingested = ingest.run(spark, settings, DAY)
    checked = validate.run(spark, settings, DAY)

    hostile = sorted(p for p in folder.iterdir() if p.name != "good.csv")[0]
    quarantined = {Path(q["path"]).name: q["reason"] for q in ingested.quarantined_files}
    stored = {Path(r.path).name: r for r in lake.read_table(spark, settings.table("quarantine/files")).collect()}
    if case.status == "quarantined":
        assert case.reason in quarantined[hostile.name]
        assert stored[hostile.name].reason == quarantined[hostile.name] and stored[hostile.name].dt == DAY
        if hostile.exists():
            assert stored[hostile.name].size == hostile.stat().st_size and len(stored[hostile.name].sha256) == 64
    else:
        assert not quarantined and not stored
    if case.status == "empty":
        assert [Path(p).name for p in ingested.empty_files] == [hostile.name]
        assert case.reason == _inspected_reason(settings, hostile)
    if case.status == "skipped":
        assert [Path(s["path"]).name for s in ingested.skipped] == [hostile.name]
        assert case.reason in ingested.skipped[0]["reason"]

    silver = lake.read_table(spark, settings.table("silver/interactions")).collect()
    assert (sorted((r.user_id, r.item_id, r.event_type, r.ts) for r in silver)
            == sorted(key(r) for r in GOOD + case.extra_good))
    assert (checked.quarantined_rows, checked.duplicates_dropped) == (0, case.duplicates)


ON_DISK_ONLY = ("symlink to a good file", "dangling symlink")  # an object store has no links
# On S3 a copy of an object under another name has its ETag: read once, not dropped row by row.
ON_S3 = {**{name: case for name, case in CASES.items() if name not in ON_DISK_ONLY},
         "re-delivered file under another name": Case(CASES["re-delivered file under another name"].write, "skipped",
                                                      "the same object as")}


@pytest.mark.parametrize("name", list(ON_S3))
def test_a_hostile_object_on_s3_beside_a_good_one_does_not_stop_the_day(spark, s3_store, s3_endpoint, tmp_path,
                                                                         name):
    case = ON_S3[name]
    settings = load_settings("local", settings_environ(tmp_path, stores=s3_store, s3_endpoint=s3_endpoint))
    use_storage(spark)
    day = storage.join(settings.path("landing"), "interactions", f"dt={DAY}")
    storage.write_bytes(storage.join(day, "good.csv"), write_csv(tmp_path / "good.csv", GOOD).read_bytes())
    if case.status == "skipped":
        time.sleep(1.1)  # delivered after good.csv (S3 keeps modification times in whole seconds)
    folder = tmp_path / "delivered"
    folder.mkdir()
    case.write(folder)
    storage.upload_folder(folder, day)

    ingested = ingest.run(spark, settings, DAY)
    checked = validate.run(spark, settings, DAY)

    hostile = sorted(folder.iterdir())[0].name
    quarantined = {storage.name_of(q["path"]): q for q in ingested.quarantined_files}
    stored = {storage.name_of(r.path): r for r in lake.read_table(spark, settings.table("quarantine/files")).collect()}
    if case.status == "quarantined":
        assert case.reason in quarantined[hostile]["reason"] == stored[hostile].reason
        assert stored[hostile].etag == quarantined[hostile]["etag"] and len(stored[hostile].etag) == 32
        assert stored[hostile].size == storage.stat(stored[hostile].path).size and stored[hostile].modified
    else:
        assert not quarantined and not stored
    if case.status == "empty":
        assert [storage.name_of(p) for p in ingested.empty_files] == [hostile]
    if case.status == "skipped":
        assert [storage.name_of(s["path"]) for s in ingested.skipped] == [hostile]
        assert case.reason in ingested.skipped[0]["reason"]
    silver = lake.read_table(spark, settings.table("silver/interactions")).collect()
    assert (sorted((r.user_id, r.item_id, r.event_type, r.ts) for r in silver)
            == sorted(key(r) for r in GOOD + case.extra_good))
    assert checked.quarantined_rows == 0 and checked.duplicates_dropped == (0 if case.status == "skipped"
                                                                            else case.duplicates)


def test_an_object_put_again_keeps_its_first_delivery(spark, s3_store, s3_endpoint, tmp_path):
    """Erasure judges rows by when their file reached us: the same bytes put again are no new delivery."""
    settings = load_settings("local", settings_environ(tmp_path, stores=s3_store, s3_endpoint=s3_endpoint))
    use_storage(spark)
    uri = storage.join(settings.path("landing"), "interactions", f"dt={DAY}", "good.csv")
    data = csv_text(GOOD).encode()
    storage.write_bytes(uri, data)
    first = storage.stat(uri)
    ingest.run(spark, settings, DAY)
    time.sleep(1.1)  # S3 keeps modification times in whole seconds
    storage.write_bytes(uri, data)
    assert storage.stat(uri).modified > first.modified and storage.stat(uri).etag == first.etag
    ingested = ingest.run(spark, settings, DAY)
    bronze = lake.read_table(spark, settings.table("bronze/interactions")).collect()
    assert ingested.rows == len(GOOD) == len(bronze)
    assert {r.delivered_at.replace(tzinfo=dt.timezone.utc) for r in bronze} == {first.modified}
    assert {r.source_etag for r in bronze} == {first.etag}
    assert ingested.files == [{"path": uri, "size": first.size, "etag": first.etag,
                               "modified": storage.stat(uri).modified.isoformat()}]


def _inspected_reason(settings, path: Path) -> str:
    from nightrec.data.landing import inspect_file
    return inspect_file(path, DAY, settings.validation.max_line_bytes).reason


def test_a_day_of_nothing_but_unreadable_files_fails_naming_them_and_keeps_bronze(spark, make_settings):
    settings = make_settings()
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "good.csv", GOOD)
    ingest.run(spark, settings, DAY)
    (folder / "good.csv").unlink()
    (folder / "a.parquet").write_bytes(b"PAR1 not really")
    write_text("b.csv", csv_text(MORE, ("uid", "item_id", "event_type", "value", "ts")))(folder)
    with pytest.raises(ingest.FilesUnreadable) as failure:
        ingest.run(spark, settings, DAY)
    message = str(failure.value)
    assert f"interaction files of {DAY} cannot be read (2 unreadable" in message
    assert "a.parquet: not a readable Parquet file" in message and "b.csv: no column(s) user_id" in message
    assert f"nightrec run --ds {DAY} --lookback-days 1" in message
    assert {Path(r.path).name
            for r in lake.read_table(spark, settings.table("quarantine/files")).collect()} == {"a.parquet", "b.csv"}
    assert lake.read_table(spark, settings.table("bronze/interactions")).count() == len(GOOD)  # nothing lost


def test_one_junk_file_however_large_does_not_fail_a_day_of_good_data(spark, make_settings):
    settings = make_settings()
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "good.csv", GOOD)
    (folder / "huge.parquet").write_bytes(os.urandom(8 << 20))  # far larger than the good file
    ingested = ingest.run(spark, settings, DAY)
    assert ingested.rows == len(GOOD) and len(ingested.quarantined_files) == 1


def test_a_day_with_only_empty_files_is_a_valid_night_with_no_events(spark, make_settings):
    settings = make_settings()
    landing = Path(settings.path("landing")) / "interactions"
    before = DAY - dt.timedelta(days=1)
    write_csv(landing / f"dt={before}" / "good.csv", synthetic_rows(before, users=20, items=8, per_user=2))
    ingest.run(spark, settings, before)
    validate.run(spark, settings, before)
    (landing / f"dt={DAY}").mkdir()
    (landing / f"dt={DAY}" / "hourly-00.csv").write_bytes(b"")
    write_text("hourly-01.csv", csv_text([]))(landing / f"dt={DAY}")
    ingested = ingest.run(spark, settings, DAY)
    checked = validate.run(spark, settings, DAY)
    assert (ingested.rows, ingested.days_with_files, len(ingested.empty_files)) == (0, 1, 2)
    assert (checked.rows, checked.good_rows, checked.quarantined_rows) == (0, 0, 0)
    assert lake.read_table(spark, settings.table("silver/interactions")).count() == 40  # the day before stays


def test_repeats_are_dropped_across_the_lookback_and_conflicting_copies_quarantined(spark, make_settings):
    settings = make_settings()
    landing = Path(settings.path("landing")) / "interactions"
    before = DAY - dt.timedelta(days=1)
    earlier = synthetic_rows(before, users=20, items=8, per_user=2)
    write_csv(landing / f"dt={before}" / "a.csv", earlier)
    write_csv(landing / f"dt={before}" / "late-redelivery.csv", earlier[:15])  # a producer's retry, a night later
    conflicting = (GOOD[0][0], GOOD[0][1], GOOD[0][2], 5, GOOD[0][4])       # same event, another value
    write_csv(landing / f"dt={DAY}" / "b.csv", GOOD + [GOOD[3], conflicting])
    ingest.run(spark, settings, DAY, lookback_days=2)
    checked = validate.run(spark, settings, DAY, lookback_days=2)
    assert (checked.rows, checked.duplicates_dropped, checked.quarantined_rows) == (40 + 15 + 40 + 2, 16, 1)
    assert checked.bad_rows_by_rule["no_conflicting_copy"] == 1
    silver = lake.read_table(spark, settings.table("silver/interactions")).collect()
    assert sorted((r.user_id, r.item_id, r.event_type, r.ts) for r in silver) == sorted(key(r) for r in earlier + GOOD)


def test_stray_folders_under_interactions_are_reported_not_read(spark, make_settings):
    settings = make_settings()
    landing = Path(settings.path("landing")) / "interactions"
    write_csv(landing / f"dt={DAY}" / "good.csv", GOOD)
    write_csv(landing / "backup" / "old.csv", MORE)
    write_csv(landing / "dt=2024-3-9" / "typo.csv", MORE)
    ingested = ingest.run(spark, settings, DAY)
    assert ingested.rows == len(GOOD)
    assert [Path(p).name for p in ingested.stray_folders] == ["backup", "dt=2024-3-9"]
