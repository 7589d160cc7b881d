"""Checking a beacon before leaving a working connection: does the announced server answer, and ours not?

A beacon is an unauthenticated UDP datagram: anybody on the network can send one.
A client registered with a server that answers keeps it; it connects to the
announced address beside it (with CURVE the pinned server key must match the one
there) and pings both; it moves only when the announced server answered and its
own did not within VERIFY_S. Must not touch the client's own connection.
"""

import itertools

from clients.link import Link
from runcontrol import protocol

VERIFY_S = 1.0       # how long our own server has to answer before an answering new one wins
GIVE_UP_S = 5.0      # a probe that learned nothing by then is dropped
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
            except Exception:  # whatever a stranger sends: it is no answer
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
