"""When to restart: a growing delay while a program keeps failing, and the restart intensity over a window.

Shared by the supervisor and the watchdog. Pure arithmetic on times given by the
caller (its clock), so tests drive it without waiting.
"""

import collections


class Backoff:
    """No delay after a good run; then `initial_s`, `initial_s * factor`, ... up to `max_s` while it keeps failing."""

    def __init__(self, initial_s, max_s, factor=2.0):
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.streak = 0      # failures in a row
        self.delay_s = 0.0   # the last delay handed out

    def next_delay(self, good, came_up=True):
        """The delay before the next start. `good`: the last run counts as a good one (it resets
        the streak); `came_up`: it got as far as running (a failed start always waits)."""
        if good:
            self.streak = 0
        elif not came_up:
            self.streak = max(self.streak, 1)
        delay = 0.0 if self.streak == 0 else min(self.initial_s * self.factor ** (self.streak - 1), self.max_s)
        self.streak += 1
        self.delay_s = delay
        return delay

    def reset(self):
        self.streak = 0
        self.delay_s = 0.0


class RestartWindow:
    """Restart intensity (Erlang/OTP): more than `max_restarts` within `window_s` seconds is too many."""

    def __init__(self, max_restarts, window_s):
        self.max_restarts, self.window_s = max_restarts, window_s
        self.times = collections.deque()

    def record(self, now):
        """Count a restart at `now`; True when that makes too many within the window."""
        self.times.append(now)
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()
        return len(self.times) > self.max_restarts

    def __len__(self):
        return len(self.times)

    def clear(self):
        self.times.clear()
