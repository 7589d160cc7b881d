"""Taking each message in: what every message passes before it is routed or served.

Owns counting what came in, the flood limits (each client's, and the budget of
connections that have not registered), the size limit, JSON and the envelope,
and handing a message on: to routing when it names another client, to the
server's commands (`serve`) when it is for the server. A transport hands it
frames (`take`, `drain`) or objects it decoded itself (`admit`, then
`take_message`). Deals in connections, never in sockets. Must not register
clients or answer a command itself.
"""

import logging
import time

from runcontrol import protocol
from runcontrol.bus import limits
from runcontrol.errors import ProtocolError

log = logging.getLogger("runcontrol.server")

BATCH = 1000                 # messages taken in before the timers get a turn
HELLO_CMD = "_hello"


class Intake:
    """`peer_of(conn)` names a connection's client (or None); `routing` routes and answers; `traffic` counts;
    `anonymous` is the budget of unregistered connections; `serve(conn, peer, msg)` runs a server command;
    `publish_event` tells of floods."""

    def __init__(self, spec, peer_of, routing, traffic, anonymous, serve, publish_event):
        self.max_bytes = spec.max_message_bytes
        self.client_rate = spec.client_rate
        self.peer_of = peer_of
        self.routing = routing
        self.traffic = traffic
        self.anonymous = anonymous
        self.serve = serve
        self.publish_event = publish_event

    def drain(self, receive):
        """Take in what `receive()` gives ((connection, frames), or None when none waits), BATCH at most."""
        take = self.take
        for _ in range(BATCH):
            received = receive()
            if received is None:
                return
            conn, frames = received
            try:
                take(conn, frames)
            except Exception:  # one bad message must not stop the server
                log.exception("internal error handling a message")
                self.routing.answer(conn, protocol.make_error(protocol.INTERNAL, "internal server error",
                                                              id_of(frames)))

    def take(self, conn, frames):
        """Take in one message (its frames) from `conn`: check it, then route it or serve it."""
        peer = self.peer_of(conn)
        data = frames[0]
        one = len(frames) == 1
        self._count_in(peer, len(data) if one else sum(map(len, frames)))
        budget = None
        if peer is None:
            budget = self._admit_anonymous(conn, data if one else b"")
            if budget is None:
                return
        if not one:
            self._reject_unread(conn, budget, protocol.BAD_FRAMES,
                                f"a message is one frame of JSON, not {len(frames)} frames")
            return
        if data == protocol.PONG:
            return
        if peer is not None and not limits.admit(peer, self.client_rate):
            self._throttled(peer)
            return
        if len(data) > self.max_bytes:
            self._reject_unread(conn, budget, protocol.TOO_LARGE,
                                f"message of {len(data)} bytes exceeds the limit of {self.max_bytes}",
                                protocol.find_id_in_prefix(data))
            return
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            self._reject_unread(conn, budget, exc.code, str(exc))
            return
        if budget is limits.HELLO and msg.get("cmd") != HELLO_CMD and not self._admit_not_hello():
            return
        self.take_message(conn, peer, msg)

    def admit(self, conn, peer, size):
        """Count what came in; whether it is within the flood limits (of its client, or of the unregistered)."""
        self._count_in(peer, size)
        if peer is None:
            return self._admit_anonymous(conn, b"") is not None
        if limits.admit(peer, self.client_rate):
            return True
        self._throttled(peer)
        return False

    def take_message(self, conn, peer, msg, oneway=False):
        """A decoded message of `conn`: check its envelope, then route it or serve it. `oneway`: its `id` is
        its own payload, not a request awaiting an answer (libABCD's clients)."""
        problem = protocol.check_envelope(msg)
        if problem is not None:
            self.routing.reject(conn, *problem, protocol.request_id(msg))
            return
        to = msg.get("to")
        if to is None or to == protocol.SERVER:
            self.serve(conn, peer, msg)
        elif peer is None:
            self.routing.reject(conn, protocol.NOT_REGISTERED,
                                f"send _hello before {msg['cmd']!r}: this connection is not registered", msg.get("id"))
        else:
            msg["from"] = peer.name
            msg["ts"] = time.time()
            if to == protocol.BROADCAST:
                self.routing.broadcast(peer, msg, oneway)
            else:
                self.routing.route(peer, to, msg, oneway)

    def _count_in(self, peer, size):
        self.traffic.count_in(peer, size)
        if peer is not None:
            peer.last_seen_mono = time.monotonic()  # whatever it sends shows it alive, a bare pong too

    def _throttled(self, peer):
        """`peer` sent more than its rate allows: told (and an event published) at most once a second."""
        dropped = limits.due_report(peer)
        if dropped:
            rate = self.client_rate
            log.warning("client %s sends more than %g messages/s: %d dropped", peer.name, rate, dropped)
            self.publish_event("client_throttled", name=peer.name, pid=peer.pid, dropped=dropped, limit=rate)
            self.routing.answer(peer.conn, protocol.make_error(
                protocol.THROTTLED, f"more than {rate:g} messages/s: {dropped} dropped; slow down"))

    def _admit_anonymous(self, conn, data):
        """Whether a message of a connection that has not registered may be read: the budget it was charged to
        (limits.HELLO, when its bytes name `_hello`), or None when it is dropped unread. A connection that
        authenticated with a key on the server's list is no stranger: nothing is charged."""
        if conn.key is not None:
            return limits.KNOWN
        now = time.monotonic()
        budget = limits.HELLO if protocol.says_hello(data) else limits.OTHER
        if self.anonymous.admit(conn.identity, now, budget):
            return budget
        self._report_anonymous(now)
        return None

    def _admit_not_hello(self):
        """A message charged to the hellos' budget turned out, once read, to be something else: charged to the
        budget of everything else after all, and dropped when that has no room."""
        now = time.monotonic()
        if self.anonymous.admit_late(now):
            return True
        self._report_anonymous(now)
        return False

    def _reject_unread(self, conn, budget, code, text, msg_id=None):
        """Refuse what could not be read; one charged to the hellos' budget is no `_hello`: it is charged again."""
        if budget is limits.HELLO and not self._admit_not_hello():
            return
        self.routing.reject(conn, code, text, msg_id)

    def _report_anonymous(self, now):
        dropped = self.anonymous.due_report(now)
        if dropped:
            log.warning("unregistered connections send more than allowed: %d message(s) dropped", dropped)
            self.publish_event("anonymous_throttled", dropped=dropped, total=self.anonymous.dropped_total)


def id_of(frames):
    """The `id` of a message, if its one frame decodes to an object that has one (an answer names what it answers)."""
    try:
        msg = protocol.decode(frames[0]) if len(frames) == 1 else None
    except Exception:   # whatever the frames hold: no id to name
        return None
    return msg.get("id") if isinstance(msg, dict) else None
