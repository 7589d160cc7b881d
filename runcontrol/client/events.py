"""A client's subscription to the server's event stream: a SUB socket and the callbacks per topic prefix.

Owns connecting to the stream the server names in its welcome (again after a
restart), subscribing, and handing each message to the callbacks whose prefix
matches. Must not send anything.
"""

import logging

import zmq

from runcontrol.client.link import HWM, NOBLOCK, apply_curve
from runcontrol import protocol
from runcontrol.errors import ProtocolError

log = logging.getLogger("runcontrol.client.client")


class EventStream:
    def __init__(self, ctx, curve):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        apply_curve(self.sock, curve)
        self.address = None
        self._subs = []

    def subscribe(self, prefix, callback):
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("ascii"))
        self._subs.append((prefix, callback))

    def connect(self, address):
        """Follow the stream at `address`, leaving the one followed before."""
        if address == self.address:
            return
        if self.address is not None:
            try:
                self.sock.disconnect(self.address)
            except zmq.ZMQError:
                pass
        self.address = address
        self.sock.connect(address)

    def drain(self):
        """Hand every waiting message to its callbacks; how many there were."""
        count = 0
        while True:
            try:
                frames = self.sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                return count
            count += 1
            try:
                topic, obj = protocol.split_stream_frames(frames)
            except (ProtocolError, UnicodeDecodeError) as exc:
                log.warning("ignored an event-stream message: %s", exc)
                continue
            for prefix, callback in self._subs:
                if topic.startswith(prefix):
                    callback(topic, obj)

    def close(self):
        self.sock.close(linger=0)
