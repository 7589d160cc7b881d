"""The host agent: supervisord's event listener protocol, and a real agent process speaking it to a real server."""

import os
import subprocess
import sys

import pytest

from clients.hostagent import ListenerProtocol
from tests.helpers import ROOT, EventWatcher, env_for_children, wait_until

EXITED = b"processname:db groupname:db from_state:RUNNING expected:0 pid:4242"


def event(name, payload):
    return b"ver:3.0 server:supervisor serial:1 pool:orbit-agent poolserial:1 eventname:%s len:%d\n%s" % (
        name, len(payload), payload)


def test_events_are_read_whole_however_the_bytes_arrive():
    reader = ListenerProtocol()
    data = event(b"PROCESS_STATE_EXITED", EXITED) + event(b"TICK_5", b"when:1")
    got = [e for i in range(0, len(data), 7) for e in reader.feed(data[i:i + 7])]
    assert [(h["eventname"], p.get("processname"), p.get("pid")) for h, p in got] == [
        ("PROCESS_STATE_EXITED", "db", "4242"), ("TICK_5", None, None)]


@pytest.mark.parametrize("garbage,why", [
    (b"hello world\n", "an event header without a usable len"),
    (b"eventname:X len:-3\n", "an event header without a usable len"),
    (b"x" * 5000, "an event header longer than 4096 bytes"),
])
def test_garbage_on_stdin_is_an_error_that_says_what(garbage, why):
    with pytest.raises(ValueError, match=why):
        ListenerProtocol().feed(garbage)


def test_the_agent_answers_supervisord_and_publishes_each_state_change_and_its_figures(server, experiment_path):
    watcher = EventWatcher(server.events).sync(server.router)
    agent = subprocess.Popen([sys.executable, "-m", "clients.hostagent", "--host", "daq2", "--experiment",
                              str(experiment_path)], cwd=ROOT, env=env_for_children(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert agent.stdout.read(6) == ListenerProtocol.READY
        agent.stdin.write(event(b"PROCESS_STATE_EXITED", EXITED))
        agent.stdin.flush()
        answer = ListenerProtocol.OK + ListenerProtocol.READY
        assert agent.stdout.read(len(answer)) == answer
        told = watcher.wait_for("pub.host.daq2.process", 20)
        assert told["data"] == {"host": "daq2", "program": "db", "state": "EXITED", "from_state": "RUNNING",
                                "pid": 4242}
        figures = watcher.wait_for("pub.host.daq2.figures", 20)["data"]
        assert figures["disk_free"] > 0 and len(figures["load"]) == 3 and figures["programs"] == {}
        agent.stdin.write(b"not the protocol\n")
        agent.stdin.flush()
        assert agent.wait(20) == 1
        assert "host agent daq2: an event header without a usable len: b'not the protocol'" in agent.stderr.read().decode()
    finally:
        watcher.close()
        if agent.poll() is None:
            os.killpg(agent.pid, 9)
            agent.wait(10)
        for stream in (agent.stdin, agent.stdout, agent.stderr):
            stream.close()


def test_the_agent_ends_when_supervisord_closes_its_stdin(server, experiment_path):
    agent = subprocess.Popen([sys.executable, "-m", "clients.hostagent", "--host", "daq2", "--experiment",
                              str(experiment_path)], cwd=ROOT, env=env_for_children(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert agent.stdout.read(6) == ListenerProtocol.READY
        agent.stdin.close()
        wait_until(lambda: agent.poll() is not None, 20)
        assert agent.returncode == 0
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, 9)
            agent.wait(10)
        agent.stdout.close()
