"""The server's loop: wait on its sockets and descriptors until the next deadline, then call what is ready.

Owns the poller (ZeroMQ sockets and plain descriptors alike), what each watched
thing calls when it is readable, and the one timer heap (`timers`) that holds
every deadline of the server: the beacon, heartbeats, statistics, the pid file's
touch, the end of settling and the registry's name claims. Must not read or
interpret a message: what is ready is handed on.
"""

import time

import zmq

from runcontrol.timers import Timers

LONGEST_WAIT_S = 1.0         # a turn at least this often, even with no timer set


class Loop:
    def __init__(self, clock=time.monotonic):
        self.timers = Timers(clock)
        self._poller = zmq.Poller()
        self._on_ready = {}

    def watch(self, what, on_ready):
        """Call `on_ready()` whenever `what` (a ZeroMQ socket, a descriptor, or what has `fileno()`) is readable."""
        self._poller.register(what, zmq.POLLIN)
        self._on_ready[ready_key(what)] = on_ready

    def unwatch(self, what):
        self._poller.unregister(what)
        del self._on_ready[ready_key(what)]

    def serve(self, stopped, after_turn=None, revisit_s=None):
        """Turn until `stopped()`: the due timers, a wait until the next one (at most `revisit_s()` seconds when it
        says so), then what is ready; `after_turn(now)` ends each turn."""
        timers = self.timers
        on_ready = self._on_ready
        while not stopped():
            timers.run_due()
            wait_s = timers.wait_s(LONGEST_WAIT_S)
            soon = revisit_s() if revisit_s is not None else None
            if soon is not None:
                wait_s = min(wait_s, soon)
            for what, _ in self._poller.poll(wait_s * 1000):
                handler = on_ready.get(what)
                if handler is not None:  # None: unwatched by a handler earlier in this turn
                    handler()
            if after_turn is not None:
                after_turn(timers.clock())


def ready_key(what):
    """What the poller names when `what` is ready: a ZeroMQ socket itself, anything else by its descriptor."""
    return what if isinstance(what, (zmq.Socket, int)) else what.fileno()
