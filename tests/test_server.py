"""The central server, spoken to over raw sockets as a foreign client would."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import zmq

from runcontrol import discovery
from tests.helpers import (ROOT, EventWatcher, RawClient, ServerProcess, env_for_children, stop_process, wait_until,
                           write_experiment)


@pytest.fixture
def raw(server):
    made = []

    def make(name=None):
        client = RawClient(server.router)
        if name:
            assert client.hello(name)["ok"] is True
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def watcher(server):
    watch = EventWatcher(server.events).sync(server.router)
    yield watch
    watch.close()


def test_route_to_named_client_stamps_from_and_ts(raw):
    alice, bob = raw("alice"), raw("bob")
    before = time.time()
    alice.send({"to": "bob", "cmd": "ramp", "volts": 40, "from": "mallory", "ts": 1})
    msg = bob.recv_until(lambda m: m["cmd"] == "ramp")
    assert msg["from"] == "alice"
    assert msg["volts"] == 40 and msg["to"] == "bob"
    assert before - 1 <= msg["ts"] <= time.time() + 1


def test_request_reply_round_trip_matches_by_id(raw):
    alice, bob = raw("alice"), raw("bob")
    alice.send({"to": "bob", "cmd": "status", "id": "q1"})
    request = bob.recv_until(lambda m: m["cmd"] == "status")
    bob.send({"to": request["from"], "cmd": "_reply", "re": request["id"], "ok": True, "result": 7})
    reply = alice.recv_until(lambda m: m.get("re") == "q1")
    assert reply["ok"] is True and reply["result"] == 7 and reply["from"] == "bob"
    assert [m for m in alice.until_pong() if m.get("re") == "q1"] == []  # exactly one answer


def test_broadcast_reaches_everyone_but_sender_and_is_published_once(raw, watcher):
    alice, bob, carol = raw("alice"), raw("bob"), raw("carol")
    answer = alice.request({"to": "*", "cmd": "wake"})
    assert answer["cmd"] == "_reply" and sorted(answer["result"]["to"]) == ["bob", "carol"]
    for other in (bob, carol):
        msg = other.recv_until(lambda m: m["cmd"] == "wake")
        assert msg["from"] == "alice" and "id" not in msg
    watcher.wait_for("msg.*", cmd="wake")
    assert sum(1 for t, m in watcher.items if t == "msg.*" and m["cmd"] == "wake") == 1


def test_routed_messages_are_published_on_msg_topic(raw, watcher):
    alice = raw("alice")
    raw("bob")
    alice.send({"to": "bob", "cmd": "expose", "seconds": 3})
    published = watcher.wait_for("msg.bob", cmd="expose")
    assert published["from"] == "alice" and published["seconds"] == 3


ERROR_CASES = [
    ("bad_json", b'{"cmd": "x", ', False),
    ("not_object", b'[1, 2, 3]', False),
    ("no_cmd", b'{"to": "server", "id": 5}', True),
    ("bad_field", b'{"cmd": 42, "id": 5}', True),
    ("bad_field", b'{"cmd": "x", "to": 3, "id": 5}', True),
    ("bad_field", b'{"cmd": "x", "id": {"a": 1}}', False),
    ("bad_field", b'{"cmd": "_logs", "n": "many", "id": 5}', True),
    ("unknown_command", b'{"cmd": "_reboot", "id": 5}', True),
    ("no_such_client", b'{"to": "nobody", "cmd": "x", "id": 5}', True),
    ("bad_name", b'{"cmd": "_hello", "name": "server", "id": 5}', True),
    ("bad_name", b'{"cmd": "_hello", "name": "-lead", "id": 5}', True),
    ("bad_name", b'{"cmd": "_hello", "name": "has space", "id": 5}', True),
]


@pytest.mark.parametrize("code,data,has_re", ERROR_CASES)
def test_bad_message_gets_error_code_with_re(raw, code, data, has_re):
    client = raw("sender")
    client.send(data)
    error = client.recv_until(lambda m: m["cmd"] == "_error")
    assert error["code"] == code, error
    assert error["error"]
    assert error.get("re") == (5 if has_re else None)
    assert client.request({"cmd": "_ping"})["cmd"] == "_pong"  # still served


def test_bad_json_error_says_where(raw):
    client = raw()
    client.send(b'{"cmd": "x",, }')
    error = client.recv_until(lambda m: m["cmd"] == "_error")
    assert error["code"] == "bad_json" and "column" in error["error"]


def test_multipart_message_gets_bad_frames(raw):
    client = raw()
    client.send_frames([b'{"cmd": "_ping"}', b'{"cmd": "_ping"}'])
    assert client.recv_until(lambda m: m["cmd"] == "_error")["code"] == "bad_frames"


def test_too_large_message_refused_with_re_and_server_serves_on(raw):
    client = raw("big")
    other = raw("small")
    client.send(b'{"id": "huge-1", "cmd": "x", "to": "small", "blob": "' + b"a" * (2 << 20) + b'"}')
    error = client.recv_until(lambda m: m["cmd"] == "_error")
    assert error["code"] == "too_large" and error["re"] == "huge-1"
    assert other.request({"cmd": "_ping"})["cmd"] == "_pong"


def test_a_message_of_300_kib_is_routed_whole_and_stamped(raw):
    """From 64 KiB up the server reads and sends a message without copying it: it arrives as it was sent."""
    alice, bob = raw("alice"), raw("bob")
    blob = "".join(chr(ord("a") + n % 26) for n in range(300_000))
    alice.send({"to": "bob", "cmd": "data", "blob": blob})
    got = bob.recv_until(lambda m: m.get("cmd") == "data", 10)
    assert (got["blob"], got["from"], type(got["ts"])) == (blob, "alice", float)


def test_unregistered_connection_may_only_hello_ping_bye(raw):
    client = raw()
    assert client.request({"cmd": "_ping"})["cmd"] == "_pong"
    for msg in ({"cmd": "_list"}, {"to": "anyone", "cmd": "x"}, {"cmd": "_publish", "topic": "t", "data": 1}):
        answer = client.request(msg)
        assert answer["cmd"] == "_error" and answer["code"] == "not_registered", answer
    assert client.request({"cmd": "_bye"})["ok"] is True


def test_one_way_message_that_goes_nowhere_still_gets_error(raw):
    client = raw("lonely")
    client.send({"to": "nobody", "cmd": "x"})
    error = client.recv_until(lambda m: m["cmd"] == "_error")
    assert error["code"] == "no_such_client" and "re" not in error


def test_duplicate_live_name_refused(raw):
    first = raw("lta1")
    second = raw()
    # The holder answers the server's probe ping, so the claim is refused.
    second.send({"cmd": "_hello", "name": "lta1", "id": "h"})
    probe = first.recv_until(lambda m: m["cmd"] == "_ping" and "id" in m)
    first.send({"cmd": "_pong", "re": probe["id"]})
    answer = second.recv_until(lambda m: m.get("re") == "h")
    assert answer["cmd"] == "_error" and answer["code"] == "name_taken"
    assert first.request({"cmd": "_ping"})["cmd"] == "_pong"


def test_same_name_hello_again_is_answered_as_first(raw):
    client = raw("lta1")
    again = client.hello("lta1")
    assert again["ok"] is True and again["result"]["name"] == "lta1"


def test_hello_with_new_name_frees_old_one(raw):
    client = raw("old-name")
    assert client.hello("new-name")["ok"] is True
    other = raw("old-name")  # free at once: no probe, no wait
    names = [c["name"] for c in other.request({"cmd": "_list"})["result"]]
    assert "new-name" in names and names.count("old-name") == 1


@pytest.mark.parametrize("how,signum,reason", [
    ("killed", signal.SIGKILL, "its connection is closed"),   # at once: no grace waited
    ("hung", signal.SIGSTOP, "it did not answer a ping"),     # after the grace
])
def test_name_taken_over_when_holder_is_gone(echo_program, raw, watcher, how, signum, reason):
    holder = echo_program("lta1")
    os.killpg(holder.pid, signum)
    if signum == signal.SIGKILL:
        holder.wait(10)
    claimant = raw()
    assert claimant.hello("lta1")["ok"] is True
    assert watcher.wait_for("event.client_replaced", name="lta1")["reason"] == reason


def test_a_claimed_name_goes_to_the_claimant_once_its_holder_says_bye(raw, watcher):
    holder, claimant = raw("lta1"), raw()
    claimant.send({"cmd": "_hello", "name": "lta1", "id": "h"})
    holder.recv_until(lambda m: m["cmd"] == "_ping" and str(m.get("id", "")).startswith("claim-"))  # it waits
    holder.send({"cmd": "_bye"})
    answer = claimant.recv_until(lambda m: m.get("re") == "h")
    assert answer.get("ok") is True and answer["result"]["name"] == "lta1", answer
    assert watcher.wait_for("event.client_left", name="lta1")["reason"] == "said goodbye"
    wait_until(lambda: len([1 for t, m in watcher.items if t == "event.client_joined" and m["name"] == "lta1"]) == 2)
    assert not [m for t, m in watcher.items if t == "event.client_replaced"]   # it left: nobody was replaced


def test_silent_client_is_lost_after_timeout(echo_program, watcher):
    sleeper = echo_program("sleepy")
    os.killpg(sleeper.pid, signal.SIGSTOP)
    lost = watcher.wait_for("event.client_lost", name="sleepy", timeout_s=15)
    assert lost["reason"].startswith("silent for")
    os.killpg(sleeper.pid, signal.SIGCONT)  # it notices and registers again
    wait_until(lambda: len([1 for t, m in watcher.items
                            if t == "event.client_joined" and m["name"] == "sleepy"]) == 2, 15)


def test_heartbeat_pings_keep_coming_to_a_client_that_answers(raw):
    client = raw("hb")
    pings = []
    while len(pings) < 3:
        msg = client.recv(10)  # the heartbeat is 0.5 s in the test experiment
        if msg["cmd"] == "_ping":
            pings.append(msg)
            client.send({"cmd": "_pong"})
    assert all(p["from"] == "server" and "id" not in p for p in pings)
    assert pings[0]["ts"] < pings[1]["ts"] < pings[2]["ts"]
    assert "hb" in [c["name"] for c in client.request({"cmd": "_list"})["result"]]  # answering kept it registered


def test_request_to_client_that_is_lost_fails_with_client_lost(echo_program, raw):
    sleeper = echo_program("sleepy")
    asker = raw("asker")
    os.killpg(sleeper.pid, signal.SIGSTOP)
    asker.send({"to": "sleepy", "cmd": "echo", "id": "never"})
    error = asker.recv_until(lambda m: m.get("re") == "never", timeout_s=15)
    assert error["cmd"] == "_error" and error["code"] == "client_lost"
    assert [m for m in asker.until_pong() if m.get("re") == "never"] == []  # exactly one answer


def test_list_and_status_describe_clients_and_server(raw, server):
    client = raw()
    assert client.hello("lta1", host="daq1", actions={"expose": "take one"}, meta={"run": True})["ok"]
    listing = client.request({"cmd": "_list"})["result"]
    entry = next(c for c in listing if c["name"] == "lta1")
    assert entry["host"] == "daq1" and entry["actions"] == {"expose": "take one"}
    assert entry["meta"] == {"run": True} and entry["pid"] == os.getpid()
    for key in ("connected_at", "last_seen", "msgs_in", "msgs_out"):
        assert key in entry
    status = client.request({"cmd": "_status"})["result"]
    assert status["experiment"] == server.name and status["pid"] == server.proc.pid
    assert status["clients"] == 1 and status["router"] == server.router
    assert status["instance"] == server.beacon.instance and status["uptime"] >= 0


def test_stats_show_rates_refreshed(raw):
    alice = raw("alice")
    raw("bob")
    for i in range(200):
        alice.send({"to": "bob", "cmd": "tick", "i": i})

    def busy():
        stats = alice.request({"cmd": "_stats"})["result"]
        return stats.get("clients", {}).get("alice", {}).get("msgs_in_per_s", 0) > 0 and stats
    stats = wait_until(busy, 10, interval_s=0.2)
    assert stats["total"]["msgs_in"] >= 200
    assert stats["clients"]["bob"]["msgs_out"] >= 200


def test_logs_returns_last_events_newest_first(raw):
    client = raw("first")
    raw("second")
    logs = client.request({"cmd": "_logs", "n": 2})["result"]
    assert [e["kind"] for e in logs] == ["client_joined", "client_joined"]
    assert logs[0]["name"] == "second" and logs[1]["name"] == "first"
    everything = client.request({"cmd": "_logs"})["result"]
    assert everything[-1]["kind"] == "server_started"


def test_log_event_and_publish_reach_the_stream(raw, watcher):
    client = raw("cryo")
    client.send({"cmd": "_log", "level": "WARNING", "msg": "compressor hot", "logger": "cryo.comp"})
    record = watcher.wait_for("log.cryo", msg="compressor hot")
    assert record["level"] == "WARNING" and record["from"] == "cryo"
    client.send({"cmd": "_event", "kind": "program_exited", "program": "lta1", "code": -9})
    event = watcher.wait_for("event.program_exited", program="lta1")
    assert event["from"] == "cryo" and event["code"] == -9 and "ts" in event
    assert client.request({"cmd": "_publish", "topic": "temperature", "data": {"ccd": 140.2}})["ok"]
    assert watcher.wait_for("pub.cryo.temperature")["data"] == {"ccd": 140.2}


def test_retained_keeps_last_value_per_topic(raw):
    cryo, gauge = raw("cryo"), raw("gauge")
    for value in (150.0, 140.2):
        cryo.request({"cmd": "_publish", "topic": "temperature", "data": value, "retain": True})
    gauge.request({"cmd": "_publish", "topic": "pressure", "data": 1e-6, "retain": True})
    gauge.request({"cmd": "_publish", "topic": "noise", "data": 1})  # not retained
    retained = cryo.request({"cmd": "_retained"})["result"]
    assert set(retained) == {"cryo.temperature", "gauge.pressure"}
    assert retained["cryo.temperature"]["data"] == 140.2
    assert set(cryo.request({"cmd": "_retained", "prefix": "gauge."})["result"]) == {"gauge.pressure"}


def test_pid_file_written_touched_and_removed_on_sigterm(server, watcher):
    assert server.pid_in_file() == server.proc.pid
    first = server.pidfile.stat().st_mtime
    wait_until(lambda: server.pidfile.stat().st_mtime > first, 5)
    assert server.stop() == 0
    assert not server.pidfile.exists()
    assert watcher.wait_for("event.server_stopping", reason="SIGTERM")


def test_sigint_stops_server_cleanly(server):
    server.signal(signal.SIGINT)
    assert server.proc.wait(10) == 0
    assert not server.pidfile.exists()


def test_server_refuses_invalid_experiment_with_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "server": {"heartbeat": "often"}}')
    result = subprocess.run([sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(bad)],
                            cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert 'server.heartbeat: "often" is not of type number' in result.stderr


def test_slow_consumer_does_not_stall_others(raw, server):
    watcher = EventWatcher(server.events, "event.").sync(server.router)
    sender, slow, quick = raw("sender"), raw("slow"), raw("quick")
    slow.sock.setsockopt(zmq.RCVHWM, 10)
    blob = "x" * 1000
    try:
        for _ in range(15000):  # more than the server queues for one client (its high-water mark)
            sender.send({"to": "slow", "cmd": "data", "blob": blob})
        event = watcher.wait_for("event.client_slow", name="slow")  # slow's queue is full from here on
        assert event["dropped"] > 0
        for i in range(20):  # while slow still reads nothing, the others are served
            assert quick.request({"cmd": "_ping"}, timeout_s=10)["cmd"] == "_pong"
        assert sender.recv_until(lambda m: m.get("code") == "queue_full")["error"].startswith("'slow' is not reading")
    finally:
        watcher.close()


def test_clients_beyond_max_clients_are_refused(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "few", max_clients=2)).start()
    clients = [RawClient(server.router) for _ in range(3)]
    try:
        assert clients[0].hello("one")["ok"] and clients[1].hello("two")["ok"]
        refused = clients[2].hello("three")
        assert refused["code"] == "too_many_clients" and "already holds 2 clients" in refused["error"]
        assert clients[0].request({"cmd": "_ping", "id": "p"})["cmd"] == "_pong"
    finally:
        for client in clients:
            client.close()
        server.stop()


ROOMY_CLIENTS = 600   # connections beyond what a limit of 256 open files holds


def test_a_server_makes_room_among_its_open_files_for_a_connection_from_each_of_max_clients(tmp_path):
    """Started with a limit of 256 open files, a server for 1,000 clients raises it: 600 connections all register."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * 1000 + 2 * ROOMY_CLIENTS:
        pytest.skip(f"the hard limit of open files ({hard}) leaves no room for the test")
    path = write_experiment(tmp_path, "roomy", max_clients=1000)
    listener = discovery.BeaconListener(json.loads(path.read_text())["server"]["beacon"]["port"], experiment="roomy")
    with open(tmp_path / "roomy.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(path)], cwd=ROOT,
                                env=env_for_children(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, ROOMY_CLIENTS + 100)
    clients = []
    try:
        beacon = wait_until(lambda: listener.wait(0.2), 15, 0, what="the server's beacon")
        clients = [RawClient(beacon.router, ctx) for _ in range(ROOMY_CLIENTS)]
        for n, client in enumerate(clients):
            assert client.request({"cmd": "_hello", "name": f"c{n}"}, 15)["ok"] is True
        assert len(clients[0].request({"cmd": "_list"})["result"]) == ROOMY_CLIENTS
    finally:
        listener.close()
        for client in clients:
            client.close()
        ctx.term()
        assert stop_process(proc) == 0


def test_second_server_on_same_ports_is_refused(server, tmp_path):
    (tmp_path / "other").mkdir()
    second = ServerProcess(write_experiment(tmp_path / "other", "other", router=server.router,
                                            events=server.events))
    with pytest.raises(AssertionError, match="cannot bind"):
        second.start(timeout_s=10)
    assert second.proc.wait(10) == 2


def test_server_refuses_unwritable_pid_file_with_message(tmp_path):
    (tmp_path / "file").write_text("")
    path = write_experiment(tmp_path, "nopid")
    result = subprocess.run([sys.executable, "-m", "runcontrol.bus.server", "--experiment", str(path),
                             "--pidfile", str(tmp_path / "file" / "server.pid")],
                            cwd=ROOT, env=env_for_children(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"cannot write the pid file {tmp_path / 'file' / 'server.pid'}" in result.stderr


def test_just_after_a_start_messages_wait_for_their_target_in_order_and_the_rest_are_refused_at_the_end(tmp_path):
    """For clients still registering again after a restart: held until the target is back, in the order they came;
    what is held for a name nobody takes is refused `no_such_client` when the window ends."""
    path = write_experiment(tmp_path, "fresh")
    description = json.loads(path.read_text())
    description["server"]["beacon"]["interval"] = 1.0   # a settling window of 2 intervals and a second: 3 s
    path.write_text(json.dumps(description))
    server = ServerProcess(path).start()
    alice, bob = RawClient(server.router), RawClient(server.router)
    try:
        alice.hello("alice")
        for n in range(3):
            alice.send({"to": "bob", "cmd": "note", "n": n})
            alice.send({"to": "carol", "cmd": "note", "n": n, "id": f"c{n}"})
        assert alice.request({"cmd": "_status"})["result"]["settling"]
        bob.send({"cmd": "_hello", "name": "bob", "id": "h"})   # what waited for it comes before its welcome
        seen = [bob.recv(10) for _ in range(4)]
        assert [m.get("n") for m in seen if m["cmd"] == "note"] == [0, 1, 2] and seen[-1]["re"] == "h"
        refused = [alice.recv_until(lambda m: m.get("cmd") == "_error", 15) for _ in range(3)]
        assert [(e["code"], e["re"]) for e in refused] == [("no_such_client", f"c{n}") for n in range(3)]
        assert not alice.request({"cmd": "_status"})["result"]["settling"]
    finally:
        alice.close()
        bob.close()
        server.stop()


def test_a_reply_to_a_request_never_sent_is_refused_and_a_real_one_passes(server):
    asker, answerer = RawClient(server.router), RawClient(server.router)
    try:
        asker.hello("asker")
        answerer.hello("answerer")
        wait_until(lambda: not asker.request({"cmd": "_status", "id": "s"})["result"]["settling"], 15, 0.2)
        answerer.send({"cmd": "_reply", "to": "asker", "re": "never-asked", "ok": True, "result": "forged"})
        refusal = answerer.recv_until(lambda m: m.get("cmd") == "_error")
        assert refusal["code"] == "not_allowed" and "answers go only to the requester" in refusal["error"]
        asker.send({"cmd": "ask", "to": "answerer", "id": "q1"})
        answerer.recv_until(lambda m: m.get("id") == "q1")
        answerer.send({"cmd": "_reply", "to": "asker", "re": "q1", "ok": True, "result": "real"})
        answer = asker.recv_until(lambda m: m.get("cmd") == "_reply")
        assert (answer["re"], answer["result"]) == ("q1", "real")
        answerer.send({"cmd": "_reply", "to": "asker", "re": "q1", "ok": True, "result": "twice"})
        assert answerer.recv_until(lambda m: m.get("cmd") == "_error")["code"] == "not_allowed"
    finally:
        asker.close()
        answerer.close()


def test_requests_beyond_max_pending_are_refused_until_some_are_answered(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "pending", max_pending=3)).start()
    asker, slow = RawClient(server.router), RawClient(server.router)
    try:
        asker.hello("asker")
        slow.hello("slow")
        for i in range(3):
            asker.send({"to": "slow", "cmd": "work", "id": f"w{i}"})
        asker.send({"to": "slow", "cmd": "work", "id": "w3"})
        refused = asker.recv_until(lambda m: m.get("re") == "w3")
        assert refused["code"] == "too_many_pending" and "3 of your requests still await answers" in refused["error"]
        slow.recv_until(lambda m: m.get("id") == "w2")
        slow.send({"cmd": "_reply", "to": "asker", "re": "w0", "ok": True, "result": 0})
        assert asker.recv_until(lambda m: m.get("re") == "w0")["result"] == 0
        asker.send({"to": "slow", "cmd": "work", "id": "w4"})
        assert slow.recv_until(lambda m: m.get("id") == "w4")["cmd"] == "work"
    finally:
        asker.close()
        slow.close()
        server.stop()


def test_bye_frees_the_name_at_once_with_client_left(raw, watcher):
    first = raw("leaver")
    first.send({"cmd": "_bye"})
    left = watcher.wait_for("event.client_left", name="leaver")
    assert left["reason"] == "said goodbye"
    second = raw()
    welcome = second.hello("leaver")  # no claim to settle: the name is free
    assert welcome["ok"] is True and welcome["result"]["name"] == "leaver"
    assert not [t for t, m in watcher.items if t == "event.client_replaced"]


def test_a_target_whose_connection_closed_answers_what_it_owed_client_lost_and_is_then_no_such_client(raw, watcher):
    asker, target = raw("asker"), raw("target")
    asker.send({"to": "target", "cmd": "slow", "id": "owed"})
    target.recv_until(lambda m: m.get("id") == "owed")
    target.close()   # gone without a goodbye, owing an answer
    assert asker.recv_until(lambda m: m.get("re") == "owed", 15)["code"] == "client_lost"
    assert watcher.wait_for("event.client_lost", name="target")["reason"] == "connection closed"
    after = asker.request({"to": "target", "cmd": "ramp"}, 15)
    assert after["code"] == "no_such_client"
    assert [m for m in asker.until_pong() if m.get("re") in ("owed", after["re"])] == []   # one answer each


# --- _replay: what was published after a time ---------------------------------------------------

def replay(client, **ask):
    answer = client.request({"cmd": "_replay", **ask})
    assert answer["ok"] is True, answer
    return answer["result"]


def replay_all(client, since=0, **ask):
    """Every publication after `since`, page by page; and the pages."""
    items, pages = [], []
    while True:
        page = replay(client, since=since, **ask)
        items += page["items"]
        pages.append(page)
        if not page["more"]:
            return items, pages
        since = page["next"]


def received_bytes(client, re_id, timeout_s=5.0):
    """The answer to `re_id` as it came over the wire (heartbeat pings answered meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while client.sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
        data = client.sock.recv()
        msg = json.loads(data)
        if msg.get("re") == re_id:
            return data
        if msg.get("cmd") == "_ping":
            client.send({"cmd": "_pong"})
    raise AssertionError(f"no answer to {re_id!r} within {timeout_s} s")


def test_replay_answers_the_publications_after_a_time_in_order_under_a_prefix(raw, server):
    cryo, gauge = raw("cryo"), raw("gauge")
    for i in range(4):
        cryo.request({"cmd": "_publish", "topic": "values", "data": {"t": i}, "retain": i == 3})
        gauge.request({"cmd": "_publish", "topic": "pressure", "data": i * 1e-6})
    items, _ = replay_all(cryo)
    assert [(m["from"], m["topic"], m["data"]) for m in items] == [
        pair for i in range(4) for pair in (("cryo", "values", {"t": i}), ("gauge", "pressure", i * 1e-6))]
    assert [m["ts"] for m in items] == sorted(m["ts"] for m in items) and items[-2]["retain"] is True
    later = replay(gauge, since=items[3]["ts"], prefix="cryo.")
    assert [m["data"] for m in later["items"]] == [{"t": 2}, {"t": 3}] and later["more"] is False
    assert later["next"] >= items[-1]["ts"] and later["kept_from"] <= items[0]["ts"]
    assert len(replay(gauge, since=-60)["items"]) == 8   # negative: that long ago
    assert replay(gauge, since=later["next"])["items"] == []


@pytest.mark.parametrize("ask, field", [({"since": "yesterday"}, "since"), ({"since": 0, "prefix": 3}, "prefix"),
                                        ({"since": 0, "limit": 0}, "limit"), ({}, "since")])
def test_replay_with_a_field_of_the_wrong_kind_is_refused_bad_field(raw, ask, field):
    refused = raw("asker").request({"cmd": "_replay", **ask})
    assert refused["cmd"] == "_error" and refused["code"] == "bad_field" and f"'{field}'" in refused["error"]


def test_replay_pages_a_backlog_larger_than_a_message_each_page_within_the_limit(tmp_path):
    server = ServerProcess(write_experiment(tmp_path, "pages", max_message_bytes=4096)).start()
    client = RawClient(server.router)
    try:
        assert client.hello("cryo")["ok"]
        for i in range(60):
            client.send({"cmd": "_publish", "topic": "image", "data": {"n": i, "pixels": "x" * 400}})
        wait_until(lambda: len(replay_all(client)[0]) == 60, 10)
        items, pages = replay_all(client)
        assert [m["data"]["n"] for m in items] == list(range(60)) and len(pages) > 6
        client.send({"cmd": "_replay", "id": "big", "since": 0, "limit": 10000})
        raw_answer = received_bytes(client, "big")
        assert len(raw_answer) <= 4096 and json.loads(raw_answer)["result"]["more"] is True
        few, pages = replay_all(client, limit=7)
        assert few == items and [len(p["items"]) for p in pages] == [7] * 8 + [4]
    finally:
        client.close()
        server.stop()


def test_replay_keeps_a_window_and_budgets_per_topic_and_in_all(tmp_path):
    limits = {"seconds": 1.5, "topic_bytes": 2048, "max_bytes": 65536}
    server = ServerProcess(write_experiment(tmp_path, "budget", replay=limits)).start()
    client = RawClient(server.router)
    try:
        assert client.hello("cryo")["ok"]
        for i in range(40):
            client.request({"cmd": "_publish", "topic": "noisy", "data": "x" * 100 + str(i)})
        items, _ = replay_all(client)
        assert 0 < len(items) < 40 and items[-1]["data"].endswith("39")   # the newest, within 2048 bytes
        assert server.beacon.started < replay(client, since=0)["kept_from"] <= items[0]["ts"]   # some dropped
        for i in range(300):   # many topics: the total budget holds
            client.send({"cmd": "_publish", "topic": f"t{i}", "data": "y" * 200})
        status = client.request({"cmd": "_status"})["result"]["replay"]   # answered after the publications
        assert status["bytes"] <= 65536 and status["seconds"] == 1.5
        wait_until(lambda: replay(client, since=0)["items"] == [], 10)   # all older than the window now
    finally:
        client.close()
        server.stop()


def test_a_restarted_server_replays_only_what_was_published_to_it(server):
    client = RawClient(server.router)
    try:
        assert client.hello("cryo")["ok"]
        client.request({"cmd": "_publish", "topic": "values", "data": 1})
        assert len(replay(client, since=0)["items"]) == 1
        server.pin_ports()
        server.kill()
        server.start()
        assert client.hello("cryo")["ok"]
        page = replay(client, since=0)
        assert page["items"] == [] and page["kept_from"] >= server.beacon.started
    finally:
        client.close()


def test_a_server_that_stood_still_does_not_drop_its_clients_for_its_own_silence(tmp_path):
    """SIGSTOPped past its timeout (starved, or stopped by hand) and continued: its clients are not lost."""
    server = ServerProcess(write_experiment(tmp_path, "still", heartbeat=0.5, timeout=2.0)).start()
    watcher = EventWatcher(server.events, "event.").sync(server.router)
    raw = RawClient(server.router)
    try:
        raw.hello("patient")
        raw.request({"cmd": "_status"})
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(4.0)   # the stall itself: twice the server's timeout
        os.kill(server.proc.pid, signal.SIGCONT)
        answer = raw.request({"cmd": "_list"}, 10)   # still registered: no not_registered, no new hello
        assert answer.get("ok") and [c["name"] for c in answer["result"]] == ["patient"], answer
        raw.until_pong()
        assert "stood still for" in wait_until(lambda: "stood still for" in server.log.read_text()
                                               and server.log.read_text(), 10)
        assert not [t for t, _ in watcher.items if t == "event.client_lost"]
    finally:
        raw.close()
        watcher.close()
        server.stop()
