"""The client library's blocking driver: a client's sockets, its timers, and the calls that wait.

Owns the I/O of a client: the ZeroMQ context, the beacon listener, the event-
stream subscription, file descriptors a program asks to watch, one timer heap
(`client.timers`: the library's deadlines and the program's own), and the
blocking calls (`connect`, `request`, `wait`, `poll`, `run_forever`); keeping
the connection to the server is ServerConnection's (`connection.py`), what a
client does with messages the core's (`core.py`) and the program API's
(`program.py`). The asyncio driver (`aio.py`) serves the same client from an
event loop through `fds()` and `handle_ready()`.

Single-threaded by design: everything happens inside `poll()` (or
`run_forever()`, or while `request()` waits), so a program whose loop hangs
stops answering pings and is seen as hung. Not thread-safe, except `LogHandler`.
"""

import logging
import math
import os
import time

import zmq

from runcontrol import timers
from runcontrol.client.busaccess import curve_keys, resolve_experiment
from runcontrol.client.centrallog import LogHandler, LogRelay
from runcontrol.client.connection import ServerConnection
from runcontrol.client.core import DEFAULT_QUEUE_SIZE
from runcontrol.client.events import EventStream
from runcontrol.client.probe import BeaconChecks
from runcontrol.client.program import Program
from runcontrol.client.requests import NameTaken
from runcontrol.errors import RequestTimeout, ServerUnavailable

__all__ = ["Client", "LogHandler", "NameTaken"]

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 5.0
FLOOD_ROUNDS = 1000   # rounds of handle_ready before an event loop gets its turn back


class Poller(zmq.Poller):
    """A zmq.Poller that counts the changes to what it watches (an event loop follows the descriptors anew)."""

    changes = 0

    def register(self, socket, flags=zmq.POLLIN):
        self.changes += 1
        return super().register(socket, flags)

    def unregister(self, socket):
        self.changes += 1
        return super().unregister(socket)


class Timers(timers.Timers):
    """The client's timer heap: a timer set earlier than any other calls `wakeup` (an event loop waiting for the
    one before must wake for it)."""

    def __init__(self, clock, wakeup):
        super().__init__(clock)
        self.wakeup = wakeup

    def at(self, when, action):
        earliest = self.next_due()
        timer = super().at(when, action)
        if earliest is None or when < earliest:
            self.wakeup()
        return timer


