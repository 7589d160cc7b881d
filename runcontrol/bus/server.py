"""The central server: ROUTER command bus, PUB event stream, beacon, registry, liveness.

Owns the registry of named clients, routing on `to`, ping/pong liveness, retained
values and the server's own pid file. The commands it answers itself live one per
module in `runcontrol/commands/`. Must not start or kill processes.

Run: python -m runcontrol.server --experiment FILE [--pidfile PATH]
"""

import argparse
import collections
import logging
import os
import secrets
import signal
import socket
import sys
import time

import zmq
import zmq.auth

import experiments
from runcontrol import logsetup, pidfile, protocol
from runcontrol.bus import commands, discovery
from runcontrol.bus.commands.base import ANSWERED
from runcontrol.errors import ConfigError, ProtocolError
from runcontrol.bus.zap import ZAP_ENDPOINT, Gatekeeper

log = logging.getLogger("runcontrol.server")

PONG = protocol.encode({"cmd": "_pong"})
BATCH = 1000                 # messages handled before timers get a turn
STATS_INTERVAL_S = 1.0
TOUCH_INTERVAL_S = 0.5
EVENT_HISTORY = 1000
MAX_WAITING = 10000          # requests remembered per target, to fail them if it is lost
HWM = 10000
HARD_SIZE_FACTOR = 16        # above this many times the limit zmq drops the frame unread
MAX_PARKED = 10000           # messages held for clients not yet back after a restart
CLAIM_RECHECK_S = 0.05       # how often a claimed name's holder is probed for a closed connection
# Plain ints: pyzmq's enum flags cost an enum operation on every send.
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class Peer:
    """One registered client, keyed by its ROUTER identity and its name."""

    __slots__ = ("name", "identity", "topic", "pid", "host", "actions", "meta", "connected_at",
                 "last_seen_mono", "msgs_in", "msgs_out", "bytes_in", "bytes_out",
                 "dropped", "waiting", "rates", "prev", "tokens", "refilled", "throttled", "report_at",
                 "pending")

    def __init__(self, identity, hello, now):
        self.identity = identity
        self.set_hello(hello)
        self.connected_at = now
        self.last_seen_mono = time.monotonic()
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = self.dropped = 0
        self.waiting = {}
        self.rates = {}
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
                "msgs_in": self.msgs_in, "msgs_out": self.msgs_out}


class Claim:
    """A `_hello` for a name another connection holds, waiting to see if the holder is alive."""

    def __init__(self, identity, hello, msg_id, deadline, probe_id, started):
        self.identity, self.hello, self.msg_id = identity, hello, msg_id
        self.deadline, self.probe_id, self.started = deadline, probe_id, started
        self.recheck = started + CLAIM_RECHECK_S


