"""The client library against a real server process and real peers."""

import asyncio
import json
import logging
import os
import signal
import threading

import pytest

from runcontrol.client.aio import ask, serve
from runcontrol.client.client import Client, LogHandler, NameTaken
from runcontrol.client.core import required
from runcontrol.errors import ClientLost, NoSuchClient, Refused, RequestTimeout, ServerUnavailable
from tests.helpers import (EventWatcher, RawClient, ServerProcess, free_beacon_port, free_port, pump,
                           registered_names, wait_until, write_experiment)


def test_request_returns_handler_result(make_client, echo):
    client = make_client("operator")
    assert client.request("echo", "echo", volts=40) == {"volts": 40}


def test_handler_exception_becomes_refusal_with_message(make_client, echo):
    client = make_client("operator")
    with pytest.raises(Refused, match="the detector is on fire") as info:
        client.request("echo", "fail")
    assert info.value.code == "handler_error"


def test_handler_refusal_keeps_its_code(make_client, echo):
    client = make_client("operator")
    with pytest.raises(Refused) as info:
        client.request("echo", "refuse")
    assert info.value.code == "out_of_range" and "35 V" in str(info.value)


def test_unknown_command_refused_naming_what_is_offered(make_client, echo):
    client = make_client("operator")
    with pytest.raises(Refused, match="offers: echo, fail") as info:
        client.request("echo", "reboot")
    assert info.value.code == "unknown_command"


def test_progress_arrives_before_result(make_client, echo):
    client = make_client("operator")
    seen = []
    assert client.request("echo", "slow", on_progress=lambda m: seen.append(m["step"])) == "done"
    assert seen == [0, 1, 2]


def test_failures_are_not_refusals(make_client, echo):
    client = make_client("operator")
    with pytest.raises(NoSuchClient):
        client.request("nobody", "echo")
    os.killpg(echo.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RequestTimeout, match="echo did not answer 'echo' within 0.5 s"):
            client.request("echo", "echo", timeout=0.5)
        with pytest.raises(ClientLost):  # the server gives up on it after its timeout
            client.request("echo", "echo", timeout=15)
    finally:
        os.killpg(echo.pid, signal.SIGCONT)


def test_actions_are_announced_in_hello(server, make_client):
    class Board(Client):
        def cmd_expose(self, msg):
            """Take one exposure."""
            return {"seconds": msg["seconds"]}

    board = Board("board", experiment=str(server.path))
    try:
        @board.handler("temperature")
        def read_temperature(msg):
            """Read the CCD temperature."""
            return 140.2

        board.connect(10)
        operator = make_client("operator")
        listing = {c["name"]: c for c in operator.request(None, "_list")}
        assert listing["board"]["actions"] == {"expose": "Take one exposure.",
                                               "temperature": "Read the CCD temperature."}
        pending = operator.start({"to": "board", "cmd": "temperature"})
        pump([board, operator], lambda: pending.answer)
        assert pending.answer.value() == 140.2
        pending = operator.start({"to": "board", "cmd": "expose", "seconds": 3})
        pump([board, operator], lambda: pending.answer)
        assert pending.answer.value() == {"seconds": 3}
    finally:
        board.close()


def test_missing_field_is_refused_as_bad_field(server, make_client):
    board = make_client("board", threaded=True)
    board.add_handler("ramp", lambda msg: required(msg, "volts"))
    operator = make_client("operator")
    with pytest.raises(Refused, match="'ramp' needs the field 'volts'") as info:
        operator.request("board", "ramp")
    assert info.value.code == "bad_field"


def test_a_key_error_inside_a_handler_is_a_handler_error_not_a_missing_field(server, make_client):
    board = make_client("board", threaded=True)
    board.add_handler("ramp", lambda msg: {}["calibration"])  # a bug in the handler, not in the request
    operator = make_client("operator")
    with pytest.raises(Refused, match="KeyError: 'calibration'") as info:
        operator.request("board", "ramp", volts=3)
    assert info.value.code == "handler_error"


def test_server_address_from_environment(server, monkeypatch):
    monkeypatch.setenv("ORBIT_SERVER", server.router)
    with Client("from-env", beacon_port=1) as client:  # no beacon can be heard on port 1
        client.connect(10)
        assert client.request(None, "_status")["experiment"] == server.name


