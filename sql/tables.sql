-- The lake's Delta tables as Spark SQL DDL, for registering them in a metastore where
-- delta-spark is available (LOCATION = paths.lake + the table name). nightrec itself writes them
-- with delta-rs (docs/lake.md); tests/integration/test_pipeline_to_redis.py keeps this file in step.
-- `value` columns hold each list packed as Redis stores it (docs/redis-layout.md), made by the score stage.
-- Columns added after a table's first version come last (tables written before gain them there).

CREATE TABLE IF NOT EXISTS nightrec.bronze_interactions (
  user_id STRING, item_id STRING, event_type STRING, value STRING, ts STRING,
  source_file STRING, dt DATE, ingested_at TIMESTAMP, request_id STRING, position STRING,
  delivered_at TIMESTAMP, source_etag STRING
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/bronze/interactions';

CREATE TABLE IF NOT EXISTS nightrec.bronze_items (
  item_id STRING, attributes MAP<STRING, STRING>, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/bronze/items';

CREATE TABLE IF NOT EXISTS nightrec.bronze_users (
  user_id STRING, attributes MAP<STRING, STRING>, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/bronze/users';

CREATE TABLE IF NOT EXISTS nightrec.silver_interactions (
  user_id INT, item_id INT, event_type STRING, value DOUBLE, ts TIMESTAMP, dt DATE,
  request_id STRING, position INT
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/silver/interactions';

CREATE TABLE IF NOT EXISTS nightrec.quarantine_interactions (
  user_id STRING, item_id STRING, event_type STRING, value STRING, ts STRING,
  source_file STRING, reasons ARRAY<STRING>, dt DATE, request_id STRING, position STRING
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/quarantine/interactions';

CREATE TABLE IF NOT EXISTS nightrec.silver_impressions (
  request_id STRING, user_id INT, experiment STRING, variant STRING, version STRING, model_version STRING,
  source STRING, items ARRAY<INT>, explored ARRAY<INT>, ts TIMESTAMP, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/silver/impressions';

CREATE TABLE IF NOT EXISTS nightrec.silver_user_outcomes (
  dt DATE, experiment STRING, variant STRING, personalized BOOLEAN, user_id INT, shown BIGINT, clicked INT,
  converted INT, events INT
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/silver/user_outcomes';

CREATE TABLE IF NOT EXISTS nightrec.silver_item_outcomes (
  dt DATE, item_id INT, impressions INT, clicks INT
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/silver/item_outcomes';

CREATE TABLE IF NOT EXISTS nightrec.quarantine_impressions (
  raw STRING, reasons ARRAY<STRING>, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/quarantine/impressions';

CREATE TABLE IF NOT EXISTS nightrec.gold_recommendations (
  user_id INT, item_ids ARRAY<INT>, scores ARRAY<FLOAT>, value BINARY, model_version STRING, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/gold/recommendations';

CREATE TABLE IF NOT EXISTS nightrec.gold_fallbacks (
  segment STRING, item_ids ARRAY<INT>, scores ARRAY<FLOAT>, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/gold/fallbacks';

CREATE TABLE IF NOT EXISTS nightrec.gold_similar_items (
  item_id INT, item_ids ARRAY<INT>, scores ARRAY<FLOAT>, value BINARY, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/gold/similar_items';

CREATE TABLE IF NOT EXISTS nightrec.gold_variant_recommendations (
  user_id INT, item_ids ARRAY<INT>, scores ARRAY<FLOAT>, value BINARY, variant STRING, model_version STRING,
  experiment STRING, dt DATE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/gold/variant_recommendations';

-- Records of requests and admin actions (nightrec.pipeline.records, privacy): they keep user ids on
-- purpose, as proof of what was asked and done (docs/privacy.md).
CREATE TABLE IF NOT EXISTS nightrec.privacy_requests (
  id STRING, at TIMESTAMP, kind STRING, user_id BIGINT, requester STRING
) USING DELTA LOCATION '${lake}/privacy/requests';

CREATE TABLE IF NOT EXISTS nightrec.privacy_reports (
  request_id STRING, user_id BIGINT, done_at TIMESTAMP, removed STRING
) USING DELTA LOCATION '${lake}/privacy/reports';

CREATE TABLE IF NOT EXISTS nightrec.audit_log (
  id STRING, at TIMESTAMP, action STRING, actor STRING, target STRING, detail STRING
) USING DELTA LOCATION '${lake}/audit/log';

-- Operations records, written in the stage's process with delta-rs (nightrec.pipeline.nights, alerts,
-- nightrec.data.volume): figures and messages, no user ids.
CREATE TABLE IF NOT EXISTS nightrec.ops_stage_runs (
  night STRING, stage STRING, state STRING, finished_at TIMESTAMP, seconds DOUBLE, summary STRING, error STRING
) USING DELTA LOCATION '${lake}/ops/stage_runs';

CREATE TABLE IF NOT EXISTS nightrec.ops_day_profiles (
  dt STRING, metric STRING, value DOUBLE
) USING DELTA PARTITIONED BY (dt) LOCATION '${lake}/ops/day_profiles';

CREATE TABLE IF NOT EXISTS nightrec.ops_alerts (
  at TIMESTAMP, cause STRING, severity STRING, night STRING, stage STRING, summary STRING, command STRING,
  report STRING, sent_to ARRAY<STRING>, failed ARRAY<STRING>, folded BOOLEAN, silenced STRING
) USING DELTA LOCATION '${lake}/ops/alerts';

CREATE TABLE IF NOT EXISTS nightrec.ops_silences (
  at TIMESTAMP, prefix STRING, until TIMESTAMP, reason STRING, by STRING
) USING DELTA LOCATION '${lake}/ops/silences';
