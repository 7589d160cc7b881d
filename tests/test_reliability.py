"""What survives a crash: a request made through the client library is executed once and answered once; a foreign
client that sends a request again with its `id` gets the answer again, and the handler never runs twice; an idle
client answers the server's pings and keeps its registration."""

import json
import logging
import os
import signal
from pathlib import Path

from tests.helpers import RawClient, pump, registered_names, wait_until

BALLAST = 8192   # bytes a request carries so that its arrival in the server's socket shows


def test_a_request_in_flight_when_the_server_dies_runs_once_and_is_answered_once(server, echo_program, make_client,
                                                                                 tmp_path):
    echo_program("echo")
    client = make_client("asker")
    server.pin_ports()
    pending = client.start({"to": "echo", "cmd": "tally", "seconds": 1.5})
    log = tmp_path / "echo.log"
    pump([client], lambda: f"tally asker/{pending.id} started" in log.read_text(), 10)
    server.kill()  # the request is being worked on; its answer has nowhere to go
    server.start()
    assert client.wait(pending, timeout=30).value() == 1
    wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1)
    assert client.request("echo", "tallies", timeout=10) == {f"asker/{pending.id}": 1}


def test_a_request_sent_into_a_dying_server_is_sent_again_to_the_next(server, echo_program, make_client, tmp_path):
    echo_program("echo")
    client = make_client("asker")
    server.pin_ports()
    server.signal(signal.SIGSTOP)  # hung: it takes what is sent, never reads it
    wait_until(lambda: stopped(server.proc.pid), 10, what="the server stopped")
    pending = client.start({"to": "echo", "cmd": "tally", "ballast": "x" * BALLAST})
    pump([client], lambda: unread_by_server(server) >= BALLAST, 10)   # in the server's socket, never read
    server.kill()
    server.start()
    assert client.wait(pending, timeout=30).value() == 1
    assert client.request("echo", "tallies", timeout=10) == {f"asker/{pending.id}": 1}


def stopped(pid):
    """Whether every thread of `pid` has stopped (a SIGSTOP takes hold a moment after it is sent)."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return all((tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for tid in os.listdir(tasks))
    except OSError:
        return False


def unread_by_server(server):
    """Bytes waiting unread in the server's ends of its clients' connections (their receive queues)."""
    router_port = int(server.router.rsplit(":", 1)[1])
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if local == router_port and remote != 0:
            unread += int(fields[4].split(":")[1], 16)
    return unread


def test_a_foreign_client_sending_its_unanswered_request_again_after_a_restart_gets_one_run_and_its_answer(
        server, echo, tmp_path):
    server.pin_ports()
    first, second = RawClient(server.router), RawClient(server.router)
    try:
        first.hello("first")
        ask = {"to": "echo", "cmd": "tally", "id": "r-1"}
        first.send({**ask, "seconds": 1.5})
        wait_until(lambda: "tally first/r-1 started" in (tmp_path / "echo.log").read_text(), 10)
        server.kill()   # the answer has nowhere to go
        server.start()
        first.hello("first")
        first.send(ask)   # sent again, with its id, once registered again
        assert first.recv_until(lambda m: m.get("re") == "r-1", 30)["result"] == 1   # a second run answers 2
        second.hello("second")
        second.send(ask)   # the same id from another sender is another request
        assert second.recv_until(lambda m: m.get("re") == "r-1")["result"] == 1
        assert first.request({"to": "echo", "cmd": "tallies"})["result"] == {"first/r-1": 1, "second/r-1": 1}
    finally:
        for raw in (first, second):
            raw.send({"cmd": "_bye"})
            raw.close()


def test_a_repeat_of_a_request_still_being_worked_on_is_answered_once_when_done(server, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="runcontrol.client.core")
    board = make_client("board")
    held = []
    board.add_handler("expose", lambda msg: held.append(board.defer(msg)) or held[-1])
    board.add_handler("mark", lambda msg: "marked")
    asker = RawClient(server.router)
    try:
        asker.hello("asker")
        expose = {"to": "board", "cmd": "expose", "id": "x-1"}
        asker.send(expose)
        asker.send(expose)   # sent again while the board works on it
        assert answers_to(asker, board, "x-1", "m-1") == []
        assert len(held) == 1
        held[0].resolve("exposed")
        held[0].resolve("again")
        assert answers_to(asker, board, "x-1", "m-2") == ["exposed"]
        asker.send(expose)   # once done: answered again from memory
        assert answers_to(asker, board, "x-1", "m-3") == ["exposed"]
        assert len(held) == 1
        assert "not_allowed" not in caplog.text   # the board sent no second answer for the server to refuse
    finally:
        asker.send({"cmd": "_bye"})
        asker.close()


def answers_to(asker, board, request_id, marker_id):
    """The results `asker` gets for `request_id` until the board answers a `mark` sent now (answers come in order),
    while the board in this process is served."""
    asker.send({"to": "board", "cmd": "mark", "id": marker_id})
    got = []

    def marked():
        while asker.sock.poll(0):
            msg = json.loads(asker.sock.recv())
            if msg.get("cmd") == "_ping":
                asker.send({"cmd": "_pong", **({"re": msg["id"]} if "id" in msg else {})})
            got.append(msg)
        return any(m.get("re") == marker_id for m in got)
    pump([board], marked, 15)
    return [m.get("result", m.get("error")) for m in got if m.get("re") == request_id]


def test_an_idle_client_answers_the_servers_pings_and_keeps_its_registration_past_the_timeout(server, make_client):
    make_client("idle", threaded=True)
    first = client_entry(server, "idle")
    assert first is not None
    timeout_s, heartbeat_s = server.description["server"]["timeout"], server.description["server"]["heartbeat"]
    pongs = int(timeout_s / heartbeat_s) + 2   # answered pings over more than the timeout
    later = wait_until(lambda: (e := client_entry(server, "idle")) and e["msgs_in"] >= first["msgs_in"] + pongs and e,
                       30, 0.5, what=f"{pongs} pings answered")
    assert later["connected_at"] == first["connected_at"]   # the same registration: never lost


def client_entry(server, name):
    """The server's `_list` entry of client `name` (None when it is not registered), asked by a short-lived raw
    client."""
    raw = RawClient(server.router)
    try:
        raw.hello(f"probe-{name}")
        return next((c for c in raw.request({"cmd": "_list"})["result"] if c["name"] == name), None)
    finally:
        raw.send({"cmd": "_bye"})
        raw.close()
