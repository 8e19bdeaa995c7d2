"""Which raw values and quarantined lines belong to an erased user (nightrec.pipeline.privacy)."""

import json

from nightrec.pipeline.privacy import as_user_id, names_user

USERS = {42, 987654321}


def test_raw_ids_match_every_spelling_ingest_accepts():
    assert [as_user_id(v) for v in ("42", " 42 ", "+42", "0042", "4 2", "42.0", "x", "", None, "٤٢")] == [
        42, 42, 42, 42, None, None, None, None, None, None]


def test_quarantined_lines_match_on_their_user_or_any_mention_when_unreadable():
    assert names_user(json.dumps({"user_id": 42, "items": [7]}), USERS)
    assert names_user(json.dumps({"user_id": " 0042", "items": [7]}), USERS)
    assert not names_user(json.dumps({"user_id": 7, "items": [42]}), USERS)  # an item 42 is not user 42
    assert names_user('{"user_id": 987654321, "items": [1', USERS)  # cut off: not JSON, mentions them
    assert not names_user('{"user_id": 9876543210, "items": [1', USERS)  # a longer number is another one
    assert names_user("[42]", USERS) and not names_user("", USERS)  # a JSON list is no object: any mention
