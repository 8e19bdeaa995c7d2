"""Values every wing agrees on: id range, the segment every unknown user gets, how a fallback list is
labelled, the nightly stages in order, the columns of a validated event."""

MAX_ID = 2**31 - 1  # ALS, the lake and the Redis codec keep user and item ids as 32-bit integers

GLOBAL_SEGMENT = "global"  # the trending list every unknown user gets
# model_version of a user's list that is a copy of a fallback list, not a model's own
SEGMENT_PREFIX = "segment:"
GLOBAL_SOURCE = f"popular:{GLOBAL_SEGMENT}"

# The nightly DAG's tasks, in order; `tune` is the weekly DAG's one task.
STAGES = ("drain_events", "privacy", "ingest", "validate", "analyze", "train", "score", "publish", "smoke",
          "housekeeping", "report")  # report runs after all of them, whether they failed or not
TUNE = "tune"

# a validated event; request_id and position (null when absent) tie it to the answer it came from
SILVER_COLUMNS = ("user_id", "item_id", "event_type", "value", "ts", "dt", "request_id", "position")
REQUEST_ID = r"^[0-9a-f]{1,32}$"  # as the lookup service makes them
MAX_POSITION = 1000  # model.top_k's limit
EVENT_KEY = ("user_id", "item_id", "event_type", "ts")  # one event; with the same value, an exact repeat
