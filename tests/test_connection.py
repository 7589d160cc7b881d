"""The server's connection seam: routing and the registry over a second transport, kept in memory.

`MemoryConnection` is a transport of its own (as libABCD's raw TCP is): the
server takes its messages through `Server.take` and answers through `send`, never
knowing there is no ROUTER frame behind it. These are unit tests of the server's
core without I/O; each behaviour is also tested end to end over real sockets:

- test_clients_of_another_transport_register_route_and_are_listed:
  test_legacy.py::test_legacy_and_orbit_clients_share_one_registry_and_talk_both_ways (a second transport,
  listed with its name, routed both ways) and test_server.py::test_request_reply_round_trip_matches_by_id.
- test_a_target_whose_connection_closed_gets_the_request_one_answer:
  test_server.py::test_a_target_whose_connection_closed_answers_what_it_owed_client_lost_and_is_then_no_such_client.
- test_a_full_target_is_reported_and_owes_nothing:
  test_legacy.py::test_a_legacy_client_that_does_not_read_loses_messages_to_queue_full_and_never_stalls_the_server
  (`queue_full`, and no other answer once the target is gone) and
  test_server.py::test_slow_consumer_does_not_stall_others.
- test_garbage_on_another_transport_gets_an_error_and_no_registration:
  test_server.py::test_bad_json_error_says_where and ::test_unregistered_connection_may_only_hello_ping_bye,
  test_legacy.py::test_bad_input_on_a_legacy_socket_gets_the_error_a_zeromq_client_would_and_harms_nothing.
"""

import orjson
import pytest

import experiments
from runcontrol import protocol
from runcontrol.bus.connection import Closed, Connection
from runcontrol.bus.server import Server
from tests.helpers import write_experiment


class MemoryConnection(Connection):
    __slots__ = ("identity", "key", "inbox", "closed", "full")
    transport = "memory"

    def __init__(self, identity):
        self.identity, self.key = identity, None
        self.inbox, self.closed, self.full = [], False, False

    def send(self, data):
        if self.closed:
            raise Closed(self.identity)
        if self.full:
            return False
        self.inbox.append(orjson.loads(data))
        return True

    def describe(self):
        return f"memory:{self.identity}"

    def answers(self, msg_id):
        return [m for m in self.inbox if m.get("re") == msg_id]


@pytest.fixture
def bus(tmp_path):
    server = Server(experiments.load(write_experiment(tmp_path, "memory")))
    server.routing.settled()  # no previous instance: nothing to wait for
    yield server
    server.close()


def joined(bus, name):
    conn = MemoryConnection(name.encode())
    bus.take(conn, [protocol.encode(protocol.make_hello(name, id="h"))])
    assert conn.answers("h")[0]["result"]["name"] == name
    return conn


def test_clients_of_another_transport_register_route_and_are_listed(bus):
    alice, bob = joined(bus, "alice"), joined(bus, "bob")
    bus.take(alice, [protocol.encode({"to": "bob", "cmd": "ramp", "id": "r1", "volts": 4})])
    request = bob.inbox[-1]
    assert (request["cmd"], request["from"], request["volts"]) == ("ramp", "alice", 4)
    bus.take(bob, [protocol.encode({"to": "alice", "cmd": "_reply", "re": "r1", "ok": True, "result": 4})])
    assert alice.answers("r1")[0]["result"] == 4
    bus.take(alice, [protocol.encode({"cmd": "_list", "id": "l"})])
    listing = alice.answers("l")[0]["result"]
    assert [(c["name"], c["transport"]) for c in listing] == [("alice", "memory"), ("bob", "memory")]


def test_a_target_whose_connection_closed_gets_the_request_one_answer(bus):
    alice, bob = joined(bus, "alice"), joined(bus, "bob")
    bus.take(alice, [protocol.encode({"to": "bob", "cmd": "slow", "id": "first"})])  # bob owes this one
    bob.closed = True
    bus.take(alice, [protocol.encode({"to": "bob", "cmd": "ramp", "id": "second"})])
    assert [(m["code"]) for m in alice.answers("first")] == ["client_lost"]
    assert [(m["code"]) for m in alice.answers("second")] == ["no_such_client"]
    assert "bob" not in bus.registry.by_name


def test_a_full_target_is_reported_and_owes_nothing(bus):
    alice, bob = joined(bus, "alice"), joined(bus, "bob")
    bob.full = True
    bus.take(alice, [protocol.encode({"to": "bob", "cmd": "ramp", "id": "r"})])
    assert [m["code"] for m in alice.answers("r")] == ["queue_full"]
    assert bus.registry.by_name["bob"].waiting == {} and bus.registry.by_name["alice"].pending == 0


def test_garbage_on_another_transport_gets_an_error_and_no_registration(bus):
    stranger = MemoryConnection(b"x")
    bus.take(stranger, [b"{not json"])
    bus.take(stranger, [protocol.encode({"to": "alice", "cmd": "ramp", "id": 1})])
    assert [m["code"] for m in stranger.inbox] == ["bad_json", "not_registered"]
