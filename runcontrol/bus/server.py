"""The central server: the loop that joins the bus's sockets, registry and routing, and its timers.

Owns taking each message in (size, JSON, envelope, the flood limit,
registration) and handing it to routing or to a server command (one module each
in `runcontrol/bus/commands/`), the beacon, heartbeats, statistics, the event
history, retained values and the replay of recent publications, its pid file
and its orderly stop. The sockets live in `sockets`, the names in `registry`,
the ledger in `routing`, the kept publications in `replay`. Must not start or
kill processes.

Run: python -m runcontrol.bus.server --experiment FILE [--pidfile PATH]
"""

import collections
import itertools
import logging
import os
import secrets
import signal
import sys
import time

import zmq

import experiments
from runcontrol import discovery, logsetup, pidfile, protocol
from runcontrol.bus import commands, limits
from runcontrol.bus.commands.base import ANSWERED
from runcontrol.bus.legacy import LegacyGateway
from runcontrol.bus.registry import Registry
from runcontrol.bus.replay import Replay
from runcontrol.bus.routing import Routing
from runcontrol.bus.sockets import BusSockets
from runcontrol.errors import ConfigError, ProtocolError
from runcontrol.signals import SignalWakeup

log = logging.getLogger("runcontrol.server")

BATCH = 1000                 # messages handled before timers get a turn
STATS_INTERVAL_S = 1.0
TOUCH_INTERVAL_S = 0.5
EVENT_HISTORY = 1000
LEGACY_RECONNECT_S = 5.0     # a libABCD client back: up to 3 s of waiting, then its once-a-second reads
LEGACY_TICK_MS = 5           # while frames wait to be written to a libABCD client


