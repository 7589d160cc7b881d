"""One client's ZeroMQ connection to the server's router: a DEALER socket and its monitor.

Owns the socket options, CURVE on the client side, connecting, sending without
blocking (with a short wait under back-pressure), receiving frames, and reading
the monitor into plain words ("connected", "disconnected", "refused our key",
...) and whether the connection is up (or since when it is not). Must not know
what the messages mean: the client core does.
"""

import logging
import time
import uuid

import zmq
import zmq.utils.monitor

from runcontrol.errors import ConfigError

log = logging.getLogger("runcontrol.client.client")

HWM = 10000
SEND_WAIT_MS = 1000
# A lost connection is tried again 10 to 20 ms later (ZeroMQ adds up to one interval at random), then
# at doubling intervals up to once a second while nobody answers there.
RECONNECT_MS = 10
RECONNECT_MAX_MS = 1000
FIRST_RETRY_S = 2 * RECONNECT_MS / 1000   # the first try after a loss has come by then
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's enum flag costs an enum operation per call
MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
             | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
REFUSALS = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused our key",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed the key exchange (not the server whose key we hold?)"}


def apply_curve(sock, curve):
    """CURVE client keys on `sock`: `curve` is (server public, our public, our secret), or None."""
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve


class Link:
    """A DEALER connected to `router`; `sock` and `monitor` are what a poller watches."""

    def __init__(self, ctx, router, curve=None):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        apply_curve(sock, curve)
        self.monitor = sock.get_monitor_socket(MONITORED)
        try:
            sock.connect(router)
        except zmq.ZMQError as exc:
            self.monitor.close(linger=0)
            sock.close(linger=0)
            raise ConfigError(f"cannot connect to server address {router!r}: {exc}") from None
        self.sock = sock
        self.router = router
        self.up = False   # the last word of the monitor: connected (and not disconnected since)
        self.down_since = time.monotonic()

    def send_now(self, data):
        """Send if the connection takes it at once; False otherwise."""
        try:
            self.sock.send(data, NOBLOCK)
            return True
        except zmq.Again:
            return False

    def send_waiting(self, data):
        """Send; under back-pressure wait up to SEND_WAIT_MS for room. False if it still would block."""
        if self.send_now(data):
            return True
        return bool(self.sock.poll(SEND_WAIT_MS, zmq.POLLOUT)) and self.send_now(data)

    def receive(self):
        """Every frame waiting (messages of one frame; others are dropped)."""
        frames = []
        while True:
            try:
                parts = self.sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                return frames
            if len(parts) == 1:
                frames.append(parts[0])

    def changes(self):
        """What the monitor saw since the last call: "connected", "disconnected", or a refusal's words."""
        seen = []
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self.monitor, NOBLOCK)["event"]
            except zmq.Again:
                return seen
            if event == zmq.EVENT_DISCONNECTED:
                self.up, self.down_since = False, time.monotonic()
                seen.append("disconnected")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up = True
                seen.append("connected")
            elif event in REFUSALS:
                seen.append(REFUSALS[event])

    def close(self, linger=0):
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=linger)
