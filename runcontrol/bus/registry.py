"""The registry of named clients: who holds which name, on which connection, and since when.

Owns `_hello` (register, rename, refuse), name claims (a name held by another
connection is handed over once its holder is found gone, or refused while it
answers; their deadlines on the server's timers), dropping a client (left, lost,
replaced) and the heartbeat that finds the silent ones. Sends only the server's
own pings and its answers to `_hello`; tells its owner when a client joined
(`joined`: the messages held for it go on) and when one was dropped (`dropped`:
the requests it still owed are failed). Deals in connections, never in socket
frames. Must not route a client's message, nor keep the ledger of what is owed.
"""

import logging
import secrets
import time

from runcontrol import protocol
from runcontrol.bus.commands.base import ANSWERED
from runcontrol.bus.connection import Closed
from runcontrol.errors import ProtocolError

log = logging.getLogger("runcontrol.server")

CLAIM_RECHECK_S = 0.05       # how often a claimed name's holder is probed for a closed connection
STALL_FORGIVEN_S = 1.0       # the server's loop late by this much past a heartbeat: it stood still


class Peer:
    """One registered client: its connection, its name and what it said of itself, its counters."""

    __slots__ = ("name", "conn", "topic", "pid", "host", "actions", "meta", "connected_at",
                 "last_seen_mono", "msgs_in", "msgs_out", "bytes_in", "bytes_out",
                 "dropped", "waiting", "prev", "tokens", "refilled", "throttled", "report_at",
                 "pending")

    def __init__(self, conn, hello, now):
        self.conn = conn
        self.set_hello(hello)
        self.connected_at = now
        self.last_seen_mono = time.monotonic()
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = self.dropped = 0
        self.waiting = {}           # (requester name, id) of requests it owes an answer
        self.prev = (0, 0, 0, 0)
        self.tokens = None          # the flood limit's bucket, filled at the first message
        self.refilled = self.last_seen_mono
        self.throttled = 0          # messages dropped since the last report
        self.report_at = 0.0
        self.pending = 0            # its requests that await an answer

    def set_hello(self, hello):
        self.name = hello.name
        self.topic = f"msg.{hello.name}".encode()
        self.pid, self.host, self.actions, self.meta = hello.pid, hello.host, hello.actions, hello.meta

    def describe(self):
        return {"name": self.name, "pid": self.pid, "host": self.host, "actions": self.actions,
                "meta": self.meta, "connected_at": self.connected_at,
                "last_seen": time.time() - (time.monotonic() - self.last_seen_mono),
                "msgs_in": self.msgs_in, "msgs_out": self.msgs_out, "transport": self.conn.transport}


class Claim:
    """A `_hello` for a name another connection holds, waiting to see if the holder is alive."""

    def __init__(self, conn, hello, msg_id, deadline, probe_id, started):
        self.conn, self.hello, self.msg_id = conn, hello, msg_id
        self.deadline, self.probe_id, self.started = deadline, probe_id, started
        self.recheck = started + CLAIM_RECHECK_S


