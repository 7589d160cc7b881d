"""What survives a crash: a request made through the client library is executed once and answered once."""

import signal

from tests.helpers import pump, registered_names, wait_until


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
    pending = client.start({"to": "echo", "cmd": "tally"})
    client.poll(0.2)
    server.kill()
    server.start()
    assert client.wait(pending, timeout=30).value() == 1
    assert client.request("echo", "tallies", timeout=10) == {f"asker/{pending.id}": 1}
