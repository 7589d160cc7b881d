"""What survives a crash: a request made through the client library is executed once and answered once; a foreign
client that sends a request again with its `id` gets the answer again, and the handler never runs twice; an idle
client answers the server's pings and keeps its registration; clients find the server that takes over (a standby at
the address they know, or the one a beacon names) by the quickest way open to them."""

import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest

from runcontrol import discovery
from runcontrol.client.client import Client
from tests.helpers import (RawClient, ServerProcess, Watchdog, free_beacon_port, free_port, pump, registered_names,
                           start_program, stop_process, wait_until, write_experiment)

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


# --- failover ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def standby_kept(tmp_path):
    """A server on fixed ports kept by a watchdog with a standby ready, and an echo program registered with it."""
    path = write_experiment(tmp_path, "failover", router=f"tcp://127.0.0.1:{free_port()}",
                            events=f"tcp://127.0.0.1:{free_port()}")
    server = ServerProcess(path)
    dog = Watchdog(server, "--standby", "--grace", "2").start()
    echo = None
    try:
        listener = discovery.BeaconListener(server.beacon_port, experiment=server.name)
        try:
            server.beacon = wait_until(lambda: listener.wait(0.2), 20, what="the first beacon")
        finally:
            listener.close()
        wait_until(lambda: " ready\n" in dog.output(), 20, what="the standby to be ready")
        echo = start_program("echo_client.py", "echo", "--experiment", path, log=tmp_path / "echo.log")
        wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1, what="echo")
        yield dog
    finally:
        if echo is not None:
            stop_process(echo)
        assert dog.stop() == 0


def test_clients_come_back_to_the_standby_that_took_over_and_what_was_in_flight_is_answered_once(standby_kept,
                                                                                                 tmp_path):
    server = standby_kept.server
    # One client knows only the address (it hears no beacon); the other finds the server by its beacons.
    fixed = Client("fixed", server=server.router, beacon_port=free_beacon_port())
    found = Client("found", experiment=str(server.path))
    try:
        for client in (fixed, found):
            client.connect(10)
        old = server.beacon.instance
        pending = fixed.start({"to": "echo", "cmd": "tally", "seconds": 1.5})
        pump([fixed, found], lambda: f"tally fixed/{pending.id} started" in (tmp_path / "echo.log").read_text(), 10)
        os.kill(standby_kept.server_pid(), signal.SIGKILL)   # the answer has nowhere to go
        pump([fixed, found], lambda: all(c.registered and c.instance not in (None, old) for c in (fixed, found)), 15)
        assert fixed.instance == found.instance and fixed.router == found.router == server.router
        assert fixed.wait(pending, timeout=30).value() == 1
        wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1)
        assert found.request("echo", "tallies", timeout=10) == {f"fixed/{pending.id}": 1}   # run once
    finally:
        fixed.close()
        found.close()


def test_a_client_whose_way_back_is_stuck_connects_anew_when_a_server_is_announced_at_its_address(tmp_path):
    port = free_port()
    server = ServerProcess(write_experiment(tmp_path, "stuck", router=f"tcp://127.0.0.1:{port}",
                                            events=f"tcp://127.0.0.1:{free_port()}")).start()
    client = Client("stuck", experiment=str(server.path))
    decoy = socket.socket()
    held = []
    try:
        client.connect(10)
        server.kill()
        pump([client], lambda: not client.registered, 10)
        # Something else takes the address: ZeroMQ's next try reaches it and waits there for a handshake that never
        # comes (for 30 s). The address is then free again, that connection left open.
        decoy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        decoy.bind(("127.0.0.1", port))
        decoy.listen()
        decoy.setblocking(False)

        def caught():
            try:
                held.append(decoy.accept()[0])
            except BlockingIOError:
                pass
            return held
        pump([client], caught, 10)
        decoy.close()
        server.start()   # a new instance at the address, announced by its beacon
        pump([client], lambda: client.registered and client.instance == server.beacon.instance, 10)
        assert client.request(None, "_status")["pid"] == server.proc.pid
    finally:
        for sock in held:
            sock.close()
        decoy.close()
        client.close()
        server.stop()


def test_a_client_that_loses_its_server_while_checking_the_beacon_of_another_follows_that_beacon(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="runcontrol.client.client")
    beacon_port = free_beacon_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(write_experiment(tmp_path / "a", "moving", beacon_port=beacon_port)).start()
    second = ServerProcess(write_experiment(tmp_path / "b", "moving", beacon_port=beacon_port))
    client = Client("mover", experiment=str(first.path))
    try:
        client.connect(10)
        first.signal(signal.SIGSTOP)    # hung: it answers no ping
        second.start()                  # another instance at another address: heard while registered with the first
        second.signal(signal.SIGSTOP)   # nor does this one, so the check of its beacon stays open (up to 5 s)
        pump([client], lambda: client._checks.probe is not None, 10)
        first.kill()
        pump([client], lambda: not client.registered, 10)
        second.signal(signal.SIGCONT)
        pump([client], lambda: client.registered and client.instance == second.beacon.instance, 10)
        assert f"following the beacon of server {second.beacon.instance}" in caplog.text
        assert "moving to it" not in caplog.text and "led nowhere" not in caplog.text
    finally:
        client.close()
        second.stop()
        first.kill()
