"""The client library's blocking driver: find the server, register, keep the connection, wait for answers.

Owns the I/O of a client: the beacon listener, the connection to the router
(`Link`), the event-stream subscription, file descriptors a program asks to
watch, the timers (re-sending `_hello`, noticing a silent server), and the
blocking calls (`connect`, `request`, `wait`, `poll`, `run_forever`). What a
client does with messages is the core's (`runcontrol.client.core.ClientCore`).

Single-threaded by design: everything happens inside `poll()` (or
`run_forever()`, or while `request()` waits), so a program whose loop hangs
stops answering pings and is seen as hung. Not thread-safe, except `LogHandler`.
"""

import logging
import os
import time

import zmq

from runcontrol.client.centrallog import LogHandler, LogRelay
from runcontrol.client.core import DEFAULT_QUEUE_SIZE, ClientCore
from runcontrol.client.events import EventStream
from runcontrol.client.link import Link
from runcontrol.client.probe import BeaconChecks
from runcontrol.client.requests import NameTaken
from runcontrol.client.busaccess import curve_keys, resolve_experiment
from runcontrol import protocol
from runcontrol import discovery
from runcontrol.errors import RequestFailed, RequestTimeout, ServerUnavailable

__all__ = ["Client", "LogHandler", "NameTaken"]

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 5.0
HELLO_RETRY_S = 1.0


