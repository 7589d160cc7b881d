"""Routing by name, and the answer ledger that gives every request exactly one final answer.

Owns delivering a message to the client named in `to` (or to every client),
the ledger of requests each client owes an answer (so a lost client's requests
are failed with `client_lost`, and answers go only to the requester), the limit
of requests awaiting answers per client, messages held for clients not yet back
after a restart, and the server's own answers and refusals. Deals in peers and
connections, never in socket frames. Must not register or drop clients itself:
it asks its owner to (`drop`), when a connection is found closed.
"""

import itertools
import logging
import time

from runcontrol import protocol
from runcontrol.bus.connection import Closed

log = logging.getLogger("runcontrol.server")

MAX_WAITING = 10000          # requests remembered per target, to fail them if it is lost
MAX_PARKED = 10000           # messages held for clients not yet back after a restart
ANSWERS = frozenset({"_reply", "_error", "_progress"})


class Routing:
    """Messages to clients by name. Its owner gives it:

    `peers` (the registry's names to clients, read only) and `peer_of(conn)`; `drop(peer, kind, reason)` for a
    client whose connection is found closed; `publish_event`; `mirror(topic, data)`, a routed message on the event
    stream for those who watch; `may_tell(identity, now)`, whether an unregistered connection may hear of its
    mistakes now; `count_out(peer, size)`, for the traffic figures.
    """

    def __init__(self, spec, peers, peer_of, drop, publish_event, mirror, may_tell, count_out):
        self.max_pending = spec.max_pending
        self.peers, self.peer_of, self.drop = peers, peer_of, drop
        self.publish_event, self.mirror, self.may_tell, self.count_out = publish_event, mirror, may_tell, count_out
        self.parked = {}           # a target's name -> what is held for it: (arrival, sender, to, msg, oneway)
        self._held = 0
        self._arrivals = itertools.count()
        self.settling = True       # just after a (re)start: see `route`
        self.dropped = 0           # messages a client's full queue did not take

    # --- to one client ---------------------------------------------------------------------

    def route(self, peer, to, msg, oneway=False):
        """Deliver `msg` from `peer` to the client named `to`; a request (an `id`, unless `oneway`) goes on
        the target's ledger until answered."""
        target = self.peers.get(to)
        msg_id = msg.get("id")
        if target is None and self.settling and self._held < MAX_PARKED:
            # Just after a (re)start the clients are registering again: hold it for them.
            self.parked.setdefault(to, []).append((next(self._arrivals), peer.name, to, msg, oneway))
            self._held += 1
            return
        if target is None:
            self.reject(peer.conn, protocol.NO_SUCH_CLIENT, f"no client named {to!r} is registered", msg_id)
            return
        cmd = msg["cmd"]
        request = msg_id is not None and cmd not in ANSWERS and not oneway
        if cmd in ANSWERS:
            if not self._owed(peer, to, msg.get("re"), final=cmd != "_progress"):
                return
        elif request and peer.pending >= self.max_pending:
            self.reject(peer.conn, protocol.TOO_MANY_PENDING,
                        f"{peer.pending} of your requests still await answers (server.max_pending): "
                        "wait for some", msg_id)
            return
        data = protocol.encode(msg)
        if not fits(target.conn, data):
            self.reject(peer.conn, protocol.TOO_LARGE, f"{to!r} is a libABCD client: it reads messages of at most "
                                                       f"{target.conn.max_message} bytes, and this one has {len(data)}",
                        msg_id)
            return
        if self.deliver(target, data):
            if request:
                self._await_answer(target, peer, msg_id)
            self.mirror(target.topic, data)
        elif self.peers.get(target.name) is target:
            self.reject(peer.conn, protocol.QUEUE_FULL, f"{to!r} is not reading its messages; this one was dropped",
                        msg_id)
        else:  # its connection closed as we delivered: it was dropped, without this request on its ledger
            self.reject(peer.conn, protocol.NO_SUCH_CLIENT, f"{to!r} disconnected", msg_id)

    def _await_answer(self, target, requester, msg_id):
        waiting, key = target.waiting, (requester.name, msg_id)
        if key in waiting:
            return
        if len(waiting) >= MAX_WAITING:
            self._answered(target, next(iter(waiting)))
        waiting[key] = None
        requester.pending += 1

    def _answered(self, target, key):
        """`target` no longer owes an answer for `key` (requester name, id)."""
        if target.waiting.pop(key, False) is None:
            requester = self.peers.get(key[0])
            if requester is not None and requester.pending > 0:
                requester.pending -= 1

    def _owed(self, peer, to, re_id, final):
        """Whether `peer` owes `to` an answer to request `re_id`; if not, tell `peer` and drop it.

        Also just after a restart: the requests the previous instance routed are unknown here, and
        their requesters send them again once registered (the client library does), which puts them
        on this instance's ledger; an answer to anything else is refused.
        """
        key = (to, re_id)
        if key in peer.waiting:
            if final:
                self._answered(peer, key)
            return True
        self.reject(peer.conn, protocol.NOT_ALLOWED,
                    f"{to!r} sent {peer.name!r} no request {re_id!r} that awaits an answer: "
                    "answers go only to the requester")
        return False

    def fail_waiting(self, peer, reason):
        """`peer` is gone: each request it still owed an answer gets one, `client_lost`."""
        for requester, msg_id in peer.waiting:
            asker = self.peers.get(requester)
            if asker is not None:
                asker.pending = max(0, asker.pending - 1)
                self.answer(asker.conn, protocol.make_error(
                    protocol.CLIENT_LOST, f"{peer.name!r} left before answering: {reason}", msg_id))
        peer.waiting.clear()

    # --- to every client ---------------------------------------------------------------------

    def broadcast(self, peer, msg, oneway=False):
        """`msg` to every client but `peer` (those it fits); its `id` (unless `oneway`) gets the list of names."""
        msg_id = None if oneway else msg.pop("id", None)
        data = protocol.encode(msg)
        delivered = [p.name for p in list(self.peers.values())
                     if p is not peer and fits(p.conn, data) and self.deliver(p, data)]
        self.mirror(b"msg.*", data)
        if msg_id is not None:
            self.answer(peer.conn, protocol.make_reply(msg_id, {"to": delivered}))

    # --- sending ----------------------------------------------------------------------------------

    def deliver(self, target, data):
        """Send to a registered client without ever blocking; False if it could not take it."""
        try:
            taken = target.conn.send(data)
        except Closed:
            self.drop(target, "client_lost", "connection closed")
            return False
        if not taken:
            target.dropped += 1
            self.dropped += 1
            now = time.monotonic()
            if now >= target.report_at:  # an event at most once a second per slow client
                target.report_at = now + 1.0
                self.publish_event("client_slow", name=target.name, pid=target.pid, dropped=target.dropped)
            return False
        self.count_out(target, len(data))
        return True

    def answer(self, conn, msg):
        """Send a message of the server's own; the recipient may have gone, which is fine."""
        msg["from"] = protocol.SERVER
        msg["ts"] = time.time()
        data = protocol.encode(msg)
        peer = self.peer_of(conn)
        if peer is not None:
            return self.deliver(peer, data)
        try:
            return conn.send(data)
        except Closed:
            return False

    def reject(self, conn, code, text, msg_id=None):
        """An `_error` for what `conn` sent; to an unregistered connection only as often as its budget allows."""
        peer = self.peer_of(conn)
        log.debug("rejected from %s: %s %s", peer.name if peer else conn.describe(), code, text)
        if peer is None and not self.may_tell(conn.identity, time.monotonic()):
            return
        self.answer(conn, protocol.make_error(code, text, msg_id))

    # --- held messages ------------------------------------------------------------------------------

    def unpark(self, matches):
        """Route the held messages whose target `matches`, in the order they came. Held by target, so that each of
        thousands of clients registering again after a restart finds its own without a look at all the others'."""
        names = [to for to in self.parked if matches(to)]
        if not names:
            return
        held = sorted((entry for to in names for entry in self.parked.pop(to)), key=arrival)
        self._held -= len(held)
        for _, sender, to, msg, oneway in held:
            peer = self.peers.get(sender)
            if peer is not None:
                self.route(peer, to, msg, oneway)

    def settled(self):
        self.settling = False
        if self._held:
            log.info("%d held message(s) for clients that did not come back", self._held)
        self.unpark(lambda to: True)


def arrival(entry):
    return entry[0]


def fits(conn, data):
    return conn.max_message is None or len(data) <= conn.max_message
