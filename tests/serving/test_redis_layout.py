import struct

import numpy as np
import pytest

from nightrec.serving.layout import (
    Keys,
    decode,
    decode_consumed,
    decode_id_set,
    decode_user,
    encode,
    encode_consumed,
    encode_id_set,
    encode_many,
    encode_segment_ref,
)


def test_keys_are_exactly_as_documented():
    keys = Keys("nightrec")
    assert keys.live == "{nightrec}:live"
    assert keys.previous == "{nightrec}:previous"
    assert keys.versions == "{nightrec}:versions"
    assert keys.sequence == "{nightrec}:seq"
    assert keys.events == "{nightrec}:events"
    assert keys.events_drained == "{nightrec}:events:drained"
    assert keys.consumed(42) == "nightrec:consumed:{42}"
    assert keys.meta("19980422.7") == "nightrec:v:19980422.7:meta"
    assert keys.user("19980422.7", 42) == "nightrec:v:19980422.7:u:{42}"
    assert keys.users("19980422.7", [42, 7]) == [keys.user("19980422.7", 42), keys.user("19980422.7", 7)]
    assert keys.similars("19980422.7", [50]) == [keys.similar("19980422.7", 50)]
    assert keys.fallback("19980422.7") == "nightrec:v:19980422.7:fb:global"
    assert keys.fallback("19980422.7", "age=25-34|gender=F") == "nightrec:v:19980422.7:fb:age=25-34|gender=F"
    assert keys.similar("19980422.7", 50) == "nightrec:v:19980422.7:sim:50"
    assert keys.category("19980422.7", "children's") == "nightrec:v:19980422.7:cat:children's"
    assert keys.unavailable("19980422.7") == "nightrec:v:19980422.7:unavailable"
    assert keys.version_pattern("v1") == "nightrec:v:v1:*"
    assert keys.experiment == "{nightrec}:experiment"
    assert keys.explore == "{nightrec}:explore"
    assert keys.impressions == "{nightrec}:impressions"
    assert keys.impressions_drained == "{nightrec}:impressions:drained"
    assert keys.variant_user("19980422.7", "treatment", 42) == "nightrec:v:19980422.7:x:treatment:u:{42}"
    assert keys.variant_users("19980422.7", "b", [42, 7]) == [keys.variant_user("19980422.7", "b", 42),
                                                              keys.variant_user("19980422.7", "b", 7)]


def test_version_ids_names_and_prefixes_cannot_smuggle_key_syntax():
    for bad in ("", "a:b", "a*", "x" * 65, "a b", "{x}"):
        with pytest.raises(ValueError, match="invalid version id"):
            Keys().user(bad, 1)
    for bad in ("", "{tag}", "a*", "x" * 101, " lead", "new\nline"):
        with pytest.raises(ValueError, match="invalid segment name"):
            Keys().fallback("v1", bad)
    with pytest.raises(ValueError, match="invalid key prefix"):
        Keys("{x}")
    for bad in ("", "Treatment", "a:b", "{x}", "x" * 33, "-a"):
        with pytest.raises(ValueError, match="invalid name"):
            Keys().variant_user("v1", bad, 1)


def test_encoding_is_byte_exact():
    value = encode([7, 300], [1.0, 0.5])
    assert value == (b"\x01" + b"\x02\x00"                    # codec 1, two items
                     + struct.pack("<ii", 7, 300)              # int32 item ids
                     + b"\x00\x3c" + b"\x00\x38")              # float16 1.0 and 0.5
    assert len(encode(range(1, 101), [0.1] * 100)) == 3 + 100 * 6
    assert encode_segment_ref("gender=F") == b"\x02gender=F"
    assert encode_id_set([300, 7, 7]) == b"\x03" + struct.pack("<I", 2) + struct.pack("<ii", 7, 300)


def test_consumed_items_are_appended_int32s():
    value = encode_consumed(7) + encode_consumed(300) + encode_consumed(7)
    assert value == struct.pack("<iii", 7, 300, 7)
    assert decode_consumed(value) == {7, 300} and decode_consumed(None) == set()
    with pytest.raises(ValueError):
        encode_consumed(0)


@pytest.mark.parametrize("lengths", [[100, 0, 3, 100, 1], [100] * 7, [0, 0], [1]])
def test_encode_many_equals_encode_row_by_row(lengths):
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(1, 2**31 - 1, offsets[-1])
    scores = rng.normal(size=offsets[-1]).astype(np.float32)
    many = encode_many(offsets, ids, scores)
    assert many == [encode(ids[s:e], scores[s:e]) for s, e in zip(offsets[:-1], offsets[1:])]


def test_round_trip_keeps_order_and_scores_to_float16_precision():
    ids = [5, 1, 2**31 - 1, 99]
    ids_back, scores_back = decode(encode(ids, [0.9, 0.7, 0.333, 0.0]))
    assert ids_back == ids
    assert scores_back == pytest.approx([0.9, 0.7, 0.333, 0.0], abs=1e-3)
    assert decode(encode([], [])) == ([], [])
    assert decode(encode(ids, [0.9, 0.7, 0.333, 0.0]), limit=2) == (ids[:2], scores_back[:2])
    assert decode(encode([1, 2], [1e6, -np.inf]))[1] == [65504.0, -65504.0]  # float16's range, never inf
    assert decode_user(encode([3], [1.0])) == ([3], [1.0])
    assert decode_user(encode_segment_ref("age=25-34|gender=F")) == "age=25-34|gender=F"
    assert decode_id_set(encode_id_set([9, 2])) == {2, 9}


@pytest.mark.parametrize("ids, scores, message", [
    ([0], [1.0], "1..2\\^31-1"),
    ([2**31], [1.0], "1..2\\^31-1"),
    ([1, 2], [1.0], "equally long"),
])
def test_encode_rejects_what_the_codec_cannot_hold(ids, scores, message):
    with pytest.raises(ValueError, match=message):
        encode(ids, scores)
    with pytest.raises(ValueError):
        encode_many([0, len(ids)], ids, scores)


@pytest.mark.parametrize("value, message", [
    (b"\x01", "too short"),
    (b"\x03\x00\x00", "expected a ranked list"),
    (b"\x01\x02\x00" + b"\x00" * 6, "needs 15"),
    (b"\x02", "no valid segment name"),
    (b"\x02\xff\xfe", "no valid segment name"),
    (b"\x02{bad}", "no valid segment name"),
])
def test_decode_rejects_corrupt_values(value, message):
    with pytest.raises(ValueError, match=message):
        decode_user(value)


def test_decode_id_set_rejects_corrupt_values():
    for value in (b"\x03", b"\x01\x01\x00\x00\x00" + b"\x00" * 4, b"\x03\x02\x00\x00\x00" + b"\x00" * 4):
        with pytest.raises(ValueError):
            decode_id_set(value)


def test_item_stats_are_byte_exact_and_checked():
    from nightrec.serving.layout import decode_item_stats, encode_item_stats

    value = encode_item_stats([7, 300], [10, 0], [2, 0])
    assert value == b"\x04" + struct.pack("<I", 2) + struct.pack("<ii", 7, 300) + struct.pack("<II", 10, 0) \
        + struct.pack("<II", 2, 0)
    ids, shown, clicked = decode_item_stats(value)
    assert (ids.tolist(), shown.tolist(), clicked.tolist()) == ([7, 300], [10, 0], [2, 0])
    with pytest.raises(ValueError, match="clicks <= impressions"):
        encode_item_stats([7], [1], [2])
    with pytest.raises(ValueError, match="not a codec 4"):
        decode_item_stats(value[:-1])
