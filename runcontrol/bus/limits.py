"""The flood limits: a token bucket of `client_rate` messages per second per client (a burst as large),
and a budget of their own for connections that have not registered.

Owns the arithmetic and when to tell: a throttled client is told at most once a
second, so the telling is no flood itself. Must not send anything.
"""

import collections

ANONYMOUS_RATE = 100.0          # messages/s one unregistered connection may send (hello, ping, bye, mistakes)
ANONYMOUS_TOTAL_RATE = 1000.0   # messages/s all unregistered connections together, `_hello` aside
# After a server restart every client says `_hello` at once: hellos have a budget of their own, as large as the
# registry (server.max_clients a second, a burst as large), so a full installation is back within a second or so
# while anything else from strangers keeps the budget above.
HELLO_MIN_RATE = ANONYMOUS_TOTAL_RATE
ANONYMOUS_ERRORS = (5.0, 1.0)   # errors told to one unregistered connection: a burst of 5, then one a second
ANONYMOUS_REMEMBERED = 10000    # unregistered connections whose buckets are kept (the oldest forgotten first)


def admit(peer, rate):
    """Whether `peer`'s message (seen at `peer.last_seen_mono`) is within the rate; counts the dropped ones."""
    now = peer.last_seen_mono
    tokens = rate if peer.tokens is None else min(rate, peer.tokens + (now - peer.refilled) * rate)
    peer.refilled = now
    if tokens >= 1.0:
        peer.tokens = tokens - 1.0
        return True
    peer.tokens = tokens
    peer.throttled += 1
    return False


def due_report(peer):
    """How many messages of `peer` were dropped since it was last told, when it is time to tell it; else 0."""
    if peer.throttled == 0 or peer.last_seen_mono < peer.report_at:
        return 0
    peer.report_at = peer.last_seen_mono + 1.0
    dropped, peer.throttled = peer.throttled, 0
    return dropped


class Bucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate, burst, now):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, now):
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# The budgets a message of a connection that has not registered is charged to.
OTHER = "other"   # everything but hellos
HELLO = "hello"   # what its bytes say is a `_hello`
KNOWN = "known"   # none: the connection authenticated with a key on the server's list


class AnonymousBudget:
    """What connections that have not registered may send, each and together, and how often they are told off.

    Each connection has its own budget for all it sends; together, `_hello`s have one of `max_clients` a second
    (HELLO_MIN_RATE at least) and everything else one of ANONYMOUS_TOTAL_RATE."""

    def __init__(self, now, max_clients):
        self.total = Bucket(ANONYMOUS_TOTAL_RATE, ANONYMOUS_TOTAL_RATE, now)
        hello_rate = max(HELLO_MIN_RATE, float(max_clients))
        self.hellos = Bucket(hello_rate, hello_rate, now)
        self._each = collections.OrderedDict()   # identity -> (messages bucket, errors bucket)
        self.dropped = 0           # since the last report
        self.dropped_total = 0
        self.report_at = 0.0

    def _buckets(self, identity, now):
        buckets = self._each.get(identity)
        if buckets is None:
            buckets = (Bucket(ANONYMOUS_RATE, ANONYMOUS_RATE, now), Bucket(ANONYMOUS_ERRORS[1], ANONYMOUS_ERRORS[0], now))
            self._each[identity] = buckets
            if len(self._each) > ANONYMOUS_REMEMBERED:
                self._each.popitem(last=False)
        return buckets

    def admit(self, identity, now, budget=OTHER):
        """Whether an unregistered connection's message may be looked at, charged to `budget` (HELLO or OTHER);
        counts the ones dropped."""
        if self._buckets(identity, now)[0].take(now) and (self.hellos if budget is HELLO else self.total).take(now):
            return True
        self._dropped()
        return False

    def admit_late(self, now):
        """Whether a message let in as a hello that was none, once read, may be taken after all: charged to the
        budget of everything else; counted when dropped."""
        if self.total.take(now):
            return True
        self._dropped()
        return False

    def _dropped(self):
        self.dropped += 1
        self.dropped_total += 1

    def may_tell(self, identity, now):
        """Whether an error may be sent to this unregistered connection now."""
        return self._buckets(identity, now)[1].take(now)

    def forget(self, identity):
        """It registered: its own limit applies from now on."""
        self._each.pop(identity, None)

    def due_report(self, now):
        """Messages dropped since the last report, once a second at most; else 0."""
        if not self.dropped or now < self.report_at:
            return 0
        self.report_at = now + 1.0
        dropped, self.dropped = self.dropped, 0
        return dropped
