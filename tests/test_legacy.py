"""Unmodified libABCD 0.1 clients (the package itself, in processes of their own) on Orbit's server, through the
legacy gateway: one registry, routing both ways, their own liveness, what they can read, bad input."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from clients.client import Client
from runcontrol import process
from runcontrol.errors import RunControlError
from tests.helpers import (PROGRAMS, EventWatcher, ServerProcess, env_for_children, pump, wait_until,
                           write_experiment)
from tests.hosts import free_port


def records(path, cmd=None):
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [m for m in lines if cmd is None or m.get("cmd") == cmd]


class Legacy:
    """A libABCD program (tests/programs/legacy_client.py) and what it received."""

    def __init__(self, folder, name, port, *more):
        self.name, self.record = name, folder / f"{name}.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(PROGRAMS / "legacy_client.py"), name, str(port),
                                      str(self.record), *map(str, more)], cwd=folder, env=env_for_children(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def got(self, cmd=None):
        return records(self.record, cmd)

    def stop(self):
        process.stop_group(self.proc, 5)


@pytest.fixture
def legacy_bus(tmp_path):
    """A server with the gateway on a free loopback port, an Orbit client `orb`, and a way to start legacy ones."""
    port = free_port()
    path = write_experiment(tmp_path, "legacy", heartbeat=0.5, timeout=2.0, max_message_bytes=4096,
                            legacy={"port": port})
    server = ServerProcess(path).start()
    orb = Client("orb", server=server.router)
    started = []

    def start(name, *more):
        started.append(Legacy(tmp_path, name, port, *more))
        return started[-1]
    start.port, start.server, start.orb = port, server, orb
    try:
        orb.connect(10)
        yield start
    finally:
        for one in started:
            one.stop()
        orb.close()
        server.stop()


def listed(orb):
    return {c["name"]: c for c in orb.request(None, "_list")}


def wait_listed(orb, *names):
    return pump([orb], lambda: set(names) <= set(listed(orb)) and listed(orb), 30)


def test_legacy_and_orbit_clients_share_one_registry_and_talk_both_ways(legacy_bus, tmp_path):
    orb = legacy_bus.orb
    watcher = EventWatcher(legacy_bus.server.events, "").sync(legacy_bus.server.router)
    try:
        bob = legacy_bus("bob")
        wait_listed(orb, "bob")
        alice = legacy_bus("alice", "--to", "bob", "--count", 5)
        clients = wait_listed(orb, "alice", "bob")
        assert clients["alice"]["transport"] == "legacy" and clients["alice"]["meta"]["legacy"] is True
        assert clients["alice"]["meta"]["address"].startswith("127.0.0.1:")
        wait_until(lambda: len(bob.got("data")) == 5, 20)
        assert [(m["seq"], m["from"]) for m in bob.got("data")] == [(i, "alice") for i in range(5)]
        seen = watcher.wait_for("msg.bob", 10, cmd="data")  # the spy sees legacy traffic
        assert seen["from"] == "alice" and "ts" in seen

        heard = []
        orb.add_handler("pinged", lambda msg: heard.append(msg["from"]))
        orb.send("alice", "ping_me", note="from orbit")
        pump([orb], lambda: heard == ["alice"], 20)  # orbit -> legacy -> orbit
        assert alice.got("ping_me")[0]["note"] == "from orbit"
        orb.send("*", "hello_all")
        wait_until(lambda: alice.got("hello_all") and bob.got("hello_all"), 20)
        assert alice.got("hello_all")[0]["from"] == "orb"
    finally:
        watcher.close()