class Server:
    def __init__(self, experiment, pidfile_path=None):
        self.experiment = experiment
        spec = experiment.server
        self.heartbeat_s = spec.heartbeat_s
        self.timeout_s = spec.timeout_s
        self.max_bytes = spec.max_message_bytes
        self.client_rate = spec.client_rate
        # Just after a (re)start the clients are registering again: a message for a name
        # not yet back is held for them this long instead of refused.
        self.settle_s = 2 * spec.beacon.interval_s + 1.0
        if spec.legacy is not None:  # a libABCD client waits 0 to 3 s after hearing IamABCD, and reads once a second
            self.settle_s = max(self.settle_s, spec.beacon.interval_s + LEGACY_RECONNECT_S)
        self.instance = secrets.token_hex(6)
        self.started = time.time()
        self.pidfile = pidfile_path or experiment.paths.state / "server.pid"
        self.events = collections.deque(maxlen=EVENT_HISTORY)
        self.retained = {}
        self.replay = Replay(spec.replay, spec.max_message_bytes, self.started)
        self.publications = itertools.count(1)   # numbers what `_publish` publishes
        self.stats = {}
        self._prev_totals = (0, 0, 0, 0)
        self.sockets = BusSockets(spec)
        self.registry = Registry(self, spec)
        self.routing = Routing(self, spec)
        self.router_address = self.sockets.router_address
        self.events_address = self.sockets.events_address
        payload = protocol.make_beacon(experiment.name, self.instance, self.router_address,
                                       self.events_address, os.getpid(), self.started)
        self.beacon = discovery.BeaconSender(spec.beacon.address, spec.beacon.port, payload)
        self.beacon_interval_s = spec.beacon.interval_s
        self.anonymous = limits.AnonymousBudget(time.monotonic())
        self.legacy = self._open_legacy(spec)
        self._wakeup = None
        self._poller = zmq.Poller()

    # --- what commands and the parts use -------------------------------------------------------

    @property
    def by_name(self):
        return self.registry.by_name

    @property
    def settling(self):
        return self.routing.settling

    def welcome(self, name):
        return protocol.make_welcome(name, self.instance, self.heartbeat_s, self.timeout_s, self.events_address)

    def hello(self, conn, peer, hello, msg_id):
        return self.registry.hello(conn, peer, hello, msg_id, self.sockets.gate)

    def pong(self, peer, re_id):
        self.registry.pong(peer, re_id)

    def drop(self, peer, kind, reason, **info):
        self.registry.drop(peer, kind, reason, **info)

    def answer(self, conn, msg):
        return self.routing.answer(conn, msg)

    def close(self):
        self.sockets.close()
        self.beacon.close()
        if self.legacy is not None:
            self.legacy.close()

    def _open_legacy(self, spec):
        if spec.legacy is None:
            return None
        try:
            return LegacyGateway(self, spec.legacy, spec.beacon.address)
        except OSError as exc:
            self.sockets.close()
            self.beacon.close()
            raise ConfigError(str(exc.strerror or exc)) from None

    def watch_fd(self, fd):
        self._poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd):
        self._poller.unregister(fd)

    # --- main loop -------------------------------------------------------------

    def serve(self):
        """Run until SIGTERM or SIGINT; then announce, close and return."""
        try:
            pidfile.write(self.pidfile)
        except OSError as exc:
            self.close()
            raise ConfigError(f"cannot write the pid file {self.pidfile}: {exc.strerror}") from None
        self._wakeup = SignalWakeup()
        self._announce()
        poller = self._poller
        for sock in self.sockets.readable():
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        legacy = self.legacy
        if legacy is not None:
            self.watch_fd(legacy.listener.fileno())
        now = time.monotonic()
        self._next = {"beacon": now, "heartbeat": now + self.heartbeat_s, "stats": now + STATS_INTERVAL_S,
                      "touch": now + TOUCH_INTERVAL_S, "settled": now + self.settle_s}
        sockets = self.sockets
        try:
            while self._wakeup.stop_signal is None:
                self._run_timers(time.monotonic())
                wait_ms = max(0, (self.registry.next_deadline(min(self._next.values())) - time.monotonic()) * 1000)
                if legacy is not None and legacy.busy():
                    wait_ms = min(wait_ms, LEGACY_TICK_MS)
                ready = dict(poller.poll(wait_ms))
                if sockets.router in ready:
                    self._drain()
                if sockets.pub in ready:
                    sockets.read_subscriptions()
                if self._wakeup.fileno() in ready:
                    self._wakeup.drain()
                if sockets.zap is not None and sockets.zap in ready:
                    sockets.answer_zap()
                if legacy is not None:
                    for fd in ready:
                        if isinstance(fd, int):
                            legacy.ready(fd)
                    legacy.tick(time.monotonic())
        finally:
            self._shutdown()

    def _announce(self):
        log.info("server %s of %s: router %s, events %s, beacon %s:%s every %.1f s, pid file %s",
                 self.instance, self.experiment.name, self.router_address, self.events_address,
                 *self.beacon.target, self.beacon_interval_s, self.pidfile)
        spec = self.experiment.server
        # Said whenever the flag is set, on loopback too: it is what lets the address go off loopback unchecked.
        if self.legacy is not None:
            log.info("libABCD gateway on %s, IamABCD to %s:%d", self.legacy.address, *self.legacy.beacon_target)
            if spec.legacy.insecure:
                log.warning("INSECURE: the libABCD gateway on %s has no encryption and no keys (server.legacy.insecure "
                            "is set): anybody who reaches it can register under any name", self.legacy.address)
        if spec.insecure and spec.curve is None:
            log.warning("INSECURE: the bus has no keys (server.insecure is set): anybody who reaches %s or %s can "
                        "register under any name and command any program", self.router_address, self.events_address)
        self.publish_event("server_started", instance=self.instance, pid=os.getpid(),
                           router=self.router_address, events=self.events_address)

    def _shutdown(self):
        signum = self._wakeup.stop_signal
        reason = signal.Signals(signum).name if signum else "error"
        log.info("server %s stopping (%s)", self.instance, reason)
        self.publish_event("server_stopping", instance=self.instance, reason=reason)
        self._wakeup.close()
        self.close()
        pidfile.remove(self.pidfile)

    def _run_timers(self, now):
        nxt = self._next
        if now >= nxt["touch"]:
            pidfile.touch(self.pidfile)
            nxt["touch"] = now + TOUCH_INTERVAL_S
        if now >= nxt["beacon"]:
            self.beacon.send()
            if self.legacy is not None:
                self.legacy.send_beacon()
            nxt["beacon"] = now + self.beacon_interval_s
        if now >= nxt["heartbeat"]:
            self.registry.heartbeat(now)
            nxt["heartbeat"] = now + self.heartbeat_s
        if now >= nxt["stats"]:
            self._refresh_stats()
            nxt["stats"] = now + STATS_INTERVAL_S
        if now >= nxt["settled"]:
            nxt["settled"] = float("inf")
            self.routing.settled()
        if self.registry.claims:
            self.registry.settle_claims(now)

    def _drain(self):
        for _ in range(BATCH):
            received = self.sockets.receive()
            if received is None:
                return
            conn, frames = received
            try:
                self.take(conn, frames)
            except Exception:  # one bad message must not stop the server
                log.exception("internal error handling a message")
                self.answer(conn, protocol.make_error(protocol.INTERNAL, "internal server error"))

    # --- one message -------------------------------------------------------------

    def take(self, conn, frames):
        """Take in one message (its frames) from `conn`: check it, then route it or serve it."""
        peer = self.registry.peer_of(conn)
        self._count_in(peer, sum(len(f) for f in frames))
        if peer is None and not self._admit_anonymous(conn):
            return
        if len(frames) != 1:
            self.routing.reject(conn, protocol.BAD_FRAMES, f"a message is one frame of JSON, not {len(frames)} frames")
            return
        data = frames[0]
        if data == protocol.PONG:
            return
        if peer is not None and not self._admit(peer):
            return
        if len(data) > self.max_bytes:
            self.routing.reject(conn, protocol.TOO_LARGE,
                                f"message of {len(data)} bytes exceeds the limit of {self.max_bytes}",
                                protocol.find_id_in_prefix(data))
            return
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            self.routing.reject(conn, exc.code, str(exc))
            return
        self.take_message(conn, peer, msg)

    def admit(self, conn, peer, size):
        """Count what came in; whether it is within the flood limits (of its client, or of the unregistered)."""
        self._count_in(peer, size)
        if peer is None:
            return self._admit_anonymous(conn)
        return self._admit(peer)

    def take_message(self, conn, peer, msg, oneway=False):
        """A decoded message of `conn`: check its envelope, then route it or serve it. `oneway`: its `id` is
        its own payload, not a request awaiting an answer (libABCD's clients)."""
        problem = protocol.check_envelope(msg)
        if problem is not None:
            self.routing.reject(conn, *problem, protocol.request_id(msg))
            return
        to = msg.get("to")
        if to is None or to == protocol.SERVER:
            self._serve_command(conn, peer, msg)
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

    def _admit(self, peer):
        if limits.admit(peer, self.client_rate):
            return True
        dropped = limits.due_report(peer)
        if dropped:
            rate = self.client_rate
            log.warning("client %s sends more than %g messages/s: %d dropped", peer.name, rate, dropped)
            self.publish_event("client_throttled", name=peer.name, pid=peer.pid, dropped=dropped, limit=rate)
            self.answer(peer.conn, protocol.make_error(
                protocol.THROTTLED, f"more than {rate:g} messages/s: {dropped} dropped; slow down"))
        return False

    def _admit_anonymous(self, conn):
        """The budget of connections that have not registered; a flood of them is dropped unread."""
        now = time.monotonic()
        if self.anonymous.admit(conn.identity, now):
            return True
        dropped = self.anonymous.due_report(now)
        if dropped:
            log.warning("unregistered connections send more than allowed: %d message(s) dropped", dropped)
            self.publish_event("anonymous_throttled", dropped=dropped, total=self.anonymous.dropped_total)
        return False

    def _count_in(self, peer, size):
        totals = self.routing.totals
        totals[0] += 1
        totals[1] += size
        if peer is not None:
            peer.msgs_in += 1
            peer.bytes_in += size
            peer.last_seen_mono = time.monotonic()

    def _serve_command(self, conn, peer, msg):
        cmd = msg["cmd"]
        handler = commands.HANDLERS.get(cmd)
        msg_id = msg.get("id")
        if peer is None and cmd not in protocol.UNREGISTERED_COMMANDS:
            if handler is not None or cmd not in commands.IGNORED:
                self.routing.reject(conn, protocol.NOT_REGISTERED,
                                    f"send _hello before {cmd!r}: this connection is not registered", msg_id)
            return
        if handler is None:
            if cmd not in commands.IGNORED:
                self.routing.reject(conn, protocol.UNKNOWN_COMMAND, f"the server has no command {cmd!r}; "
                                    f"it has {', '.join(sorted(commands.HANDLERS))}", msg_id)
            return
        try:
            result = handler(self, conn, peer, msg)
        except ProtocolError as exc:
            self.routing.reject(conn, exc.code, str(exc), msg_id)
            return
        if result is not ANSWERED and msg_id is not None:
            self.answer(conn, protocol.make_reply(msg_id, result))

    # --- events, stats, status ------------------------------------------------------

    def publish_event(self, kind, **payload):
        event = protocol.make_event(kind, time.time(), **payload)
        self.events.append(event)
        self.publish(protocol.event_topic(kind), event)
        return event

    def publish(self, topic, obj):
        """Put `obj` on the event stream under `topic`; its encoded bytes."""
        data = protocol.encode(obj)
        self.sockets.publish(topic.encode("ascii", "replace"), data)
        return data

    def _refresh_stats(self):
        interval = STATS_INTERVAL_S
        totals = tuple(self.routing.totals)
        clients = {}
        for peer in self.registry.by_name.values():
            now = (peer.msgs_in, peer.bytes_in, peer.msgs_out, peer.bytes_out)
            clients[peer.name] = rates(now, peer.prev, interval)
            peer.prev = now
        self.stats = {"interval": interval, "total": rates(totals, self._prev_totals, interval),
                      "clients": clients, "dropped": self.routing.dropped + self.sockets.dropped,
                      "anonymous_dropped": self.anonymous.dropped_total,
                      "updated": time.time()}
        self._prev_totals = totals

    def status(self):
        return {"instance": self.instance, "pid": os.getpid(), "started": self.started,
                "uptime": time.time() - self.started, "clients": len(self.registry.by_name),
                "experiment": self.experiment.name, "router": self.router_address,
                "events": self.events_address, "beacon": list(self.beacon.target),
                "heartbeat": self.heartbeat_s, "timeout": self.timeout_s,
                "max_message_bytes": self.max_bytes, "protocol": protocol.VERSION, "settling": self.settling,
                "legacy": self.legacy.address if self.legacy is not None else None,
                "replay": self.replay.describe(time.time())}


def rates(now, before, interval):
    names = ("msgs_in", "bytes_in", "msgs_out", "bytes_out")
    out = {f"{n}_per_s": (a - b) / interval for n, a, b in zip(names, now, before)}
    out.update(zip(names, now))
    return out


def main(argv=None):
    args = logsetup.service_arguments("python -m runcontrol.bus.server", __doc__.split("\n")[0],
                                      "pid file (default: <paths.state>/server.pid)", argv)
    try:
        Server(experiments.load(args.experiment), args.pidfile).serve()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
