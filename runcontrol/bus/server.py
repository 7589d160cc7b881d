"""The central server: the bus's parts joined into one process, and what its commands use.

Owns putting the parts together and what they share: the server's identity (its
instance, its addresses, its settings), the event history, retained values, the
replay of recent publications and their numbering, publishing on the event
stream, and its status; it hands each server command (one module each in
`runcontrol/bus/commands/`) the server. The loop and the timers live in `loop`,
the sockets in `sockets`, the checks every message passes in `intake`, the names
in `registry`, the ledger in `routing`, the figures in `traffic`, the pid file
and the beacon in `presence`, libABCD's clients in `legacy`. Must not start or
kill processes.

Run: python -m runcontrol.bus.server --experiment FILE [--pidfile PATH]. Started by a watchdog
as its standby (runcontrol.standby), it loads the experiment, then waits for its turn before it
binds anything; at its turn it reads the experiment file again if it changed.
"""

import collections
import itertools
import logging
import os
import secrets
import sys
import time

import experiments
from runcontrol import logsetup, protocol
from runcontrol.bus import commands, limits, traffic
from runcontrol.bus.commands.base import ANSWERED
from runcontrol.bus.intake import Intake
from runcontrol.bus.legacy import LegacyGateway
from runcontrol.bus.loop import Loop
from runcontrol.bus.presence import Presence
from runcontrol.bus.registry import Registry
from runcontrol.bus.replay import Replay
from runcontrol.bus.routing import Routing
from runcontrol.bus.sockets import BusSockets
from runcontrol.bus.traffic import Traffic
from runcontrol.errors import ConfigError, ProtocolError
from runcontrol.signals import SignalWakeup
from runcontrol.standby import Standby

log = logging.getLogger("runcontrol.server")

EVENT_HISTORY = 1000
LEGACY_RECONNECT_S = 5.0     # a libABCD client back: up to 3 s of waiting, then its once-a-second reads


