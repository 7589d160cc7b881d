"""The receiver kit in a real process: UDP, TCP and PULL in, PUB out, rates published, bounded under bursts."""

import socket
import subprocess
import sys
import time

import psutil
import pytest
import zmq

from runcontrol.client.client import Client
from runcontrol import process
from tests.helpers import PROGRAMS, ROOT, env_for_children, free_port, pump, wait_until


@pytest.fixture
def sink(server, tmp_path):
    made, ops = [], []

    def start(*flags):
        ports = {name: free_port() for name in ("udp", "tcp", "pull", "pub")}
        with open(tmp_path / "sink.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(PROGRAMS / "sink_receiver.py"), "sink", "--udp", f"127.0.0.1:{ports['udp']}",
                 "--tcp", f"127.0.0.1:{ports['tcp']}", "--pull", f"tcp://127.0.0.1:{ports['pull']}",
                 "--pub", f"tcp://127.0.0.1:{ports['pub']}", *flags], cwd=ROOT,
                env={**env_for_children(), "ORBIT_SERVER": server.router}, stderr=log, start_new_session=True)
        made.append(proc)
        op = Client("op", server=server.router)
        ops.append(op)
        op.connect(10)
        pump([op], lambda: "sink" in {c["name"] for c in op.request(None, "_list")}, 20)
        return proc, op, ports
    yield start
    for op in ops:
        op.close()
    for proc in made:
        process.stop_group(proc, 10)


def udp_burst(port, count, size=1024, pace=False):
    """`count` datagrams as fast as they go; `pace`: a pause every 50, so the kernel's buffer never overflows."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for seq in range(count):
            out.sendto(seq.to_bytes(4, "little") + b"x" * (size - 4), ("127.0.0.1", port))
            if pace and seq % 50 == 49:
                time.sleep(0.005)


def test_packets_from_udp_tcp_and_pull_are_counted_and_the_rates_published(sink):
    proc, op, ports = sink()
    udp_burst(ports["udp"], 500, pace=True)
    with socket.create_connection(("127.0.0.1", ports["tcp"])) as stream:
        stream.sendall(b"y" * 10000)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(f"tcp://127.0.0.1:{ports['pull']}")
    for _ in range(100):
        push.send(b"z" * 100)
    push.close()
    rates = pump([op], lambda: (r := op.request("sink", "rates"))["bytes"] >= 500 * 1024 + 10000 + 100 * 100
                 and r["processed"] + r["dropped"] + r["errors"] >= r["packets"] and r, 20)   # all handled
    assert rates["dropped"] == rates["kernel_dropped"] == 0 and rates["processed"] == rates["packets"]
    retained = pump([op], lambda: op.request(None, "_retained").get("sink.rates"), 20)["data"]
    assert retained["packets"] >= 601 and "packets_per_s" in retained and "queue" in retained
    assert retained["kernel_dropped"] == 0 and "kernel_dropped_per_s" in retained


def test_a_subscriber_that_does_not_read_never_stalls_the_receiver(sink):
    proc, op, ports = sink()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{ports['pub']}")
    try:
        # Once the subscription has reached the publisher, it holds a queue for this subscriber: a packet shows it.
        wait_until(lambda: udp_burst(ports["udp"], 1) or sub.poll(100), 10, 0, what="the subscription")
        udp_burst(ports["udp"], 20000, 8192)
        def settled():   # every packet handled, and no more coming (the kernel's buffer may still hold some)
            first = op.request("sink", "rates")
            op.poll(0.3)
            now = op.request("sink", "rates")
            return now["packets"] == first["packets"] > 0 and now["processed"] + now["dropped"] >= now["packets"] \
                and now["queue"] == 0 and now
        done = pump([op], settled, 30)
        assert done["unpublished"] > 0  # what the subscriber could not take was counted, not waited for
    finally:
        sub.close()


def test_a_burst_faster_than_the_disk_is_dropped_and_counted_with_bounded_memory(sink):
    proc, op, ports = sink("--delay", "0.005", "--queue", "200")
    before = psutil.Process(proc.pid).memory_info().rss
    udp_burst(ports["udp"], 20000, 8192)  # 160 MB, far faster than 200 packets a second
    rates = pump([op], lambda: (r := op.request("sink", "rates"))["dropped"] > 0 and r, 30)
    assert rates["queue"] <= 200
    assert psutil.Process(proc.pid).memory_info().rss - before < 50 * 1024 * 1024  # the queue's 1.6 MB, not 160


def test_outputs_bind_on_loopback_connect_to_a_remote_subscriber_and_refuse_an_open_bind(server):
    from clients.kit.receiver import Receiver
    from runcontrol.errors import ConfigError
    receiver = Receiver("outputs", server=server.router)
    ctx = zmq.Context.instance()
    far = ctx.socket(zmq.SUB)  # a subscriber elsewhere that binds; the receiver connects to it
    try:
        far.setsockopt(zmq.SUBSCRIBE, b"")
        port = far.bind_to_random_port("tcp://127.0.0.1")
        receiver.add_output("remote", f"tcp://127.0.0.1:{port}")
        local = receiver.add_output("local", "tcp://127.0.0.1:0")
        assert local.startswith("tcp://127.0.0.1:")
        with pytest.raises(ConfigError, match="a local output binds on loopback"):
            receiver.add_output("local", "tcp://0.0.0.0:0")
        with pytest.raises(ConfigError, match="can be reached from the network: give it CURVE keys"):
            receiver.add_output("outbound", "tcp://0.0.0.0:0")
        wait_until(lambda: receiver.publish_data(b"data", b"hello") or far.poll(100), 10)
        assert far.recv_multipart() == [b"data", b"hello"]
    finally:
        far.close()
        for sock in receiver.outputs:
            sock.close()
        receiver.close()
