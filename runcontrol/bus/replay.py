"""The server's replay: the recent publications of each topic, kept to answer `_replay`.

Owns keeping the publications of each `<from>.<topic>` (each as the event stream
carried it, encoded) for a time window, within a byte budget per topic and one
over all topics, trimmed as they are added; and reading back, oldest first, a
page of those published after a time. In memory only: a restarted server starts
empty. Must not touch sockets, nor look inside what was published.
"""

import bisect
import collections
import heapq
import itertools

from runcontrol import protocol

ENTRY_OVERHEAD = 128    # bytes a kept publication costs beyond its JSON: its tuple, float, bytes header, slot
TOPIC_OVERHEAD = 1024   # bytes a topic costs beyond its publications: its deque, key and dict slot
SHRINK_TO = 0.9         # over the total budget the oldest go until this share of it is left: a sweep of all
                        # topics then runs once per tenth of the budget added, not at every publication
PAGE_RESERVE = 512      # bytes of an answer beyond its publications (the envelope, more, next, kept_from)


def _ts(entry):
    return entry[0]


class Topic:
    """One `<from>.<topic>`: its kept publications (ts, encoded event), oldest first, and their bytes."""
    __slots__ = ("entries", "bytes")

    def __init__(self):
        self.entries = collections.deque()
        self.bytes = 0


class Replay:
    """`spec` is the experiment's ReplaySpec; a page holds at most `max_message_bytes` with its envelope."""

    def __init__(self, spec, max_message_bytes, started):
        self.window_s = spec.window_s
        self.topic_bytes = spec.topic_bytes
        self.max_bytes = spec.max_bytes
        self.page_bytes = max_message_bytes - PAGE_RESERVE
        self.topics = {}
        self.bytes = 0
        self.dropped_until = started   # publications up to this time may have been dropped (or never seen)

    def add(self, key, ts, encoded):
        """Keep a publication of `key` made at `ts` (the server's clock, never going back), `encoded` as the stream
        carried it; drop what falls out of the window or the budgets."""
        size = len(encoded) + ENTRY_OVERHEAD
        if size > self.topic_bytes or len(encoded) > self.page_bytes:
            self.dropped_until = ts   # too big to keep, or to send in a page
            return
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic()
            self.bytes += TOPIC_OVERHEAD
        entries = topic.entries
        entries.append((ts, encoded))
        topic.bytes += size
        self.bytes += size
        horizon = ts - self.window_s
        while topic.bytes > self.topic_bytes or entries[0][0] < horizon:
            self._drop_oldest(topic)
        if self.bytes > self.max_bytes:
            self._shrink()

    def _drop_oldest(self, topic):
        ts, encoded = topic.entries.popleft()
        size = len(encoded) + ENTRY_OVERHEAD
        topic.bytes -= size
        self.bytes -= size
        if ts > self.dropped_until:
            self.dropped_until = ts

    def _shrink(self):
        """Drop the oldest publications of all topics together until SHRINK_TO of the total budget is left."""
        heads = [(topic.entries[0][0], key) for key, topic in self.topics.items()]
        heapq.heapify(heads)
        goal = self.max_bytes * SHRINK_TO
        while self.bytes > goal and heads:
            _, key = heapq.heappop(heads)
            topic = self.topics[key]
            self._drop_oldest(topic)
            if topic.entries:
                heapq.heappush(heads, (topic.entries[0][0], key))
            else:
                del self.topics[key]
                self.bytes -= TOPIC_OVERHEAD

    def kept_from(self, now):
        """Since when every publication is held (older ones fell out of the window or a budget, or came before
        this server started)."""
        return max(self.dropped_until, now - self.window_s)

    def page(self, since, prefix, limit, now):
        """The publications after `since` whose `<from>.<topic>` starts with `prefix`, oldest first: at most
        `limit`, and at most the page's bytes (a page never splits publications made at the same time)."""
        start = max(since, now - self.window_s)
        streams = [itertools.islice(topic.entries, bisect.bisect_right(topic.entries, start, key=_ts), None)
                   for key, topic in self.topics.items() if key.startswith(prefix)]
        items, size, last, more = [], 0, None, False
        for ts, encoded in heapq.merge(*streams, key=_ts):
            if ts != last and (len(items) >= limit or size + len(encoded) > self.page_bytes):
                more = True
                break
            items.append(encoded)
            size += len(encoded) + 1
            last = ts
        return protocol.make_replay_page([protocol.decode(item) for item in items], more,
                                         last if more else now, self.kept_from(now))

    def describe(self, now):
        return {"seconds": self.window_s, "topics": len(self.topics), "bytes": self.bytes,
                "kept_from": self.kept_from(now)}
