"""Deferred answers that complete when a condition holds, checked from the run controller's loop.

Owns the list of waiting answers and their deadlines; the loop calls `check()`
after each turn. Must not block.
"""

import time


class Waiter:
    """Completes with `finish()` when `ready()` holds, or with `expire()` at `deadline`."""

    __slots__ = ("ready", "finish", "deadline", "expire")

    def __init__(self, ready, finish, deadline, expire):
        self.ready, self.finish, self.deadline, self.expire = ready, finish, deadline, expire


class Waiters:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._waiting = []

    def add(self, ready, finish, timeout_s, expire):
        """Wait for `ready`; the Waiter returned may have its `deadline` moved (a deferral extends it)."""
        waiter = Waiter(ready, finish, self.clock() + timeout_s, expire)
        self._waiting.append(waiter)
        self.check()
        return waiter

    def deadlines(self):
        return [w.deadline for w in self._waiting]

    def check(self):
        now = self.clock()
        for waiter in list(self._waiting):
            if waiter not in self._waiting:   # finished meanwhile, by a check() from another waiter's finish()
                continue
            if waiter.ready():
                self._waiting.remove(waiter)
                waiter.finish()
            elif now >= waiter.deadline:
                self._waiting.remove(waiter)
                waiter.expire()