def test_no_server_raises_server_unavailable(tmp_path):
    with Client("alone", experiment="no-such-experiment", beacon_port=1) as client:
        with pytest.raises(ServerUnavailable, match="no server answered within 0.5 s"):
            client.connect(0.5)


def test_second_live_client_with_same_name_gets_name_taken(make_client):
    make_client("lta1", threaded=True)
    with pytest.raises(NameTaken, match="held by a live client"):
        make_client("lta1")


def test_beacons_of_other_experiments_are_ignored(tmp_path):
    port = free_beacon_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real_path = write_experiment(tmp_path / "b", "real", beacon_port=port)
    decoy = ServerProcess(write_experiment(tmp_path / "a", "decoy", beacon_port=port)).start()  # its beacons heard
    real = None
    try:
        with Client("picky", experiment=str(real_path)) as client:
            with pytest.raises(ServerUnavailable):
                client.connect(3)  # six of the decoy's beacons came by, none of them taken
            assert client.router is None
            real = ServerProcess(real_path).start()
            client.connect(10)
            assert client.request(None, "_status")["experiment"] == "real"
    finally:
        decoy.stop()
        if real is not None:
            real.stop()


def test_log_handler_sends_records_to_the_stream(server, make_client):
    watcher = EventWatcher(server.events).sync(server.router)
    client = make_client("logger")
    log = logging.getLogger("test.central")
    handler = LogHandler(client)
    log.addHandler(handler)
    try:
        log.warning("vacuum at %s mbar", "1e-3")
        client.poll(0.1)
        record = watcher.wait_for("log.logger", msg="vacuum at 1e-3 mbar")
        assert record["level"] == "WARNING" and record["logger"] == "test.central"
    finally:
        log.removeHandler(handler)
        watcher.close()


def test_publish_retained_value(make_client):
    client = make_client("gauge")
    client.publish("pressure", {"mbar": 1e-6}, retain=True)
    assert client.request(None, "_retained", prefix="gauge.")["gauge.pressure"]["data"] == {"mbar": 1e-6}


@pytest.mark.parametrize("same_ports", [True, False], ids=["same-ports", "new-ports"])
def test_server_killed_and_restarted_client_reregisters_and_queue_arrives(server, echo, make_client,
                                                                          same_ports):
    sender = make_client("sender")
    assert sender.request("echo", "notes") == []
    for seq in range(5):
        sender.send("echo", "note", seq=seq)
    wait_until(lambda: sender.request("echo", "notes") == list(range(5)), 10)
    if same_ports:
        server.pin_ports()
    first_instance = server.beacon.instance
    server.kill()
    # Messages handed to the socket in the instant before the closed connection is noticed
    # go down with the server; from the moment it is noticed, everything is queued.
    pump([sender], lambda: not sender.registered)
    for seq in range(5, 50):  # sent while the server is away: queued
        sender.send("echo", "note", seq=seq)
    server.start()
    assert server.beacon.instance != first_instance
    wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1)
    pump([sender], lambda: sender.registered and sender.instance == server.beacon.instance, 15)
    notes = sender.request("echo", "notes", timeout=10)
    assert notes == list(range(50))  # in order, none lost, none doubled


@pytest.mark.parametrize("queue_size,sent", [(10, 25), (None, 1010)], ids=["queue-of-10", "default-queue"])
def test_queue_overflow_drops_oldest_and_logs_count(server, echo, make_client, caplog, queue_size, sent):
    """The default keeps 1000 messages while the server is away."""
    sender = make_client("sender", **({"queue_size": queue_size} if queue_size else {}))
    kept = queue_size or 1000
    server.pin_ports()
    server.kill()
    pump([sender], lambda: not sender.registered)
    for seq in range(sent):
        sender.send("echo", "note", seq=seq)
    server.start()
    wait_until(lambda: "echo" in registered_names(server.router), 15, interval_s=0.1)
    with caplog.at_level(logging.WARNING, logger="runcontrol.client.client"):
        pump([sender], lambda: sender.registered, 15)
    assert sender.request("echo", "notes", timeout=30) == list(range(sent - kept, sent))   # the newest, in order
    assert f"dropped {sent - kept} queued message(s)" in caplog.text