class Client(ClientCore):
    """A named participant on the bus.

    `experiment` (a name or a file; else $ORBIT_EXPERIMENT) selects the beacons to
    follow; `server` (a router address; else $ORBIT_SERVER) skips discovery.
    Handlers come from methods named `cmd_<name>` and from `@client.handler`.
    """

    def __init__(self, name, experiment=None, server=None, *, actions=None, meta=None, host=None,
                 queue_size=DEFAULT_QUEUE_SIZE, beacon_port=None, beacon_address=None, key=None):
        super().__init__(name, actions=actions, meta=meta, host=host, queue_size=queue_size)
        self._server_fixed = server or os.environ.get("ORBIT_SERVER") or None
        self.experiment, port, address, curve = resolve_experiment(experiment or os.environ.get("ORBIT_EXPERIMENT"))
        self._curve = curve_keys(curve, name, key or os.environ.get("ORBIT_KEY"), os.environ.get("ORBIT_SERVER_KEY"))
        self._logs = LogRelay(lambda level, text, logger: self.send(None, "_log", level=level, msg=text,
                                                                    logger=logger))
        self.events_address = None
        self._beacon_instance = None
        self._hello_due = None
        self._last_heard = time.monotonic()
        self._stopping = False
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._link = self._stream = None
        self._checks = BeaconChecks(self._ctx, self._curve, self._poller, lambda: self.start({"cmd": "_ping"}),
                                    self.abandon)
        self._watched = {}
        self._beacons = self._listen(beacon_port or port, beacon_address or address)
        if self._server_fixed:
            self._open(self._server_fixed)

    @property
    def router(self):
        """The router address of the server this client uses (None before one is found)."""
        return self._link.router if self._link is not None else None

    def watch(self, fd, callback):
        """Call `callback()` from `poll()` whenever file descriptor `fd` is readable."""
        self._watched[fd] = callback
        self._poller.register(fd, zmq.POLLIN)

    def fds(self):
        """The file descriptors that become readable when `poll()` has something to do (for an event loop that
        drives it: a ZeroMQ socket's descriptor only says that something changed, so poll until it returns 0)."""
        fds = []
        for sock, _ in self._poller.sockets:
            if isinstance(sock, zmq.Socket):
                fds.append(sock.getsockopt(zmq.FD))
            else:
                fds.append(sock if isinstance(sock, int) else sock.fileno())
        return fds

    def unwatch(self, fd):
        if self._watched.pop(fd, None) is not None:
            self._poller.unregister(fd)

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
        """Poll until `pending` has its final answer (a protocol.Answer) or raise on timeout."""
        deadline = time.monotonic() + timeout
        while pending.answer is None:
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
        """Wait up to `timeout` seconds for something to happen, handle all of it; return the count."""
        deadline = time.monotonic() + max(0.0, timeout or 0.0)
        while True:
            now = time.monotonic()
            self._tick(now)
            wait_s = min(deadline, self._next_timer(now)) - now
            ready = dict(self._poller.poll(max(0, wait_s) * 1000))
            handled = self._process(ready) if ready else 0
            self._logs.flush()
            if handled or time.monotonic() >= deadline:
                return handled

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
                self.receive(data)
            handled += len(frames)
        if self._stream is not None and self._stream.sock in ready:
            handled += self._stream.drain()
        self._checks.read(ready)
        for fd, callback in list(self._watched.items()):
            if fd in ready:
                callback()
                handled += 1
        return handled

    def _tick(self, now):
        if self.registered and now - self._last_heard > self.timeout_s:
            log.warning("server silent for %.1f s: looking for it again", now - self._last_heard)
            self._unregister()
            self._beacon_instance = None
            if self._server_fixed:
                self._hello_due = now
            else:
                self._close_link()
        if not self.registered and self._hello_due is not None and now >= self._hello_due:
            self._send_hello()
        moved_to = self._checks.judge(now)
        if moved_to is not None:
            log.info("server %s at %s answers and ours at %s does not: moving to it", moved_to.instance,
                     moved_to.router, self.router)
            self._beacon_instance = moved_to.instance
            self._open(moved_to.router)

    def _next_timer(self, now):
        if self._checks.probe is not None:
            return now + 0.1
        if self.registered:
            return self._last_heard + self.timeout_s + 0.01
        if self._hello_due is not None:
            return self._hello_due
        return now + 1.0

    # --- what the core asks of its driver ---------------------------------------------------

    def _transmit(self, data):
        now = time.monotonic()
        if self.registered and now - self._last_heard > self.timeout_s:
            self._tick(now)  # a dead connection: queue rather than send into it
        if not self.registered or self._link is None:
            return False
        if self._link.send_now(data):
            return True
        self._on_monitor()  # a closed connection also says Again: learn of it before waiting
        return self.registered and self._link.send_waiting(data)

    def _send_raw(self, data):
        return self._link is not None and self._link.send_now(data)

    def _send_hello(self):
        if self._link is None:
            return
        self._hello_due = time.monotonic() + HELLO_RETRY_S
        self._link.send_now(self._next_hello())  # not connected yet: the monitor or the retry timer resends

    def _on_registered(self, welcome, was_registered):
        self._beacon_instance = self.instance
        self._hello_due = None
        if welcome.events:
            host = self.router.split("://", 1)[-1].rsplit(":", 1)[0]
            events = protocol.resolve_wildcard(welcome.events, host)
            self.events_address = events
            if self._stream is not None:
                self._stream.connect(events)
        log.info("registered as %s with server %s at %s", self.name, self.instance, self.router)

    def _on_welcome(self, msg):
        if not super()._on_welcome(msg):
            self._hello_due = time.monotonic() + HELLO_RETRY_S

    # --- connection to the server ----------------------------------------------------------

    def _listen(self, port, address):
        try:
            listener = discovery.BeaconListener(port, address, self.experiment)
        except OSError as exc:
            if not self._server_fixed:
                raise ServerUnavailable(f"cannot listen for beacons on {address}:{port}: {exc}") from None
            log.warning("not listening for beacons on %s:%s: %s", address, port, exc)
            return None
        self._poller.register(listener.fileno(), zmq.POLLIN)
        return listener

    def _where(self):
        if self._server_fixed:
            return f"at {self._server_fixed}"
        if self._link is not None:
            return f"at {self._link.router}"
        target = self._beacons.sock.getsockname() if self._beacons else ("?", "?")
        which = f"of experiment {self.experiment!r}" if self.experiment else "of any experiment"
        return f"no beacon {which} heard on {target[0]}:{target[1]}"

    def _open(self, router):
        self._close_link()
        self._link = Link(self._ctx, router, self._curve)
        self._poller.register(self._link.sock, zmq.POLLIN)
        self._poller.register(self._link.monitor, zmq.POLLIN)
        self._send_hello()

    def _close_link(self):
        self._unregister()
        if self._link is None:
            return
        self._poller.unregister(self._link.sock)
        self._poller.unregister(self._link.monitor)
        self._link.close()
        self._link = None
        self._hello_due = None

    def _on_monitor(self):
        for change in self._link.changes() if self._link is not None else ():
            if change == "disconnected":
                log.info("connection to %s closed", self._link.router)
                self._unregister()
                self._hello_due = time.monotonic() + HELLO_RETRY_S
            elif change == "connected":
                if not self.registered:
                    self._send_hello()
            else:
                log.error("the server at %s %s", self._link.router, change)
                self._hello_error = RequestFailed(f"the server at {self._link.router} {change}", protocol.NOT_ALLOWED)

    def _on_beacon(self, beacon):
        if beacon.instance == self._beacon_instance or (self.registered and beacon.instance == self.instance):
            return
        if self._server_fixed and beacon.router != self._server_fixed:
            return
        if self.registered and beacon.router != self.router:
            self._checks.check(beacon, time.monotonic())  # anybody can send one: a working connection stays
            return
        log.info("beacon of server %s (%s) at %s", beacon.instance, beacon.experiment, beacon.router)
        self._beacon_instance = beacon.instance
        if not self._server_fixed and beacon.router != self.router:
            self._open(beacon.router)
        else:
            self._send_hello()  # the welcome says which instance answers at this address

    # --- event stream -----------------------------------------------------------------------

    def subscribe(self, prefix, callback):
        """Call `callback(topic, obj)` for every event-stream message whose topic starts with `prefix`."""
        if self._stream is None:
            self._stream = EventStream(self._ctx, self._curve)
            self._poller.register(self._stream.sock, zmq.POLLIN)
            if self.events_address:
                self._stream.connect(self.events_address)
        self._stream.subscribe(prefix, callback)

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
            self._flush()
            self._send_raw(protocol.encode({"cmd": "_bye"}))
        if self._outbox:
            log.warning("closing with %d message(s) never sent", len(self._outbox))
        self._checks.close()
        if self._link is not None:
            self._link.close(linger=200 if registered else 0)
        if self._stream is not None:
            self._stream.close()
        if self._beacons is not None:
            self._beacons.close()
        self._ctx.term()
        self._ctx = None
        self.registered = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

