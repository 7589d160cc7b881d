"""What a client has to send, in two kinds: frames that go at once or not at all, and frames that wait.

Pongs, hellos and goodbyes are worth sending only now (a late one says
something false): the driver sends each at once or drops it. Everything else
waits in order for the registration: at most `size` frames, the oldest dropped
first (counted, and said when the queue is drained again). Must not send:
the client core fills it, its driver drains it.
"""

import collections
import logging

log = logging.getLogger("runcontrol.client.client")


class Outbox:
    def __init__(self, size):
        self.size = size
        self._urgent = []
        self._waiting = collections.deque()
        self.dropped = 0

    def __len__(self):
        """How many frames wait (those to go at once not counted)."""
        return len(self._waiting)

    def urgent(self, data):
        """A frame for now or never."""
        self._urgent.append(data)

    def queue(self, data):
        """A frame that waits its turn; a full queue drops its oldest."""
        if len(self._waiting) >= self.size:
            self._waiting.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("outgoing queue full (%d): dropping the oldest messages", self.size)
        self._waiting.append(data)

    def ahead(self, frames):
        """`frames` go before what waits, in their order (sent again, or not taken by the connection)."""
        self._waiting.extendleft(reversed(frames))

    def __iter__(self):
        """The waiting frames, oldest first."""
        return iter(self._waiting)

    def remove(self, data):
        """Forget `data` if it still waits."""
        for n, queued in enumerate(self._waiting):
            if queued is data:
                del self._waiting[n]
                return

    def holds_any(self):
        """Whether any frame waits, to go at once or in its turn (most frames a client takes in give it none)."""
        return bool(self._urgent or self._waiting)

    def take_urgent(self):
        if not self._urgent:
            return []
        frames, self._urgent = self._urgent, []
        return frames

    def take(self):
        """Every waiting frame, in order (a list); says how many were dropped since the last time."""
        if self.dropped:
            log.warning("dropped %d queued message(s) while the server was away (queue of %d)", self.dropped,
                        self.size)
            self.dropped = 0
        waiting = self._waiting
        if not waiting:
            return []
        if len(waiting) == 1:
            return [waiting.popleft()]
        frames = list(waiting)
        waiting.clear()
        return frames