def tallies(asker, ids):
    """Ask echo's `tally` once for each id, a few hundred awaiting answers at a time (within max_pending);
    its answer to each: how often it ran that request."""
    answers = {}
    for start in range(0, len(ids), 500):
        batch = ids[start:start + 500]
        for msg_id in batch:
            asker.send({"to": "echo", "cmd": "tally", "id": msg_id})
        waiting = set(batch)
        while waiting:
            answer = asker.recv_until(lambda m: m.get("re") in waiting, 30)
            answers[answer["re"]] = answer["result"]
            waiting.discard(answer["re"])
    return [answers[msg_id] for msg_id in ids]


def test_a_repeated_request_is_answered_from_memory_up_to_10000_requests_back(server, echo):
    """The library remembers its answers to the last 10,000 requests: a repeat of one of them is answered again
    without running the handler; one from further back runs again."""
    asker = RawClient(server.router)
    try:
        asker.hello("asker")
        ids = [f"q{n}" for n in range(10001)]
        assert tallies(asker, ids) == [1] * len(ids)
        assert tallies(asker, ["q1"]) == [1]   # 10,000 requests back: answered from memory
        assert tallies(asker, ["q0"]) == [2]   # 10,001 back: forgotten, so it ran again
    finally:
        asker.close()


def test_request_made_while_server_away_is_delivered_after_restart(server, echo, make_client):
    client = make_client("patient")
    server.pin_ports()
    server.kill()
    pump([client], lambda: not client.registered, 10)  # what is sent before the loss is noticed goes down with it
    pending = client.start({"to": "echo", "cmd": "echo", "x": 1})
    server.start()
    assert client.wait(pending, timeout=20).value() == {"x": 1}


def test_client_follows_the_beacon_of_a_new_instance_to_its_new_address(server, make_client):
    client = make_client("watcher")
    old_router = server.router
    server.kill()
    server.description["server"].update(router=f"tcp://127.0.0.1:{free_port()}",
                                        events=f"tcp://127.0.0.1:{free_port()}")
    server.path.write_text(json.dumps(server.description))
    server.start()  # new ports: only its beacon can tell the client where it is now
    assert server.router != old_router
    pump([client], lambda: client.registered and client.instance == server.beacon.instance, 15)
    assert client.router == server.router


@pytest.fixture
def quiet(tmp_path):
    """A server that pings once a minute: a client of it that hears no beacon wakes only for what it does itself."""
    server = ServerProcess(write_experiment(tmp_path, "quiet", heartbeat=60, timeout=120)).start()
    yield server
    server.stop()


def test_a_timer_of_the_program_runs_while_the_blocking_driver_waits_on_its_sockets(quiet):
    with Client("ticker", server=quiet.router, beacon_port=free_beacon_port()) as client:
        client.connect(10)
        ticks = []

        def tick():
            ticks.append(client.registered)
            if len(ticks) == 3:
                client.stop()
        handle = client.timers.every(0.05, tick)
        serving = threading.Thread(target=client.run_forever, args=(60,), daemon=True)
        serving.start()
        serving.join(30)   # the next ping is a minute away: only the timers can wake it before
        handle.cancel()
        client.stop()
        serving.join(70)
        assert ticks == [True, True, True]


def test_the_asyncio_driver_wakes_on_its_sockets_its_timers_and_its_stop(quiet):
    client = Client("aio", server=quiet.router, beacon_port=free_beacon_port())
    client.add_handler("double", lambda msg: 2 * required(msg, "n"))
    ticks = []

    async def until(predicate, what):
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.02)   # the driver's task waits on, undisturbed by this one
        raise AssertionError(f"no {what} within 10 s")

    async def scenario():
        stop = asyncio.Event()
        driver = asyncio.ensure_future(serve(client, stop))
        await until(lambda: client.registered, "registration")
        answers = [(await ask(client, {"to": "aio", "cmd": "double", "n": n}, timeout=20)).value() for n in range(3)]
        handle = client.timers.every(0.05, lambda: ticks.append(1))
        await until(lambda: len(ticks) >= 3, "turn of a timer")
        handle.cancel()
        await until(lambda: client.timers.next_due() > client.timers.clock() + 60, "wait for the silence check")
        stop.set()   # the driver waits for its next timer, the silence check two minutes away, or for this
        await asyncio.wait_for(driver, 20)
        return answers

    try:
        assert asyncio.run(scenario()) == [0, 2, 4]   # asked itself, through the server: both ends in the loop
        assert client.wakeup is None
    finally:
        client.close()