class Registry:
    """The names and their clients. Its owner gives it:

    `timers` (the server's timer heap, whose clock is the monotonic one); `welcome(name)`, the result of a
    `_hello`; `answer(conn, msg)` and `send(peer, data)`, to answer a connection and ping a client; `publish_event`;
    `joined(peer)` and `dropped(peer, reason)`, called once a client is registered and once it is unregistered.
    """

    def __init__(self, spec, timers, welcome, answer, send, publish_event, joined, dropped):
        self.max_clients = spec.max_clients
        self.timeout_s = spec.timeout_s
        self.heartbeat_s = spec.heartbeat_s
        self.claim_grace_s = min(2.0, spec.timeout_s)
        self.timers = timers
        self.welcome, self.answer, self.send = welcome, answer, send
        self.publish_event, self.joined, self.dropped = publish_event, joined, dropped
        self._last_beat = timers.clock()
        self.by_identity = {}
        self.by_name = {}
        self.claims = {}             # name -> [Claim], the first one's deadlines on `_checks[name]`
        self._checks = {}

    def peer_of(self, conn):
        return self.by_identity.get(conn.identity)

    def hello(self, conn, peer, hello, msg_id, gate=None):
        """Register `conn` as `hello.name`; returns the welcome, or ANSWERED when deferred."""
        refusal = gate.may_register(conn.key, hello.name) if gate is not None else None
        if refusal is not None:
            raise ProtocolError(protocol.NOT_ALLOWED, refusal)
        if peer is not None:
            if peer.name == hello.name:
                peer.set_hello(hello)
                return self.welcome(hello.name)
            self.drop(peer, "client_left", f"renamed to {hello.name}")
        holder = self.by_name.get(hello.name)
        if holder is None and len(self.by_name) >= self.max_clients:
            raise ProtocolError(protocol.TOO_MANY_CLIENTS, f"the server already holds {self.max_clients} clients "
                                "(server.max_clients)")
        if holder is None:
            self._register(conn, hello)
            return self.welcome(hello.name)
        probe_id = f"claim-{secrets.token_hex(4)}"
        if not probe(holder, probe_id):
            self.drop(holder, "client_replaced", "its connection is closed", by_pid=hello.pid)
            self._register(conn, hello)
            return self.welcome(hello.name)
        now = self.timers.clock()
        claims = self.claims.setdefault(hello.name, [])
        claims.append(Claim(conn, hello, msg_id, now + self.claim_grace_s, probe_id, now))
        if len(claims) == 1:
            self._check_claims_at(hello.name, claims[0].recheck)
        return ANSWERED

    def _register(self, conn, hello):
        peer = Peer(conn, hello, time.time())
        self.by_identity[conn.identity] = peer
        self.by_name[hello.name] = peer
        log.info("client %s joined (pid %s, host %s)", hello.name, hello.pid, hello.host)
        self.publish_event("client_joined", name=hello.name, pid=hello.pid, host=hello.host,
                           actions=hello.actions, meta=hello.meta)
        self.joined(peer)
        return peer

    def pong(self, peer, re_id):
        """A pong answering a name-claim probe proves the holder alive: refuse the claimants."""
        if peer is None or re_id is None:
            return
        for claim in self.claims.get(peer.name, []):
            if claim.probe_id == re_id:
                self._settle(peer.name, holder_alive=True)
                return

    def _check_claims_at(self, name, when):
        self._checks[name] = self.timers.at(when, lambda: self._check_claims(name))

    def _check_claims(self, name):
        """Hand a claimed name over once its holder is gone, its connection is seen closed or the grace ends;
        else probe the holder again soon."""
        claims = self.claims.get(name)
        if claims is None:
            return
        first, now = claims[0], self.timers.clock()
        holder = self.by_name.get(name)
        if holder is None:
            self._settle(name, holder_alive=False, reason="it left")
        elif now >= first.recheck and not probe(holder, first.probe_id):
            self._settle(name, holder_alive=False, reason="its connection is closed")
        elif now >= first.deadline:
            # a libABCD client never answers a ping: its open connection and its own timeout say it lives
            alive = holder.last_seen_mono >= first.started or not holder.conn.answers_pings
            self._settle(name, holder_alive=alive, reason="it did not answer a ping")
        else:
            first.recheck = now + CLAIM_RECHECK_S
            self._check_claims_at(name, min(first.recheck, first.deadline))

    def _settle(self, name, holder_alive, reason=""):
        claims = self.claims.pop(name)
        self._checks.pop(name).cancel()
        if not holder_alive:
            holder = self.by_name.get(name)
            winner = claims.pop(0)
            if holder is not None:
                self.drop(holder, "client_replaced", reason, by_pid=winner.hello.pid)
                holder.conn.close()
            self._register(winner.conn, winner.hello)
            if winner.msg_id is not None:
                self.answer(winner.conn, protocol.make_reply(winner.msg_id, self.welcome(name)))
        for claim in claims:
            self.answer(claim.conn, protocol.make_error(
                protocol.NAME_TAKEN, f"name {name!r} is held by a live client", claim.msg_id))

    def drop(self, peer, kind, reason, **info):
        """Unregister `peer` and publish `kind`; its owner fails the requests it still owed answers."""
        if self.by_name.get(peer.name) is peer:
            del self.by_name[peer.name]
        self.by_identity.pop(peer.conn.identity, None)
        log.info("client %s %s: %s", peer.name, kind.replace("client_", ""), reason)
        self.publish_event(kind, name=peer.name, pid=peer.pid, host=peer.host, reason=reason, **info)
        self.dropped(peer, reason)
        if peer.name in self.claims:  # its claimant gets the name at the loop's next turn, not at the next recheck
            self._checks[peer.name].cancel()
            self._check_claims_at(peer.name, self.timers.clock())

    def heartbeat(self):
        """Drop the clients silent past the timeout; ping the others."""
        now = self.timers.clock()
        self._forgive_own_stall(now)
        ping = protocol.encode({**protocol.make_ping(), "from": protocol.SERVER, "ts": time.time()})
        for peer in list(self.by_name.values()):
            silent_s = now - peer.last_seen_mono
            if silent_s > (peer.conn.timeout_s or self.timeout_s):
                self.drop(peer, "client_lost", f"silent for {silent_s:.1f} s", silent=round(silent_s, 3))
                peer.conn.close()
            else:
                self.send(peer, ping)

    def _forgive_own_stall(self, now):
        """When the server's own loop stood still (stopped, starved) well past a heartbeat, the silence of that time
        is its own, not its clients': it is not counted against them (else all would be dropped as lost at once)."""
        last, self._last_beat = self._last_beat, now
        stalled_s = now - last - self.heartbeat_s
        if stalled_s < STALL_FORGIVEN_S:
            return
        log.warning("the server stood still for %.1f s (stopped or starved): that silence is not held against its "
                    "%d client(s)", stalled_s, len(self.by_name))
        for peer in self.by_name.values():
            peer.last_seen_mono = min(now, peer.last_seen_mono + stalled_s)


def probe(holder, probe_id):
    """Ping the holder of a claimed name; False when its connection is already closed."""
    ping = {**protocol.make_ping(probe_id), "from": protocol.SERVER, "ts": time.time()}
    try:
        holder.conn.send(protocol.encode(ping))
    except Closed:
        return False
    return True  # taken, or not read (a full queue): alive or not, the grace decides
