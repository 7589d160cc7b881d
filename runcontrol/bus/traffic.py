"""What the server counts of its traffic, and the figures `_stats` answers with.

Owns the counters of messages and bytes in and out (in all, and on each
client's record), and turning them every `INTERVAL_S` into rates per second
beside what was dropped. Must not send anything.
"""

import time

INTERVAL_S = 1.0
COUNTERS = ("msgs_in", "bytes_in", "msgs_out", "bytes_out")


class Traffic:
    """`peers` maps names to the registered clients; `dropped()` and `anonymous_dropped()` are counted elsewhere."""

    def __init__(self, peers, dropped, anonymous_dropped):
        self.peers = peers
        self.dropped = dropped
        self.anonymous_dropped = anonymous_dropped
        self.totals = [0, 0, 0, 0]     # as COUNTERS
        self._before = (0, 0, 0, 0)
        self.figures = {}

    def count_in(self, peer, size):
        """A message of `size` bytes came from `peer` (None: a connection that has not registered)."""
        totals = self.totals
        totals[0] += 1
        totals[1] += size
        if peer is not None:
            peer.msgs_in += 1
            peer.bytes_in += size

    def count_out(self, peer, size):
        """A message of `size` bytes was handed to `peer`'s connection."""
        peer.msgs_out += 1
        peer.bytes_out += size
        totals = self.totals
        totals[2] += 1
        totals[3] += size

    def refresh(self):
        """The figures since the last refresh (which is `INTERVAL_S` ago, as the server's timer runs it)."""
        totals = tuple(self.totals)
        clients = {}
        for peer in self.peers.values():
            now = (peer.msgs_in, peer.bytes_in, peer.msgs_out, peer.bytes_out)
            clients[peer.name] = rates(now, peer.prev, INTERVAL_S)
            peer.prev = now
        self.figures = {"interval": INTERVAL_S, "total": rates(totals, self._before, INTERVAL_S),
                        "clients": clients, "dropped": self.dropped(), "anonymous_dropped": self.anonymous_dropped(),
                        "updated": time.time()}
        self._before = totals


def rates(now, before, interval):
    out = {f"{n}_per_s": (a - b) / interval for n, a, b in zip(COUNTERS, now, before)}
    out.update(zip(COUNTERS, now))
    return out
