"""The server's ZeroMQ sockets: the ROUTER command bus, the XPUB event stream, CURVE and its ZAP handler.

Owns binding (with the limits on message size and queue depth, and room among
the process's open files for a connection from each of `max_clients`), CURVE on
both sockets with the gatekeeper deciding which client keys get in, turning what
the ROUTER receives into (connection, frames), publishing on the event stream,
and following what listeners subscribe to (so routed messages are published only
while somebody watches `msg.*`). Must not route or interpret messages.
"""

import collections
import logging
import resource

import zmq
import zmq.auth

from runcontrol.bus.connection import COPY_BELOW, NOBLOCK, NOBLOCK_MORE, ZmqConnection, send_frame
from runcontrol.bus.zap import ZAP_ENDPOINT, Gatekeeper
from runcontrol.errors import ConfigError

log = logging.getLogger("runcontrol.server")

HWM = 10000
HARD_SIZE_FACTOR = 16        # above this many times the limit zmq drops the frame unread
OTHER_FILES = 256            # open files the server needs besides a connection per client
ZAP_MALFORMED = [b"1.0", b"", b"400", b"malformed", b"", b""]


class BusSockets:
    def __init__(self, spec):
        room_for_connections(spec.max_clients)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, spec.max_message_bytes * HARD_SIZE_FACTOR)
        self.router.setsockopt(zmq.LINGER, 0)
        # After a restart every client connects again at once: connections ZeroMQ has not accepted yet wait in the
        # kernel's queue instead of being refused into TCP's retry of a second and more (ZeroMQ's default is 100).
        self.router.setsockopt(zmq.BACKLOG, spec.max_clients)
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
        recv = self.router.recv
        try:
            identity = recv(NOBLOCK)
        except zmq.Again:
            return None
        # Its frames as zmq Frames: each says whether more follow (pyzmq's recv_multipart asks the socket through
        # an enum, costing more than the frames themselves), and carries the key a connection authenticated with.
        frame = recv(NOBLOCK, False)
        frames = [content(frame)]
        while frame.more:
            frame = recv(NOBLOCK, False)
            frames.append(content(frame))
        key = frame.get("User-Id") if self.gate is not None else None
        return ZmqConnection(self.router, identity, key), frames

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
            send_frame(self.pub, topic, NOBLOCK_MORE)
            send_frame(self.pub, data, NOBLOCK, len(data) < COPY_BELOW)
        except zmq.Again:
            self.dropped += 1

    def close(self):
        for sock in (self.router, self.pub, self.zap):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()


def content(frame):
    """A frame's bytes: a copy when small, else a view of ZeroMQ's own buffer (JSON parses it the same)."""
    return frame.bytes if len(frame) < COPY_BELOW else frame.buffer


def room_for_connections(clients):
    """Raise the process's limit of open files (its soft limit, up to the hard one) so that a connection from each
    of `clients` fits beside the server's own files; else say how many fit (beyond them ZeroMQ cannot accept)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = clients + OTHER_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        log.warning("the server can hold about %d connections (its limit of open files is %d), fewer than "
                    "server.max_clients (%d): raise the hard limit (ulimit -Hn, LimitNOFILE)", raised - OTHER_FILES,
                    raised, clients)


def zmq_address(address):
    """zmq binds an ephemeral port with `*`; accept the common `:0` too."""
    return address[:-2] + ":*" if address.endswith(":0") else address