class Server:
    def __init__(self, experiment, pidfile_path=None):
        self.experiment = experiment
        spec = experiment.server
        self.heartbeat_s = spec.heartbeat_s
        self.timeout_s = spec.timeout_s
        self.max_bytes = spec.max_message_bytes
        # Just after a (re)start the clients are registering again: a message for a name
        # not yet back is held for them this long instead of refused.
        self.settle_s = 2 * spec.beacon.interval_s + 1.0
        if spec.legacy is not None:  # a libABCD client waits 0 to 3 s after hearing IamABCD, and reads once a second
            self.settle_s = max(self.settle_s, spec.beacon.interval_s + LEGACY_RECONNECT_S)
        self.instance = secrets.token_hex(6)
        self.started = time.time()
        self.events = collections.deque(maxlen=EVENT_HISTORY)
        self.retained = {}
        self.replay = Replay(spec.replay, spec.max_message_bytes, self.started)
        self.publications = itertools.count(1)   # numbers what `_publish` publishes
        self.loop = Loop()
        self.sockets = BusSockets(spec)
        self.router_address = self.sockets.router_address
        self.events_address = self.sockets.events_address
        self._join_parts(spec)
        self.legacy = self._open_legacy(spec)
        self.presence = Presence(experiment, self.instance, self.started, (self.router_address, self.events_address),
                                 pidfile_path or experiment.paths.state / "server.pid", self.legacy,
                                 self.publish_event)

    def _join_parts(self, spec):
        """The registry, routing, traffic and intake, each given what it uses of the others."""
        self.anonymous = limits.AnonymousBudget(time.monotonic(), spec.max_clients)
        self.registry = Registry(spec, self.loop.timers, welcome=self.welcome, answer=self.answer,
                                 send=lambda peer, data: self.routing.deliver(peer, data),
                                 publish_event=self.publish_event, joined=self._joined,
                                 dropped=lambda peer, reason: self.routing.fail_waiting(peer, reason))
        self.traffic = Traffic(self.registry.by_name, dropped=lambda: self.routing.dropped + self.sockets.dropped,
                               anonymous_dropped=lambda: self.anonymous.dropped_total)
        self.routing = Routing(spec, self.registry.by_name, self.registry.peer_of, drop=self.registry.drop,
                               publish_event=self.publish_event, mirror=self._mirror,
                               may_tell=self.anonymous.may_tell, count_out=self.traffic.count_out)
        self.intake = Intake(spec, self.registry.peer_of, self.routing, self.traffic, self.anonymous,
                             serve=self._serve_command, publish_event=self.publish_event)

    def _open_legacy(self, spec):
        if spec.legacy is None:
            return None
        try:
            return LegacyGateway(self, spec.legacy, spec.beacon.address, self.loop.watch, self.loop.unwatch)
        except OSError as exc:
            self.sockets.close()
            raise ConfigError(str(exc.strerror or exc)) from None

    def _joined(self, peer):
        """A client registered: no longer held to the budget of the unregistered; what waited for it goes on."""
        self.anonymous.forget(peer.conn.identity)
        self.routing.unpark(lambda to: to == peer.name)

    def _mirror(self, topic, data):
        """A routed message on the event stream too, while somebody watches `msg.*`."""
        if self.sockets.watching_msgs:
            self.sockets.publish(topic, data)

    # --- what commands and transports use ------------------------------------------------------

    @property
    def by_name(self):
        return self.registry.by_name

    @property
    def settling(self):
        return self.routing.settling

    @property
    def stats(self):
        return self.traffic.figures

    def welcome(self, name):
        return protocol.make_welcome(name, self.instance, self.heartbeat_s, self.timeout_s, self.events_address)

    def hello(self, conn, peer, hello, msg_id):
        return self.registry.hello(conn, peer, hello, msg_id, self.sockets.gate)

    def peer_of(self, conn):
        return self.registry.peer_of(conn)

    def pong(self, peer, re_id):
        self.registry.pong(peer, re_id)

    def drop(self, peer, kind, reason, **info):
        self.registry.drop(peer, kind, reason, **info)

    def answer(self, conn, msg):
        return self.routing.answer(conn, msg)

    def reject(self, conn, code, text, msg_id=None):
        self.routing.reject(conn, code, text, msg_id)

    def take(self, conn, frames):
        """Take in one message (its frames) from `conn`: check it, then route it or serve it."""
        self.intake.take(conn, frames)

    def admit(self, conn, peer, size):
        return self.intake.admit(conn, peer, size)

    def take_message(self, conn, peer, msg, oneway=False):
        self.intake.take_message(conn, peer, msg, oneway)

    def close(self):
        self.sockets.close()
        if self.legacy is not None:
            self.legacy.close()
        self.presence.close()

    # --- serving ---------------------------------------------------------------------------------

    def serve(self):
        """Run until SIGTERM or SIGINT; then announce, close and return."""
        loop = self.loop
        try:
            self.presence.arrive(loop.timers)
        except ConfigError:
            self.close()
            raise
        wakeup = SignalWakeup()
        try:
            loop.timers.every(self.heartbeat_s, self.registry.heartbeat)
            loop.timers.every(traffic.INTERVAL_S, self.traffic.refresh)
            loop.timers.after(self.settle_s, self.routing.settled)
            sockets = self.sockets
            loop.watch(sockets.router, lambda: self.intake.drain(sockets.receive))
            loop.watch(sockets.pub, sockets.read_subscriptions)
            if sockets.zap is not None:
                loop.watch(sockets.zap, sockets.answer_zap)
            loop.watch(wakeup, wakeup.drain)
            legacy = self.legacy
            if legacy is None:
                loop.serve(lambda: wakeup.stop_signal is not None)
            else:
                loop.watch(legacy.listener, legacy.accept)
                loop.serve(lambda: wakeup.stop_signal is not None, after_turn=legacy.tick, revisit_s=legacy.revisit_s)
        finally:
            self.presence.leave(wakeup.stop_signal)
            wakeup.close()
            self.close()

    def _serve_command(self, conn, peer, msg):
        cmd = msg["cmd"]
        handler = commands.HANDLERS.get(cmd)
        msg_id = msg.get("id")
        if peer is None and cmd not in protocol.UNREGISTERED_COMMANDS:
            if handler is not None or cmd not in commands.IGNORED:
                self.reject(conn, protocol.NOT_REGISTERED,
                            f"send _hello before {cmd!r}: this connection is not registered", msg_id)
            return
        if handler is None:
            if cmd not in commands.IGNORED:
                self.reject(conn, protocol.UNKNOWN_COMMAND, f"the server has no command {cmd!r}; "
                            f"it has {', '.join(sorted(commands.HANDLERS))}", msg_id)
            return
        try:
            result = handler(self, conn, peer, msg)
        except ProtocolError as exc:
            self.reject(conn, exc.code, str(exc), msg_id)
            return
        if result is not ANSWERED and msg_id is not None:
            self.answer(conn, protocol.make_reply(msg_id, result))

    # --- events and status -------------------------------------------------------------------------

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

    def status(self):
        legacy = self.legacy
        return {"instance": self.instance, "pid": os.getpid(), "started": self.started,
                "uptime": time.time() - self.started, "clients": len(self.registry.by_name),
                "experiment": self.experiment.name, "router": self.router_address,
                "events": self.events_address, "beacon": list(self.presence.beacon.target),
                "heartbeat": self.heartbeat_s, "timeout": self.timeout_s,
                "max_message_bytes": self.max_bytes, "protocol": protocol.VERSION, "settling": self.settling,
                "legacy": legacy.address if legacy is not None else None,
                "replay": self.replay.describe(time.time())}


class PreparedExperiment:
    """An experiment loaded ahead by a standby; `current()` is the experiment as its file is at the takeover."""

    def __init__(self, name):
        self.name = name
        self.experiment = self.text = None
        try:
            path = experiments.find(str(name))
            text = path.read_bytes()   # before loading: a change made meanwhile shows at the takeover
            self.experiment, self.text = experiments.load(path), text
        except (ConfigError, OSError):
            pass   # said at the takeover, when loading it again fails the same way (or the file was mended)

    def current(self):
        if self.experiment is not None:
            try:
                if self.experiment.path.read_bytes() == self.text:
                    return self.experiment
            except OSError:
                pass
            log.info("experiment file %s changed since the standby loaded it: loading it again", self.experiment.path)
        return experiments.load(self.name)


def wait_for_turn(standby, name):
    """As a standby: the experiment loaded ahead, then wait for the watchdog's word; the experiment as it is then,
    or None when the watchdog went away first."""
    prepared = PreparedExperiment(name)
    try:
        told = standby.ready() and standby.wait()
    finally:
        standby.close()
    if not told:
        log.info("standby pid %d: the watchdog is gone; not serving", os.getpid())
        return None
    return prepared.current()


def main(argv=None):
    args = logsetup.service_arguments("python -m runcontrol.bus.server", __doc__.split("\n")[0],
                                      "pid file (default: <paths.state>/server.pid)", argv)
    try:
        standby = Standby.from_environment()
        experiment = experiments.load(args.experiment) if standby is None else wait_for_turn(standby, args.experiment)
        if experiment is not None:
            Server(experiment, args.pidfile).serve()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
