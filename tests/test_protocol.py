"""Builders and parsers of the wire protocol, each the inverse of the other."""

import pytest
from hypothesis import given, strategies as st

from runcontrol import protocol
from runcontrol.errors import ClientLost, NoSuchClient, ProtocolError, Refused, RequestFailed

names = st.from_regex(protocol.NAME_RE, fullmatch=True).filter(lambda n: n != "server")
ids = st.one_of(st.text(max_size=64), st.integers(min_value=-10**18, max_value=10**18))
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=10)


@given(names, st.integers(0, 2**22), st.text(max_size=50),
       st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=5),
       st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_make_hello_parse_hello_are_inverse(name, pid, host, actions, meta):
    msg = protocol.decode(protocol.encode(protocol.make_hello(name, pid, host, actions, meta, id=1)))
    assert protocol.parse_hello(msg) == protocol.Hello(name, pid, host, actions, meta)


@given(ids, json_values)
def test_reply_round_trips_to_answer(re_id, result):
    answer = protocol.parse_answer(protocol.decode(protocol.encode(protocol.make_reply(re_id, result))))
    assert answer.ok and answer.re == re_id and answer.value() == result


@given(ids, st.text(max_size=40), st.text(min_size=1, max_size=20))
def test_refusal_round_trips_to_refused(re_id, error, code):
    answer = protocol.parse_answer(protocol.make_refusal(re_id, error, code))
    with pytest.raises(Refused) as info:
        answer.value()
    assert str(info.value) == error and info.value.code == code


@pytest.mark.parametrize("code,exception", [
    ("no_such_client", NoSuchClient), ("client_lost", ClientLost), ("too_large", RequestFailed)])
def test_server_errors_become_failures_not_refusals(code, exception):
    answer = protocol.parse_answer(protocol.make_error(code, "why", "r1"))
    with pytest.raises(exception) as info:
        answer.value()
    assert not isinstance(info.value, Refused) and info.value.code == code


@given(names, st.text(min_size=1, max_size=12), st.integers(1, 2**22), st.floats(0, 2e9))
def test_make_beacon_parse_beacon_are_inverse(experiment, instance, pid, started):
    data = protocol.make_beacon(experiment, instance, "tcp://127.0.0.1:9820", "tcp://127.0.0.1:9821",
                                pid, started)
    beacon = protocol.parse_beacon(data)
    assert (beacon.experiment, beacon.instance, beacon.pid, beacon.started) == (experiment, instance, pid, started)


@pytest.mark.parametrize("data", [b"x" * 3000, b"[]", b'{"service": "other"}', b"\xff\xfe",
                                  b'{"service": "orbit", "experiment": "x"}'])
def test_parse_beacon_refuses_what_is_not_a_beacon(data):
    with pytest.raises(ProtocolError):
        protocol.parse_beacon(data)


def test_wildcard_router_resolves_to_beacon_source():
    assert protocol.resolve_wildcard("tcp://*:9820", "127.0.0.2") == "tcp://127.0.0.2:9820"
    assert protocol.resolve_wildcard("tcp://0.0.0.0:9820", "127.0.0.3") == "tcp://127.0.0.3:9820"
    assert protocol.resolve_wildcard("tcp://127.0.0.1:9820", "127.0.0.3") == "tcp://127.0.0.1:9820"


@pytest.mark.parametrize("msg,code", [
    ({}, "no_cmd"), ({"cmd": ""}, "bad_field"), ({"cmd": "x" * 65}, "bad_field"), ({"cmd": 1}, "bad_field"),
    ({"cmd": "x", "to": ["a"]}, "bad_field"), ({"cmd": "x", "id": True}, "bad_field"),
    ({"cmd": "x", "id": "i" * 65}, "bad_field"), ({"cmd": "x", "re": 1.5}, "bad_field"),
])
def test_check_envelope_names_the_broken_field(msg, code):
    assert protocol.check_envelope(msg)[0] == code


def test_check_envelope_accepts_payload_untouched():
    assert protocol.check_envelope({"cmd": "x", "to": "a", "id": 3, "anything": {"nested": [1]}}) is None


@pytest.mark.parametrize("data,expected", [
    (b'{"id": "abc", "cmd": "x", "blob": "...', "abc"),
    (b'{"cmd": "x", "id": 42, "blob": "...', 42),
    (b'{"cmd": "x", "xid": "no", "blob": "...', None),
    (b'{"cmd": "x", "note": "say \\"id\\": 1", "blob": "...', None),
])
def test_find_id_in_prefix(data, expected):
    assert protocol.find_id_in_prefix(data) == expected


@pytest.mark.parametrize("data,expected", [
    (protocol.encode(protocol.make_hello("lta1", 42, "daq1", {"expose": "take one"}, {}, "h-1")), True),
    (b'{"name": "lta1", "id": 1, "cmd" : "_hello"}', True),
    (b'{"cmd": "_ping", "id": 1}', False),
    (b'{"cmd": "_hellos", "name": "lta1"}', False),
    (b'{"cmd": "note", "text": "say \\"cmd\\": \\"_hello\\""}', False),
    (b'{"cmd": "note", "blob": "' + b"x" * protocol.NEAR_START + b'", "x": {"cmd": "_hello"}}', False),
    (b"\xff not json", False),
])
def test_says_hello_reads_the_command_from_the_bytes_near_the_start(data, expected):
    assert protocol.says_hello(data) is expected


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_protocol_error(data):
    try:
        assert isinstance(protocol.decode(data), dict)
    except ProtocolError as exc:
        assert exc.code in (protocol.BAD_JSON, protocol.NOT_OBJECT)


@given(st.sampled_from(protocol.TRANSITIONS), st.integers(0, 10**6), st.text(max_size=30),
       st.dictionaries(st.text(max_size=8), json_values, max_size=3), st.booleans(), st.booleans())
def test_make_transition_parse_transition_are_inverse(transition, run, comment, params, abort, rejoin):
    msg = protocol.decode(protocol.encode(protocol.make_transition(transition, run, comment, params, abort, rejoin)))
    assert protocol.parse_transition(msg) == protocol.Transition(transition, run, comment, params, abort, rejoin)


def test_an_unknown_transition_is_a_bad_field():
    with pytest.raises(ProtocolError) as info:
        protocol.parse_transition({"cmd": "_transition", "transition": "jump", "run": 3})
    assert info.value.code == "bad_field" and "'jump'" in str(info.value) and "pause, resume" in str(info.value)


@given(names, st.text(min_size=1, max_size=12), st.floats(0.01, 100), st.floats(0.01, 100))
def test_make_welcome_parse_welcome_are_inverse(name, instance, heartbeat, timeout):
    welcome = protocol.parse_welcome(protocol.decode(protocol.encode(
        protocol.make_welcome(name, instance, heartbeat, timeout, "tcp://127.0.0.1:9821"))))
    assert welcome == protocol.Welcome(name, instance, heartbeat, timeout, "tcp://127.0.0.1:9821")


@pytest.mark.parametrize("result", [None, [], {"name": "x"}, {"server": 5}, {"server": "a", "heartbeat": "often"}])
def test_a_welcome_that_is_none_is_a_bad_field(result):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_welcome(result)
    assert info.value.code == "bad_field"


@given(st.one_of(st.none(), ids))
def test_make_ping_parse_ping_and_the_pong_echo_the_id(msg_id):
    ping = protocol.decode(protocol.encode(protocol.make_ping(msg_id)))
    assert protocol.parse_ping(ping) == msg_id
    pong = protocol.make_pong(protocol.parse_ping(ping))
    assert protocol.parse_answer(pong).re == msg_id