class Server:
    def __init__(self, experiment, pidfile_path=None):
        self.experiment = experiment
        spec = experiment.server
        self.heartbeat_s = spec.heartbeat_s
        self.timeout_s = spec.timeout_s
        self.max_bytes = spec.max_message_bytes
        self.client_rate = spec.client_rate
        self.max_clients = spec.max_clients
        self.max_pending = spec.max_pending
        self.claim_grace_s = min(2.0, spec.timeout_s)
        # Just after a (re)start the clients are registering again: a message for a name
        # not yet back is held for them this long instead of refused.
        self.settle_s = 2 * spec.beacon.interval_s + 1.0
        self.parked = collections.deque()
        self.settling = True
        self.instance = secrets.token_hex(6)
        self.started = time.time()
        self.pidfile = pidfile_path or experiment.paths.state / "server.pid"
        self.by_identity = {}
        self.by_name = {}
        self.claims = {}
        self.events = collections.deque(maxlen=EVENT_HISTORY)
        self.retained = {}
        self.totals = [0, 0, 0, 0]   # msgs_in, bytes_in, msgs_out, bytes_out
        self.dropped = 0
        self.stats = {}
        self._prev_totals = (0, 0, 0, 0)
        self._stop_signal = None
        self._bind(spec)

    # --- set-up --------------------------------------------------------------

    def _bind(self, spec):
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, HWM)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.max_bytes * HARD_SIZE_FACTOR)
        self.router.setsockopt(zmq.LINGER, 0)
        # XPUB tells us what listeners subscribe to: routed messages are published only
        # while someone watches msg.*, so an unwatched bus pays nothing for it.
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, HWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.gate = self.zap = self.sender_key = None
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
        payload = protocol.make_beacon(self.experiment.name, self.instance, self.router_address,
                                       self.events_address, os.getpid(), self.started)
        self.beacon = discovery.BeaconSender(spec.beacon.address, spec.beacon.port, payload)
        self.beacon_interval_s = spec.beacon.interval_s
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.pub, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        if self.zap is not None:
            self.poller.register(self.zap, zmq.POLLIN)
        self.subscriptions = collections.Counter()
        self.watching_msgs = False

    def close(self):
        for sock in ("router", "pub", "zap"):
            if getattr(self, sock, None) is not None:
                getattr(self, sock).close(linger=0)
        if hasattr(self, "beacon"):
            self.beacon.close()
        self.ctx.term()

    def _secure(self, curve):
        """CURVE on both sockets, with our ZAP handler deciding which client keys get in."""
        try:
            _, secret = zmq.auth.load_certificate(f"{curve.server_key}_secret")
        except (OSError, ValueError) as exc:
            self.close()
            raise ConfigError(f"cannot read the server's secret key {curve.server_key}_secret: {exc} "
                              "(make the keys with python -m runcontrol.keys)") from None
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

    def _answer_zap(self):
        while True:
            try:
                frames = self.zap.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            self.zap.send_multipart(self.gate.answer(frames) or [b"1.0", b"", b"400", b"malformed", b"", b""])

    # --- main loop -------------------------------------------------------------

    def serve(self):
        """Run until SIGTERM or SIGINT; then announce, close and return."""
        try:
            pidfile.write(self.pidfile)
        except OSError as exc:
            self.close()
            raise ConfigError(f"cannot write the pid file {self.pidfile}: {exc.strerror}") from None
        self._install_signals()
        log.info("server %s of %s: router %s, events %s, beacon %s:%s every %.1f s, pid file %s",
                 self.instance, self.experiment.name, self.router_address, self.events_address,
                 *self.beacon.target, self.beacon_interval_s, self.pidfile)
        exposed = self.experiment.server.exposed()
        if exposed and self.experiment.server.curve is None:
            log.warning("INSECURE: %s can be reached from the network without keys (server.insecure is set): "
                        "anybody who reaches it can register under any name and command any program",
                        " and ".join(exposed))
        self.publish_event("server_started", instance=self.instance, pid=os.getpid(),
                           router=self.router_address, events=self.events_address)
        now = time.monotonic()
        self._next = {"beacon": now, "heartbeat": now + self.heartbeat_s,
                      "stats": now + STATS_INTERVAL_S, "touch": now + TOUCH_INTERVAL_S,
                      "settled": now + self.settle_s}
        try:
            while self._stop_signal is None:
                self._run_timers(time.monotonic())
                wait_ms = max(0, (self._next_deadline() - time.monotonic()) * 1000)
                ready = dict(self.poller.poll(wait_ms))
                if self.router in ready:
                    self._drain()
                if self.pub in ready:
                    self._read_subscriptions()
                if self._wake_r.fileno() in ready:
                    self._drain_wakeups()
                if self.zap is not None and self.zap in ready:
                    self._answer_zap()
        finally:
            self._shutdown()

    def _install_signals(self):
        def on_signal(signum, _frame):
            self._stop_signal = signum
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _shutdown(self):
        reason = signal.Signals(self._stop_signal).name if self._stop_signal else "error"
        log.info("server %s stopping (%s)", self.instance, reason)
        self.publish_event("server_stopping", instance=self.instance, reason=reason)
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        self.close()
        pidfile.remove(self.pidfile)

    def _next_deadline(self):
        deadline = min(self._next.values())
        for claim_list in self.claims.values():
            deadline = min(deadline, claim_list[0].deadline, claim_list[0].recheck)
        return deadline

    def _run_timers(self, now):
        nxt = self._next
        if now >= nxt["touch"]:
            pidfile.touch(self.pidfile)
            nxt["touch"] = now + TOUCH_INTERVAL_S
        if now >= nxt["beacon"]:
            self.beacon.send()
            nxt["beacon"] = now + self.beacon_interval_s
        if now >= nxt["heartbeat"]:
            self._heartbeat(now)
            nxt["heartbeat"] = now + self.heartbeat_s
        if now >= nxt["stats"]:
            self._refresh_stats()
            nxt["stats"] = now + STATS_INTERVAL_S
        if now >= nxt["settled"]:
            nxt["settled"] = float("inf")
            self.settling = False
            self._settled()
        if self.claims:
            self._settle_claims(now)

    def _read_subscriptions(self):
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

    def _drain(self):
        recv = self.router.recv_multipart
        secure = self.gate is not None
        for _ in range(BATCH):
            try:
                frames = recv(NOBLOCK, copy=not secure)
            except zmq.Again:
                return
            if secure:  # the key a connection authenticated with rides on its frames
                self.sender_key = frames[-1].get("User-Id")
                frames = [frame.bytes for frame in frames]
            try:
                self._handle(frames)
            except Exception:  # one bad message must not stop the server
                log.exception("internal error handling a message")
                self.answer(frames[0], protocol.make_error(protocol.INTERNAL, "internal server error"))

    # --- one message -------------------------------------------------------------

    def _handle(self, frames):
        identity = frames[0]
        peer = self.by_identity.get(identity)
        if len(frames) != 2:
            self._count_in(peer, sum(len(f) for f in frames[1:]))
            self._reject(identity, protocol.BAD_FRAMES,
                         f"a message is one frame of JSON, not {len(frames) - 1} frames")
            return
        data = frames[1]
        self._count_in(peer, len(data))
        if data == PONG:
            return
        if peer is not None and not self._admit(peer):
            return
        if len(data) > self.max_bytes:
            self._reject(identity, protocol.TOO_LARGE,
                         f"message of {len(data)} bytes exceeds the limit of {self.max_bytes}",
                         protocol.find_id_in_prefix(data))
            return
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            self._reject(identity, exc.code, str(exc))
            return
        problem = protocol.check_envelope(msg)
        if problem is not None:
            self._reject(identity, *problem, protocol.request_id(msg))
            return
        to = msg.get("to")
        if to is None or to == protocol.SERVER:
            self._serve_command(identity, peer, msg)
        elif peer is None:
            self._reject(identity, protocol.NOT_REGISTERED,
                         f"send _hello before {msg['cmd']!r}: this connection is not registered",
                         msg.get("id"))
        else:
            msg["from"] = peer.name
            msg["ts"] = time.time()
            if to == protocol.BROADCAST:
                self._broadcast(peer, msg)
            else:
                self._route(peer, to, msg)

    def _admit(self, peer):
        """The flood limit: a token bucket of `client_rate` per second per client (burst as large)."""
        now = peer.last_seen_mono
        rate = self.client_rate
        tokens = rate if peer.tokens is None else min(rate, peer.tokens + (now - peer.refilled) * rate)
        peer.refilled = now
        if tokens >= 1.0:
            peer.tokens = tokens - 1.0
            return True
        peer.tokens = tokens
        peer.throttled += 1
        if now >= peer.report_at:  # told at most once a second, so the telling is no flood itself
            peer.report_at = now + 1.0
            log.warning("client %s sends more than %g messages/s: %d dropped", peer.name, rate, peer.throttled)
            self.publish_event("client_throttled", name=peer.name, pid=peer.pid, dropped=peer.throttled,
                               limit=rate)
            self.answer(peer.identity, protocol.make_error(
                protocol.THROTTLED, f"more than {rate:g} messages/s: {peer.throttled} dropped; slow down"))
            peer.throttled = 0
        return False

    def _count_in(self, peer, size):
        totals = self.totals
        totals[0] += 1
        totals[1] += size
        if peer is not None:
            peer.msgs_in += 1
            peer.bytes_in += size
            peer.last_seen_mono = time.monotonic()

    def _serve_command(self, identity, peer, msg):
        cmd = msg["cmd"]
        handler = commands.HANDLERS.get(cmd)
        msg_id = msg.get("id")
        if peer is None and cmd not in protocol.UNREGISTERED_COMMANDS:
            if handler is not None or cmd not in commands.IGNORED:
                self._reject(identity, protocol.NOT_REGISTERED,
                             f"send _hello before {cmd!r}: this connection is not registered", msg_id)
            return
        if handler is None:
            if cmd not in commands.IGNORED:
                self._reject(identity, protocol.UNKNOWN_COMMAND,
                             f"the server has no command {cmd!r}; it has {', '.join(sorted(commands.HANDLERS))}",
                             msg_id)
            return
        try:
            result = handler(self, identity, peer, msg)
        except ProtocolError as exc:
            self._reject(identity, exc.code, str(exc), msg_id)
            return
        if result is not ANSWERED and msg_id is not None:
            self.answer(identity, protocol.make_reply(msg_id, result))

    def _route(self, peer, to, msg):
        target = self.by_name.get(to)
        msg_id = msg.get("id")
        if target is None and self.settling and len(self.parked) < MAX_PARKED:
            self.parked.append((peer.name, to, msg))
            return
        if target is None:
            self._reject(peer.identity, protocol.NO_SUCH_CLIENT, f"no client named {to!r} is registered",
                         msg_id)
            return
        cmd = msg["cmd"]
        if cmd == "_reply" or cmd == "_error" or cmd == "_progress":
            if not self._owed(peer, to, msg.get("re"), final=cmd != "_progress"):
                return
        elif msg_id is not None:
            if peer.pending >= self.max_pending:
                self._reject(peer.identity, protocol.TOO_MANY_PENDING,
                             f"{peer.pending} of your requests still await answers (server.max_pending): "
                             "wait for some", msg_id)
                return
            self._await_answer(target, peer, msg_id)
        data = protocol.encode(msg)
        if self._deliver(target, data):
            if self.watching_msgs:
                self._publish_frames(target.topic, data)
            return
        if msg_id is not None and cmd not in ("_reply", "_error", "_progress"):
            self._answered(target, (peer.name, msg_id))
        if target.name in self.by_name:
            self._reject(peer.identity, protocol.QUEUE_FULL,
                         f"{to!r} is not reading its messages; this one was dropped", msg_id)
        else:
            self._reject(peer.identity, protocol.NO_SUCH_CLIENT, f"{to!r} disconnected", msg_id)

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
            requester = self.by_name.get(key[0])
            if requester is not None and requester.pending > 0:
                requester.pending -= 1

    def _owed(self, peer, to, re_id, final):
        """Whether `peer` owes `to` an answer to request `re_id`; if not, tell `peer` and drop it.

        Just after a restart the requests the previous instance routed are unknown:
        answers to them pass while the server settles.
        """
        key = (to, re_id)
        if key in peer.waiting:
            if final:
                self._answered(peer, key)
            return True
        if self.settling:
            return True
        self._reject(peer.identity, protocol.NOT_ALLOWED,
                     f"{to!r} sent {peer.name!r} no request {re_id!r} that awaits an answer: "
                     "answers go only to the requester", None)
        return False

    def _broadcast(self, peer, msg):
        msg_id = msg.pop("id", None)
        data = protocol.encode(msg)
        delivered = [p.name for p in list(self.by_name.values()) if p is not peer and self._deliver(p, data)]
        if self.watching_msgs:
            self._publish_frames(b"msg.*", data)
        if msg_id is not None:
            self.answer(peer.identity, protocol.make_reply(msg_id, {"to": delivered}))

    def _deliver(self, target, data):
        """Send to a registered client without ever blocking; False if it could not take it."""
        try:
            self.router.send(target.identity, NOBLOCK_MORE)
            self.router.send(data, NOBLOCK)
        except zmq.Again:
            target.dropped += 1
            self.dropped += 1
            now = time.monotonic()
            if now >= target.report_at:  # an event at most once a second per slow client
                target.report_at = now + 1.0
                self.publish_event("client_slow", name=target.name, pid=target.pid, dropped=target.dropped)
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.drop(target, "client_lost", "connection closed")
            return False
        target.msgs_out += 1
        target.bytes_out += len(data)
        self.totals[2] += 1
        self.totals[3] += len(data)
        return True

    def answer(self, identity, msg):
        """Send a message of the server's own; the recipient may have gone, which is fine."""
        msg["from"] = protocol.SERVER
        msg["ts"] = time.time()
        data = protocol.encode(msg)
        peer = self.by_identity.get(identity)
        if peer is not None:
            return self._deliver(peer, data)
        try:
            self.router.send(identity, NOBLOCK_MORE)
            self.router.send(data, NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def _reject(self, identity, code, text, msg_id=None):
        peer = self.by_identity.get(identity)
        log.debug("rejected from %s: %s %s", peer.name if peer else identity.hex(), code, text)
        self.answer(identity, protocol.make_error(code, text, msg_id))

    # --- registry ------------------------------------------------------------------

    def welcome(self, name):
        return protocol.make_welcome(name, self.instance, self.heartbeat_s, self.timeout_s,
                                     self.events_address)

    def hello(self, identity, peer, hello, msg_id):
        """Register `identity` as `hello.name`; returns the welcome, or ANSWERED when deferred."""
        refusal = self.gate.may_register(self.sender_key, hello.name) if self.gate is not None else None
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
            self._register(identity, hello)
            return self.welcome(hello.name)
        probe_id = f"claim-{secrets.token_hex(4)}"
        if not self._probe(holder, probe_id):
            self.drop(holder, "client_replaced", "its connection is closed", by_pid=hello.pid)
            self._register(identity, hello)
            return self.welcome(hello.name)
        now = time.monotonic()
        claim = Claim(identity, hello, msg_id, now + self.claim_grace_s, probe_id, now)
        self.claims.setdefault(hello.name, []).append(claim)
        return ANSWERED

    def _probe(self, holder, probe_id):
        """Ping the holder of a claimed name; False when its connection is already closed."""
        ping = {"cmd": "_ping", "id": probe_id, "from": protocol.SERVER, "ts": time.time()}
        try:
            self.router.send(holder.identity, NOBLOCK_MORE)
            self.router.send(protocol.encode(ping), NOBLOCK)
        except zmq.Again:
            return True  # alive or not, it is not reading: the grace decides
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False
        return True

    def _register(self, identity, hello):
        peer = Peer(identity, hello, time.time())
        self.by_identity[identity] = peer
        self.by_name[hello.name] = peer
        log.info("client %s joined (pid %s, host %s)", hello.name, hello.pid, hello.host)
        self.publish_event("client_joined", name=hello.name, pid=hello.pid, host=hello.host,
                           actions=hello.actions, meta=hello.meta)
        if self.parked:
            self._unpark(lambda to: to == hello.name)
        return peer

    def _unpark(self, matches):
        """Route the held messages whose target `matches`, in the order they came."""
        held, self.parked = self.parked, collections.deque()
        for sender, to, msg in held:
            peer = self.by_name.get(sender)
            if not matches(to):
                self.parked.append((sender, to, msg))
            elif peer is not None:
                self._route(peer, to, msg)

    def _settled(self):
        if self.parked:
            log.info("%d held message(s) for clients that did not come back", len(self.parked))
        self._unpark(lambda to: True)

    def pong(self, peer, re_id):
        """A pong answering a name-claim probe proves the holder alive: refuse the claimants."""
        if peer is None or re_id is None:
            return
        for claim in self.claims.get(peer.name, []):
            if claim.probe_id == re_id:
                self._settle(peer.name, holder_alive=True)
                return

    def _settle_claims(self, now):
        """Hand a claimed name over once its holder's connection is seen closed or the grace ends."""
        for name, claims in list(self.claims.items()):
            holder = self.by_name.get(name)
            if holder is None:
                self._settle(name, holder_alive=False, reason="it left")
            elif now >= claims[0].recheck and not self._probe(holder, claims[0].probe_id):
                self._settle(name, holder_alive=False, reason="its connection is closed")
            elif now >= claims[0].deadline:
                alive = holder.last_seen_mono >= claims[0].started
                self._settle(name, holder_alive=alive, reason="it did not answer a ping")
            else:
                claims[0].recheck = now + CLAIM_RECHECK_S

    def _settle(self, name, holder_alive, reason=""):
        claims = self.claims.pop(name)
        if not holder_alive:
            holder = self.by_name.get(name)
            winner = claims.pop(0)
            if holder is not None:
                self.drop(holder, "client_replaced", reason, by_pid=winner.hello.pid)
            self._register(winner.identity, winner.hello)
            if winner.msg_id is not None:
                self.answer(winner.identity, protocol.make_reply(winner.msg_id, self.welcome(name)))
        for claim in claims:
            self.answer(claim.identity, protocol.make_error(
                protocol.NAME_TAKEN, f"name {name!r} is held by a live client", claim.msg_id))

    def drop(self, peer, kind, reason, **info):
        """Unregister `peer` and publish `kind`; requests it still owed answers are failed."""
        if self.by_name.get(peer.name) is peer:
            del self.by_name[peer.name]
        self.by_identity.pop(peer.identity, None)
        log.info("client %s %s: %s", peer.name, kind.replace("client_", ""), reason)
        self.publish_event(kind, name=peer.name, pid=peer.pid, host=peer.host, reason=reason, **info)
        for requester, msg_id in peer.waiting:
            asker = self.by_name.get(requester)
            if asker is not None:
                asker.pending = max(0, asker.pending - 1)
                self.answer(asker.identity, protocol.make_error(
                    protocol.CLIENT_LOST, f"{peer.name!r} left before answering: {reason}", msg_id))
        peer.waiting.clear()

    def _heartbeat(self, now):
        ping = protocol.encode({"cmd": "_ping", "from": protocol.SERVER, "ts": time.time()})
        for peer in list(self.by_name.values()):
            silent_s = now - peer.last_seen_mono
            if silent_s > self.timeout_s:
                self.drop(peer, "client_lost", f"silent for {silent_s:.1f} s", silent=round(silent_s, 3))
            else:
                self._deliver(peer, ping)

    # --- events, stats, status ------------------------------------------------------

    def publish_event(self, kind, **payload):
        event = protocol.make_event(kind, time.time(), **payload)
        self.events.append(event)
        self.publish(protocol.event_topic(kind), event)
        return event

    def publish(self, topic, obj):
        self._publish_frames(topic.encode("ascii", "replace"), protocol.encode(obj))

    def _publish_frames(self, topic, data):
        try:
            self.pub.send(topic, NOBLOCK_MORE)
            self.pub.send(data, NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def _refresh_stats(self):
        interval = STATS_INTERVAL_S
        totals = tuple(self.totals)
        clients = {}
        for peer in self.by_name.values():
            now = (peer.msgs_in, peer.bytes_in, peer.msgs_out, peer.bytes_out)
            clients[peer.name] = rates(now, peer.prev, interval)
            peer.prev = now
        self.stats = {"interval": interval, "total": rates(totals, self._prev_totals, interval),
                      "clients": clients, "dropped": self.dropped, "updated": time.time()}
        self._prev_totals = totals

    def status(self):
        return {"instance": self.instance, "pid": os.getpid(), "started": self.started,
                "uptime": time.time() - self.started, "clients": len(self.by_name),
                "experiment": self.experiment.name, "router": self.router_address,
                "events": self.events_address, "beacon": list(self.beacon.target),
                "heartbeat": self.heartbeat_s, "timeout": self.timeout_s,
                "max_message_bytes": self.max_bytes, "protocol": protocol.VERSION, "settling": self.settling}


def rates(now, before, interval):
    names = ("msgs_in", "bytes_in", "msgs_out", "bytes_out")
    out = {f"{n}_per_s": (a - b) / interval for n, a, b in zip(names, now, before)}
    out.update(zip(names, now))
    return out


def zmq_address(address):
    """zmq binds an ephemeral port with `*`; accept the common `:0` too."""
    return address[:-2] + ":*" if address.endswith(":0") else address


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m runcontrol.server", description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", required=True, help="experiment name or JSON file")
    parser.add_argument("--pidfile", help="pid file (default: <paths.state>/server.pid)")
    parser.add_argument("--log-level", default="INFO", choices=logsetup.LEVELS)
    args = parser.parse_args(argv)
    logsetup.configure(args.log_level)
    try:
        Server(experiments.load(args.experiment), args.pidfile).serve()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
