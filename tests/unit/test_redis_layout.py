import struct

import pytest

from nightrec.redis_layout import Keys, decode, encode


def test_keys_are_exactly_as_documented():
    keys = Keys("nightrec")
    assert keys.live == "{nightrec}:live"
    assert keys.previous == "{nightrec}:previous"
    assert keys.versions == "{nightrec}:versions"
    assert keys.meta("19980422-x") == "nightrec:v:19980422-x:meta"
    assert keys.user("19980422-x", 42) == "nightrec:v:19980422-x:u:42"
    assert keys.fallback("19980422-x") == "nightrec:v:19980422-x:fb:global"
    assert keys.version_pattern("v1") == "nightrec:v:v1:*"


def test_version_ids_cannot_smuggle_key_syntax():
    for bad in ("", "a:b", "a*", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="invalid version id"):
            Keys().user(bad, 1)


def test_encoding_is_byte_exact():
    value = encode([7, 300], [1.0, 0.5])
    assert value == (b"\x01" + b"\x02\x00"                    # codec 1, two items
                     + struct.pack("<ii", 7, 300)              # int32 item ids
                     + b"\x00\x3c" + b"\x00\x38")              # float16 1.0 and 0.5
    assert len(encode(range(1, 101), [0.1] * 100)) == 3 + 100 * 6


def test_round_trip_keeps_order_and_scores_to_float16_precision():
    ids = [5, 1, 2**31 - 1, 99]
    ids_back, scores_back = decode(encode(ids, [0.9, 0.7, 0.333, 0.0]))
    assert ids_back == ids
    assert scores_back == pytest.approx([0.9, 0.7, 0.333, 0.0], abs=1e-3)
    assert decode(encode([], [])) == ([], [])


@pytest.mark.parametrize("ids, scores, message", [
    ([0], [1.0], "1..2\\^31-1"),
    ([2**31], [1.0], "1..2\\^31-1"),
    ([1, 2], [1.0], "equally long"),
])
def test_encode_rejects_what_the_codec_cannot_hold(ids, scores, message):
    with pytest.raises(ValueError, match=message):
        encode(ids, scores)


@pytest.mark.parametrize("value, message", [
    (b"\x01", "too short"),
    (b"\x02\x00\x00", "unknown codec version 2"),
    (b"\x01\x02\x00" + b"\x00" * 6, "needs 15"),
])
def test_decode_rejects_corrupt_values(value, message):
    with pytest.raises(ValueError, match=message):
        decode(value)
