import datetime as dt
from pathlib import Path

import pytest

from nightrec.data import lake, synth
from nightrec.pipeline import ingest, validate


@pytest.mark.spark
def test_generated_landing_folder_passes_ingest_and_validation(spark, make_settings):
    settings = make_settings()
    end = dt.date(2024, 6, 30)
    config = synth.Config(users=2000, items=500, events=20_000, days=3, seed=11, end=end)
    summary = synth.generate(config, Path(settings.path("landing")))
    ingested = ingest.run(spark, settings, end, lookback_days=3)
    assert (ingested.rows, ingested.days_with_files) == (20_000, 3)
    assert ingested.attributes == {"items": 500, "users": 2000}
    checked = validate.run(spark, settings, end, lookback_days=3)
    assert (checked.good_rows, checked.quarantined_rows) == (20_000, 0)
    assert all(n == 0 for n in checked.gx_unexpected.values())
    silver = lake.read_table(spark, settings.table("silver/interactions"))
    assert silver.select("user_id").distinct().count() == summary["users_with_events"]
    items = lake.read_table(spark, settings.table("bronze/items")).where("item_id = '1'").first()
    assert set(items.attributes) == {"title", "category", "available", "price", "released"}
