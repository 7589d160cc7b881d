"""The server's ZeroMQ sockets: the ROUTER command bus, the XPUB event stream, CURVE and its ZAP handler.

Owns binding (with the limits on message size and queue depth), CURVE on both
sockets with the gatekeeper deciding which client keys get in, turning what the
ROUTER receives into (connection, frames), publishing on the event stream, and
following what listeners subscribe to (so routed messages are published only
while somebody watches `msg.*`). Must not route or interpret messages.
"""

import collections
import logging

import zmq
import zmq.auth

from runcontrol.bus.connection import NOBLOCK, NOBLOCK_MORE, ZmqConnection
from runcontrol.bus.zap import ZAP_ENDPOINT, Gatekeeper
from runcontrol.errors import ConfigError

log = logging.getLogger("runcontrol.server")

HWM = 10000
HARD_SIZE_FACTOR = 16        # above this many times the limit zmq drops the frame unread
ZAP_MALFORMED = [b"1.0", b"", b"400", b"malformed", b"", b""]


class BusSockets:
    def __init__(self, spec):
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, spec.max_message_bytes * HARD_SIZE_FACTOR)
        self.router.setsockopt(zmq.LINGER, 0)
        # XPUB tells us what listeners subscribe to: routed messages are published only
        # while someone watches msg.*, so an unwatched bus pays nothing for it.
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, HWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.gate = self.zap = None
        self.subscriptions = collections.Counter()
        self.watching_msgs = False
        self.dropped = 0   # event-stream messages dropped because listeners were full
        if spec.curve is not None:
            self._secure(spec.curve)
        try:
            self.router.bind(zmq_address(spec.router))
            self.pub.bind(zmq_address(spec.events))
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"cannot bind the server's sockets ({spec.router}, {spec.events}): {exc}") from None
        self.router_address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events_address = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def _secure(self, curve):
        """CURVE on both sockets, with our ZAP handler deciding which client keys get in."""
        try:
            _, secret = zmq.auth.load_certificate(f"{curve.server_key}_secret")
        except (OSError, ValueError) as exc:
            self.close()
            raise ConfigError(f"cannot read the server's secret key {curve.server_key}_secret: {exc} "
                              "(make the keys with python -m runcontrol.bus.keys)") from None
        if secret is None:
            self.close()
            raise ConfigError(f"{curve.server_key}_secret holds no secret key")
        self.gate = Gatekeeper(curve.clients, curve.names)
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        for sock in (self.router, self.pub):
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.zap_domain = b"orbit"

    def readable(self):
        """The sockets a poller watches."""
        return [s for s in (self.router, self.pub, self.zap) if s is not None]

    def answer_zap(self):
        while True:
            try:
                frames = self.zap.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            self.zap.send_multipart(self.gate.answer(frames) or ZAP_MALFORMED)

    def receive(self):
        """One message from the ROUTER as (connection, frames after the identity), or None when none waits."""
        secure = self.gate is not None
        try:
            frames = self.router.recv_multipart(NOBLOCK, copy=not secure)
        except zmq.Again:
            return None
        key = None
        if secure:  # the key a connection authenticated with rides on its frames
            key = frames[-1].get("User-Id")
            frames = [frame.bytes for frame in frames]
        return ZmqConnection(self.router, frames[0], key), frames[1:]

    def read_subscriptions(self):
        while True:
            try:
                frame = self.pub.recv(NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == b"\x01":
                self.subscriptions[frame[1:]] += 1
            elif frame[:1] == b"\x00" and self.subscriptions[frame[1:]] > 0:
                self.subscriptions[frame[1:]] -= 1
        self.watching_msgs = any(count > 0 and (b"msg.".startswith(prefix) or prefix.startswith(b"msg."))
                                 for prefix, count in self.subscriptions.items())

    def publish(self, topic, data):
        """Two frames on the event stream; dropped (and counted) rather than block on full listeners."""
        try:
            self.pub.send(topic, NOBLOCK_MORE)
            self.pub.send(data, NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self):
        for sock in (self.router, self.pub, self.zap):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()


def zmq_address(address):
    """zmq binds an ephemeral port with `*`; accept the common `:0` too."""
    return address[:-2] + ":*" if address.endswith(":0") else address
