"""Checking a beacon before leaving a working connection: does the announced server answer, and ours not?

A beacon is an unauthenticated UDP datagram: anybody on the network can send one.
A client registered with a server that answers keeps it; it connects to the
announced address beside it (with CURVE the pinned server key must match the one
there) and pings both; it moves only when the announced server answered and its
own did not within VERIFY_S. Must not touch the client's own connection.
"""

import itertools
import logging

import zmq

from runcontrol.client.link import Link
from runcontrol import protocol
from runcontrol.errors import ProtocolError

log = logging.getLogger("runcontrol.client.client")

VERIFY_S = 1.0       # how long our own server has to answer before an answering new one wins
GIVE_UP_S = 5.0      # a probe that learned nothing by then is dropped
SAY_EVERY_S = 10.0   # beacons that led nowhere are said at most this often
_ids = itertools.count(1)


class Probe:
    def __init__(self, ctx, beacon, curve, now):
        self.beacon = beacon
        self.started = now
        self.ping_id = f"probe-{next(_ids)}"
        self.link = Link(ctx, beacon.router, curve)
        self.answered = False
        self.refused = None       # the reason the announced server is no server of ours
        self._ping()

    def _ping(self):
        self.link.send_now(protocol.encode(protocol.make_ping(self.ping_id)))

    def read(self):
        """Take in what the announced server sent and what the connection to it did."""
        for change in self.link.changes():
            if change == "connected":
                self._ping()
            elif change != "disconnected":
                self.refused = change
        for data in self.link.receive():
            try:
                msg = protocol.decode(data)
            except ProtocolError:  # whatever a stranger sends: it is no answer
                continue
            if msg.get("cmd") == "_pong" and msg.get("re") == self.ping_id:
                self.answered = True

    def verdict(self, now, ours_answered):
        """"stay" (ours answers, or the other is none of ours), "move" (it answers, ours did not), or "wait"."""
        if ours_answered or self.refused is not None or now - self.started > GIVE_UP_S:
            return "stay"
        if self.answered and now - self.started >= VERIFY_S:
            return "move"
        return "wait"

    def close(self):
        self.link.close()


class BeaconChecks:
    """The beacon a registered client is checking (one at a time), and the count of those that led nowhere.

    `ping_ours()` sends a `_ping` to the client's own server and returns its Pending; `abandon(pending)`
    forgets it. Readable sockets go in `poller`. The client judges after each `read`, when its own server
    answers, and VERIFY_S and GIVE_UP_S after a check began.
    """

    def __init__(self, ctx, curve, poller, ping_ours, abandon):
        self.ctx, self.curve, self.poller = ctx, curve, poller
        self.ping_ours, self.abandon = ping_ours, abandon
        self.probe = self.ours = None
        self.ignored, self.said_at = 0, 0.0

    def check(self, beacon, now):
        """Start checking `beacon`; False when another is being checked (this one is counted as led nowhere)."""
        if self.probe is not None:
            self._led_nowhere(beacon, "another beacon is being checked", now)
            return False
        self.probe = Probe(self.ctx, beacon, self.curve, now)
        self.poller.register(self.probe.link.sock, zmq.POLLIN)
        self.poller.register(self.probe.link.monitor, zmq.POLLIN)
        self.ours = self.ping_ours()
        return True

    def read(self, ready):
        """Take in what the probed server sent, if `ready` says it did; whether it did (judge then)."""
        if self.probe is not None and (self.probe.link.sock in ready or self.probe.link.monitor in ready):
            self.probe.read()
            return True
        return False

    def judge(self, now):
        """The beacon to move to, once it is clear; None while checking, or when it led nowhere."""
        probe = self.probe
        if probe is None:
            return None
        ours_answered = self.ours.answer is not None
        verdict = probe.verdict(now, ours_answered)
        if verdict == "wait":
            return None
        self.close()
        if verdict == "move":
            return probe.beacon
        self._led_nowhere(probe.beacon, probe.refused or ("our server answers" if ours_answered
                                                          else "no answer there"), now)
        return None

    def _led_nowhere(self, beacon, why, now):
        """Counted; said at most every SAY_EVERY_S, so a storm of forged beacons costs a line, not a flood."""
        self.ignored += 1
        if now - self.said_at >= SAY_EVERY_S:
            log.warning("ignored %d beacon(s) that led nowhere (last: server %s at %s: %s)", self.ignored,
                        beacon.instance, beacon.router, why)
            self.ignored, self.said_at = 0, now

    def close(self):
        if self.probe is not None:
            self.poller.unregister(self.probe.link.sock)
            self.poller.unregister(self.probe.link.monitor)
            self.probe.close()
            self.probe = None
        if self.ours is not None:
            self.abandon(self.ours)
            self.ours = None
