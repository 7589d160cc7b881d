"""libABCD's wire without sockets: objects out of an unframed byte stream, and frames its client can read."""

import json

import orjson
import pytest

from runcontrol.bus.legacy import FRAME, MAX_OBJECT, PAD_KEY, Decoder, frame

TRICKY = [{"cmd": "a", "text": "braces } { and \"quotes\" and \\ backslashes \\\""}, {"cmd": "b", "n": [1, {"x": {}}]},
          {"cmd": "c", "é": "ünïcödé"}]


def decode_all(decoder, data, step):
    out = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    return out


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_objects_come_out_whole_however_the_stream_is_cut(step):
    data = b" \n".join(json.dumps(m).encode() for m in TRICKY) + b"\n"
    got = decode_all(Decoder(1 << 20), data, step)
    assert [m for m, _ in got] == TRICKY


def test_what_is_not_an_object_is_said_once_and_the_stream_goes_on():
    got = decode_all(Decoder(1 << 20), b'garbage here [1]{"cmd":"a"}42 {"cmd":"b"}{"cmd": }{"cmd":"c"}', 3)
    assert [(m or {}).get("cmd") or e[0] for m, e in got] == ["bad_json", "a", "not_object", "b", "bad_json", "c"]


def test_an_object_over_the_limit_is_too_large_and_the_next_one_is_read():
    big = b'{"cmd":"big","fill":"' + b"{" * 3000 + b'"}'
    got = decode_all(Decoder(1024), big + b'{"cmd":"after"}', 100)
    assert got[0][0] is None and got[0][1][0] == "too_large"
    assert [m["cmd"] for m, _ in got[1:]] == ["after"]


def object_of(size):
    """A message whose compact JSON is exactly `size` bytes: `{}`, `{"a":N}` or one with a filled field."""
    shortest = len(b'{"cmd":"x","f":""}')
    if size >= shortest:
        return {"cmd": "x", "f": "y" * (size - shortest)}
    return {} if size == 2 else {"a": int("1" * (size - len(b'{"a":}')))}


@pytest.mark.parametrize("size", [2, 7, 17, 18, 100, MAX_OBJECT, FRAME])
def test_every_frame_is_exactly_1024_bytes_of_one_compact_object(size):
    msg = object_of(size)
    data = orjson.dumps(msg)
    assert len(data) == size
    framed = frame(data)
    assert len(framed) == FRAME and b" " not in framed
    decoded = json.loads(framed)
    assert {k: v for k, v in decoded.items() if k != PAD_KEY} == msg


def test_an_object_that_cannot_be_padded_to_a_frame_is_not_framed():
    assert frame(orjson.dumps({"cmd": "x", "f": "y" * (MAX_OBJECT - 17)})) is None
    assert frame(b"x" * 5000) is None