class Client(ServerConnection, Program):
    """A named participant on the bus.

    `experiment` (a name or a file; else $ORBIT_EXPERIMENT) selects the beacons to
    follow; `server` (a router address; else $ORBIT_SERVER) skips discovery.
    Handlers come from methods named `cmd_<name>` and from `@client.handler`.
    """

    def __init__(self, name, experiment=None, server=None, *, actions=None, meta=None, host=None,
                 queue_size=DEFAULT_QUEUE_SIZE, beacon_port=None, beacon_address=None, key=None):
        Program.__init__(self, name, actions=actions, meta=meta, host=host, queue_size=queue_size)
        self._server_fixed = server or os.environ.get("ORBIT_SERVER") or None
        self.experiment, port, address, curve = resolve_experiment(experiment or os.environ.get("ORBIT_EXPERIMENT"))
        self._curve = curve_keys(curve, name, key or os.environ.get("ORBIT_KEY"), os.environ.get("ORBIT_SERVER_KEY"))
        self._logs = LogRelay(lambda level, text, logger: self.send(None, "_log", level=level, msg=text,
                                                                    logger=logger))
        self.wakeup = None   # an event loop's: called after a send, a new earliest timer, a change of what to watch
        self.timers = Timers(time.monotonic, self._poke)
        self.events_address = None
        self._beacon_instance = None
        self._hello_timer = self._silence = None
        self._hello_error = None
        self._last_heard = time.monotonic()
        self._stopping = False
        self._ctx = zmq.Context()
        self._poller = Poller()
        self._link = self._stream = None
        self._checks = BeaconChecks(self._ctx, self._curve, self._poller, self._ping_ours, self.abandon)
        self._watched = {}
        self._beacons = self._listen(beacon_port or port, beacon_address or address)
        if self._server_fixed:
            self._open(self._server_fixed)

    # --- what an event loop waits on ---------------------------------------------------------

    def watch(self, fd, callback):
        """Call `callback()` from `poll()` whenever file descriptor `fd` is readable."""
        self._watched[fd] = callback
        self._poller.register(fd)
        self._poke()

    def unwatch(self, fd):
        if self._watched.pop(fd, None) is not None:
            self._poller.unregister(fd)
            self._poke()

    def fds(self):
        """The file descriptors that become readable when `poll()` has something to do (for an event loop that
        drives it: a ZeroMQ socket's descriptor only says that something changed, so handle until nothing is left,
        as `handle_ready()` does); they change when `fds_changes` does."""
        fds = []
        for sock, _ in self._poller.sockets:
            if isinstance(sock, zmq.Socket):
                fds.append(sock.getsockopt(zmq.FD))
            else:
                fds.append(sock if isinstance(sock, int) else sock.fileno())
        return fds

    @property
    def fds_changes(self):
        """A count that moves whenever the sockets or descriptors behind `fds()` change."""
        return self._poller.changes

    def _poke(self):
        if self.wakeup is not None:
            self.wakeup()

    # --- blocking calls -------------------------------------------------------------------

    def request(self, to, cmd, timeout=DEFAULT_REQUEST_TIMEOUT_S, on_progress=None, **payload):
        """Send a request and wait for its result.

        Raises Refused when the other side answered `ok: false`, RequestFailed (or a
        subclass: RequestTimeout, NoSuchClient, ClientLost, ServerUnavailable) when
        no usable answer came.
        """
        return self.call({"to": to, "cmd": cmd, **payload}, timeout, on_progress)

    def call(self, msg, timeout=DEFAULT_REQUEST_TIMEOUT_S, on_progress=None):
        """`request` for a whole message dict (it may carry its own `id`)."""
        return self.wait(self.start(msg, on_progress), timeout).value()

    def wait(self, pending, timeout=DEFAULT_REQUEST_TIMEOUT_S):
        """Poll until `pending` has its final answer (a protocol.Answer) or raise on timeout; progress from the
        other side (`_progress`) says it is still at work: the wait runs `timeout` from the latest."""
        deadline = time.monotonic() + timeout
        heard = len(pending.progress)
        while pending.answer is None:
            if len(pending.progress) != heard:
                heard = len(pending.progress)
                deadline = max(deadline, time.monotonic() + timeout)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.abandon(pending)
                if not self.registered:
                    raise ServerUnavailable(f"no server answered within {timeout:g} s "
                                            f"({self._where()}); {pending.cmd!r} was not sent")
                raise RequestTimeout(f"{pending.to} did not answer {pending.cmd!r} within {timeout:g} s")
            self.poll(remaining)
        return pending.answer

    def connect(self, timeout=10.0):
        """Block until registered; ServerUnavailable or NameTaken otherwise."""
        deadline = time.monotonic() + timeout
        while not self.registered:
            if self._hello_error is not None:
                error, self._hello_error = self._hello_error, None
                raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnavailable(f"no server answered within {timeout:g} s ({self._where()})")
            self.poll(remaining)
        return self

    def run_forever(self, poll_s=1.0):
        """Serve until `stop()` is called (from a handler, or another thread within `poll_s`)."""
        self._stopping = False
        while not self._stopping:
            self.poll(poll_s)

    def stop(self):
        self._stopping = True

    def poll(self, timeout=0.0):
        """Wait up to `timeout` seconds for a message or a watched descriptor, running the timers that fall due
        meanwhile (one of them may `stop()` the client: that returns too); handle all of it and return how many
        messages and watched descriptors were handled."""
        deadline = time.monotonic() + max(0.0, timeout or 0.0)
        stopped_before = self._stopping
        while True:
            ran = self._due()
            wait_s = 0.0 if ran else self.timers.wait_s(max(0.0, deadline - time.monotonic()))
            ready = dict(self._poller.poll(math.ceil(wait_s * 1000)))  # rounded down, a short wait would spin
            handled = self._process(ready) if ready else 0
            if handled or (self._stopping and not stopped_before) or time.monotonic() >= deadline:
                return handled

    def handle_ready(self, rounds=FLOOD_ROUNDS):
        """For an event loop: run the timers due and handle what the sockets hold, without waiting, until they hold
        nothing (True), or for at most `rounds` rounds (False: more waits). The last look at the sockets comes after
        the last send, so a ZeroMQ descriptor's edge is never lost to it."""
        for _ in range(rounds):
            self._due()
            ready = dict(self._poller.poll(0))
            if not ready:
                return True
            self._process(ready)
        return False

    def _due(self):
        """Run the timers due and send the log records other threads left; how many timers ran."""
        ran = self.timers.run_due()
        self._logs.flush()
        return ran

    def _process(self, ready):
        handled = 0
        link = self._link
        if link is not None and link.monitor in ready:
            self._on_monitor()
        if self._beacons is not None and self._beacons.fileno() in ready:
            for beacon in self._beacons.read():
                self._on_beacon(beacon)
        if link is not None and link is self._link and link.sock in ready:
            frames = link.receive()
            if frames:
                self._last_heard = time.monotonic()
            for data in frames:
                self._feed_frame(data)
            handled += len(frames)
        if self._stream is not None and self._stream.sock in ready:
            handled += self._stream.drain()
        if self._checks.read(ready):
            self._judge()
        for fd, callback in list(self._watched.items()):
            if fd in ready:
                callback()
                handled += 1
        return handled

    # --- event stream -----------------------------------------------------------------------

    def subscribe(self, prefix, callback):
        """Call `callback(topic, obj)` for every event-stream message whose topic starts with `prefix`."""
        if self._stream is None:
            self._stream = EventStream(self._ctx, self._curve)
            self._poller.register(self._stream.sock)
            if self.events_address:
                self._stream.connect(self.events_address)
        self._stream.subscribe(prefix, callback)
        self._poke()

    # --- central logging -----------------------------------------------------------------------

    def log_record(self, level, text, logger=""):
        """Send a log record as `_log`; from other threads it waits for the next poll."""
        self._logs.record(level, text, logger)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self):
        """Flush what can be sent, say goodbye, close every socket."""
        if self._ctx is None:
            return
        registered = self.registered
        if registered:
            self._send_out()
            self.core.goodbye()
            self._send_out()
        if len(self.core.outbox):
            log.warning("closing with %d message(s) never sent", len(self.core.outbox))
        self._checks.close()
        if self._link is not None:
            self._link.close(linger=200 if registered else 0)
        if self._stream is not None:
            self._stream.close()
        if self._beacons is not None:
            self._beacons.close()
        self._ctx.term()
        self._ctx = None
        self.core.registered = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
