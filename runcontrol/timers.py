"""One timer heap: what is due when, for a loop that waits on sockets until the next deadline.

The server, the run controller, the supervisor and the client each run one loop; each keeps its
deadlines here instead of polling on a tick. `at(when, action)` and `after(seconds, action)` give a
handle to `cancel`; `next_due()` is how long the loop may wait; `run_due(now)` runs, in order, every
action due by `now` (an action may set new timers). Times come from the caller's clock. Must not
read a clock or sleep itself.
"""

import heapq
import itertools


class Timer:
    """A handle: `cancel()` it, or read `when`."""

    __slots__ = ("when", "action", "cancelled")

    def __init__(self, when, action):
        self.when, self.action, self.cancelled = when, action, False

    def cancel(self):
        self.cancelled = True


class Timers:
    def __init__(self, clock):
        self.clock = clock
        self._heap = []
        self._order = itertools.count()   # equal times run in the order they were set

    def at(self, when, action):
        timer = Timer(when, action)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def after(self, seconds, action):
        return self.at(self.clock() + seconds, action)

    def every(self, seconds, action, first=None):
        """`action()` every `seconds` (first at `first`, default one period from now), until its handle is
        cancelled; a late turn does not make the next ones bunch up."""
        handle = Timer(None, action)

        def turn():
            if handle.cancelled:
                return
            action()
            now = self.clock()
            handle.when = handle.when + seconds if handle.when + seconds > now else now + seconds
            self.at(handle.when, turn)
        handle.when = self.clock() + seconds if first is None else first
        self.at(handle.when, turn)
        return handle

    def next_due(self):
        """The time of the next live timer, or None."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def wait_s(self, longest):
        """How long a loop may wait now: until the next timer, at most `longest` seconds."""
        due = self.next_due()
        return longest if due is None else max(0.0, min(longest, due - self.clock()))

    def run_due(self, now=None):
        """Run every action due by `now` (default: the clock), earliest first; how many ran."""
        now = self.clock() if now is None else now
        ran = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.action()
                ran += 1
        return ran
