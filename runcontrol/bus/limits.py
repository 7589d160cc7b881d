"""The flood limit: a token bucket of `client_rate` messages per second per client (a burst as large).

Owns the arithmetic and when to tell: a throttled client is told at most once a
second, so the telling is no flood itself. Must not send anything.
"""


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
