"""The client library: find the server, register, answer pings, send and serve commands.

Owns one DEALER socket to the server (and a SUB socket when asked to follow the
event stream), discovery by beacon, registration, request/reply matched by `id`
with timeouts, the handler table, and the outgoing queue that keeps messages
while the server is away. It must not know about other clients' code.

Single-threaded by design: everything happens inside `poll()` (or
`run_forever()`, or while `request()` waits), so a program whose loop hangs
stops answering pings and is seen as hung. Not thread-safe, except `LogHandler`.
"""

import collections
import itertools
import logging
import os
import secrets
import socket
import threading
import time
import uuid

import zmq
import zmq.auth
import zmq.utils.monitor

import experiments
from runcontrol import protocol
from runcontrol.bus import discovery
from runcontrol.errors import (ConfigError, ProtocolError, Refused, RequestFailed, RequestTimeout,
                               ServerUnavailable)

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1000
DEFAULT_REQUEST_TIMEOUT_S = 5.0
HELLO_RETRY_S = 1.0
SEND_WAIT_MS = 1000
HWM = 10000
PONG = protocol.encode({"cmd": "_pong"})
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's enum flag costs an enum operation per call


class NameTaken(RequestFailed):
    def __init__(self, message):
        super().__init__(message, protocol.NAME_TAKEN)


class Pending:
    """A request waiting for its final answer; `progress` collects `_progress` messages."""

    __slots__ = ("id", "to", "cmd", "data", "answer", "progress", "on_progress", "on_answer")

    def __init__(self, msg_id, to, cmd, data, on_progress, on_answer=None):
        self.id, self.to, self.cmd, self.data = msg_id, to, cmd, data
        self.answer = None
        self.progress = []
        self.on_progress = on_progress
        self.on_answer = on_answer


class Deferred:
    """A reply given later: a handler returns `client.defer(msg)` and calls `resolve` or `refuse` when done.

    The client keeps serving (pings, other requests) meanwhile, so a slow
    command never makes its program look hung.
    """

    __slots__ = ("_client", "to", "id", "done")

    def __init__(self, client, msg):
        self._client, self.to, self.id = client, msg.get("from"), msg.get("id")
        self.done = False

    def resolve(self, result=None):
        self._finish(protocol.make_reply(self.id, result))

    def refuse(self, error, code=protocol.REFUSED):
        self._finish(protocol.make_refusal(self.id, error, code))

    def progress(self, **data):
        if not self.done:
            self._client.progress({"id": self.id, "from": self.to}, **data)

    def _finish(self, reply):
        if not self.done:
            self.done = True
            if self.id is not None:
                self._client._answer(self.to, reply)


class Run:
    """What `on_prepare`, `on_begin` and `on_end` get: the run, and the message that carried it.

    `abort` is set on an `end` that aborts; `rejoin` when the run controller tells a
    client that (re)joined during a run where the run is.
    """

    __slots__ = ("number", "transition", "comment", "params", "abort", "rejoin", "msg")

    def __init__(self, msg):
        self.msg = msg
        self.number = msg.get("run")
        self.transition = msg.get("transition")
        self.comment = msg.get("comment", "")
        self.params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        self.abort = msg.get("abort") is True
        self.rejoin = msg.get("rejoin") is True


RUN_STATE_AFTER = {"prepare": "READY", "begin": "RUN", "end": "STOP"}


class Client:
    """A named participant on the bus.

    `experiment` (a name or a file; else $ORBIT_EXPERIMENT) selects the beacons to
    follow; `server` (a router address; else $ORBIT_SERVER) skips discovery.
    Handlers come from methods named `cmd_<name>` and from `@client.handler`.
    """

    def __init__(self, name, experiment=None, server=None, *, actions=None, meta=None, host=None,
                 queue_size=DEFAULT_QUEUE_SIZE, beacon_port=None, beacon_address=None, key=None):
        if not protocol.valid_name(name):
            raise ConfigError(f"client name {name!r} must match {protocol.NAME_RE.pattern} and not be 'server'")
        self.name = name
        self.host = host or socket.gethostname()
        self.meta = dict(meta or {})
        self._actions = dict(actions or {})
        self._handlers = {}
        self._server_fixed = server or os.environ.get("ORBIT_SERVER") or None
        self.experiment, port, address, spec = resolve_experiment(experiment or os.environ.get("ORBIT_EXPERIMENT"))
        self._curve = curve_keys(spec, name, key or os.environ.get("ORBIT_KEY"),
                                 os.environ.get("ORBIT_SERVER_KEY"))
        self._queue_size = queue_size
        self._outbox = collections.deque()
        self._dropped = 0
        self._pending = {}
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._log_backlog = collections.deque(maxlen=1000)
        self._owner = threading.get_ident()
        self._in_log = False
        self._subs = []
        self.registered = False
        self.instance = None
        self.heartbeat_s = protocol.DEFAULT_HEARTBEAT_S
        self.timeout_s = protocol.DEFAULT_TIMEOUT_S
        self.events_address = None
        self._router = None
        self._beacon_instance = None
        self._hello_id = None
        self._hello_due = None
        self._hello_error = None
        self._last_heard = time.monotonic()
        self._stopping = False
        self.run_state = "STOP"
        self.run_number = None
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._sock = self._monitor = self._sub = None
        self._watched = {}
        self._collect_methods()
        self._beacons = self._listen(beacon_port or port, beacon_address or address)
        if self._server_fixed:
            self._open(self._server_fixed)

    # --- handlers -----------------------------------------------------------------

    def _collect_methods(self):
        for attr in dir(type(self)):
            if attr.startswith("cmd_") and callable(getattr(self, attr)):
                self.add_handler(attr[4:], getattr(self, attr))

    def add_handler(self, cmd, fn, description=None):
        """Serve `cmd` with `fn(msg)`: its return value is the result, a raise a refusal."""
        if not 0 < len(cmd) <= protocol.MAX_CMD_LEN or cmd.startswith("_"):
            raise ConfigError(f"command name {cmd!r} must be 1 to 64 characters and not start with '_'")
        self._handlers[cmd] = fn
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        self._actions[cmd] = doc
        if self.registered:
            self._send_hello()

    def handler(self, arg=None):
        """Decorator: `@client.handler` (named after the function) or `@client.handler("ramp")`."""
        if callable(arg):
            self.add_handler(arg.__name__.removeprefix("cmd_"), arg)
            return arg

        def register(fn):
            self.add_handler(arg or fn.__name__.removeprefix("cmd_"), fn)
            return fn
        return register

    def watch(self, fd, callback):
        """Call `callback()` from `poll()` whenever file descriptor `fd` is readable."""
        self._watched[fd] = callback
        self._poller.register(fd, zmq.POLLIN)

    def unwatch(self, fd):
        if self._watched.pop(fd, None) is not None:
            self._poller.unregister(fd)

    # --- sending --------------------------------------------------------------------

    def send(self, to, cmd, **payload):
        """Send a one-way message; queued while the server is away."""
        self._emit(self._encode(to, cmd, payload))

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

    def start(self, msg, on_progress=None, on_answer=None):
        """Send a request without waiting; returns its Pending (see `wait`; `on_answer(answer)` when it comes)."""
        msg = dict(msg)
        if "id" not in msg:
            msg["id"] = f"{self._id_prefix}-{next(self._ids)}"
        to = msg.get("to") or protocol.SERVER
        if to == protocol.SERVER:
            msg.pop("to", None)
        pending = Pending(msg["id"], to, msg.get("cmd"), self._encode_msg(msg), on_progress, on_answer)
        self._pending[pending.id] = pending
        self._emit(pending.data)
        return pending

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

    def publish(self, topic, data, retain=False):
        """Publish `data` on the event stream as pub.<name>.<topic>; `retain` keeps the last value."""
        self.send(None, "_publish", topic=topic, data=data, retain=retain)

    def defer(self, msg):
        """From a handler: `return client.defer(msg)` and answer later through the Deferred."""
        return Deferred(self, msg)

    def progress(self, msg, **data):
        """From a handler: tell the requester of `msg` how its long request is going."""
        if msg.get("id") is not None:
            self._emit(protocol.encode({**protocol.make_progress(msg["id"], **data), "to": msg.get("from")}))

    def _encode(self, to, cmd, payload):
        msg = {"cmd": cmd, **payload}
        if to is not None and to != protocol.SERVER:
            msg["to"] = to
        return self._encode_msg(msg)

    @staticmethod
    def _encode_msg(msg):
        try:
            return protocol.encode(msg)
        except TypeError as exc:
            raise TypeError(f"message {msg.get('cmd')!r} cannot be sent as JSON: {exc}") from None

    def _emit(self, data):
        if self.registered and time.monotonic() - self._last_heard > self.timeout_s:
            self._tick(time.monotonic())  # a dead connection: queue rather than send into it
        if self.registered and not self._outbox:
            if self._send_now(data):
                return
        self._enqueue(data)

    def _send_now(self, data):
        """Send on the socket; under back-pressure wait a little for room. False if it would block."""
        try:
            self._sock.send(data, NOBLOCK)
            return True
        except zmq.Again:
            pass
        self._on_monitor()  # a closed connection also says Again: learn of it before waiting
        if self.registered and self._sock.poll(SEND_WAIT_MS, zmq.POLLOUT):
            try:
                self._sock.send(data, NOBLOCK)
                return True
            except zmq.Again:
                pass
        return False

    def _enqueue(self, data):
        if len(self._outbox) >= self._queue_size:
            self._outbox.popleft()
            self._dropped += 1
            if self._dropped == 1:
                log.warning("outgoing queue full (%d): dropping the oldest messages", self._queue_size)
        self._outbox.append(data)

    def _flush(self):
        if self._dropped:
            log.warning("dropped %d queued message(s) while the server was away (queue of %d)",
                        self._dropped, self._queue_size)
            self._dropped = 0
        while self._outbox and self.registered:
            if not self._send_now(self._outbox[0]):
                return
            self._outbox.popleft()

    def abandon(self, pending):
        """Stop waiting for `pending` (a later answer is ignored; unsent, it is not sent)."""
        self._pending.pop(pending.id, None)
        try:
            self._outbox.remove(pending.data)
        except ValueError:
            pass

    # --- the loop ----------------------------------------------------------------------

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
            if self._log_backlog and threading.get_ident() == self._owner:
                self._flush_logs()
            if handled or time.monotonic() >= deadline:
                return handled

    def _process(self, ready):
        handled = 0
        if self._monitor is not None and self._monitor in ready:
            self._on_monitor()
        if self._beacons is not None and self._beacons.fileno() in ready:
            for beacon in self._beacons.read():
                self._on_beacon(beacon)
        if self._sock is not None and self._sock in ready:
            handled += self._drain_socket()
        if self._sub is not None and self._sub in ready:
            handled += self._drain_sub()
        for fd, callback in list(self._watched.items()):
            if fd in ready:
                callback()
                handled += 1
        return handled

    def _drain_socket(self):
        count = 0
        sock = self._sock
        while sock is self._sock:
            try:
                frames = sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            count += 1
            self._last_heard = time.monotonic()
            if len(frames) == 1:
                self._dispatch(frames[0])
        return count

    def _tick(self, now):
        if self.registered and now - self._last_heard > self.timeout_s:
            log.warning("server silent for %.1f s: looking for it again", now - self._last_heard)
            self._unregister()
            self._beacon_instance = None
            if self._server_fixed:
                self._hello_due = now
            else:
                self._close_socket()
        if not self.registered and self._hello_due is not None and now >= self._hello_due:
            self._send_hello()

    def _next_timer(self, now):
        if self.registered:
            return self._last_heard + self.timeout_s + 0.01
        if self._hello_due is not None:
            return self._hello_due
        return now + 1.0

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
        target = self._beacons.sock.getsockname() if self._beacons else ("?", "?")
        which = f"of experiment {self.experiment!r}" if self.experiment else "of any experiment"
        return f"no beacon {which} heard on {target[0]}:{target[1]}" if self._router is None \
            else f"at {self._router}"

    def _open(self, router):
        self._close_socket()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._apply_curve(sock)
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        try:
            sock.connect(router)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ConfigError(f"cannot connect to server address {router!r}: {exc}") from None
        self._sock = sock
        self._router = router
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._send_hello()

    def _apply_curve(self, sock):
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve

    def _close_socket(self):
        self._unregister()
        if self._sock is None:
            return
        self._poller.unregister(self._sock)
        self._poller.unregister(self._monitor)
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self._sock = self._monitor = None
        self._router = None
        self._hello_due = None

    def _unregister(self):
        if self.registered:
            log.info("no longer registered with server %s; queueing what is sent", self.instance)
        self.registered = False

    def _send_hello(self):
        self._hello_id = f"{self._id_prefix}-hello-{next(self._ids)}"
        hello = protocol.make_hello(self.name, os.getpid(), self.host, self._actions, self.meta,
                                    self._hello_id)
        self._hello_due = time.monotonic() + HELLO_RETRY_S
        try:
            self._sock.send(protocol.encode(hello), NOBLOCK)
        except zmq.Again:
            pass  # not connected yet: the monitor's CONNECTED event or the retry timer sends it

    def _on_monitor(self):
        while True:
            try:
                event = zmq.utils.monitor.recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                log.info("connection to %s closed", self._router)
                self._unregister()
                self._hello_due = time.monotonic() + HELLO_RETRY_S
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self.registered:
                self._send_hello()
            elif event["event"] in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                why = "refused our key" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH \
                    else "failed the key exchange (not the server whose key we hold?)"
                log.error("the server at %s %s", self._router, why)
                self._hello_error = RequestFailed(f"the server at {self._router} {why}", protocol.NOT_ALLOWED)

    def _on_beacon(self, beacon):
        if beacon.instance == self._beacon_instance or (self.registered and beacon.instance == self.instance):
            return
        if self._server_fixed and beacon.router != self._server_fixed:
            return
        log.info("beacon of server %s (%s) at %s", beacon.instance, beacon.experiment, beacon.router)
        self._beacon_instance = beacon.instance
        if not self._server_fixed and beacon.router != self._router:
            self._open(beacon.router)
        else:
            self._unregister()
            self._send_hello()

    def _on_welcome(self, msg):
        answer = protocol.parse_answer(msg)
        self._hello_id = None
        if not answer.ok:
            self._hello_due = time.monotonic() + HELLO_RETRY_S
            log.error("server refused registration as %r: %s", self.name, answer.error)
            self._hello_error = NameTaken(answer.error) if answer.code == protocol.NAME_TAKEN \
                else RequestFailed(answer.error, answer.code)
            return
        welcome = answer.result
        self.instance = welcome["server"]
        self._beacon_instance = self.instance
        self.heartbeat_s = float(welcome.get("heartbeat", self.heartbeat_s))
        self.timeout_s = float(welcome.get("timeout", self.timeout_s))
        host = self._router.split("://", 1)[-1].rsplit(":", 1)[0]
        events = welcome.get("events")
        if events and protocol.resolve_wildcard(events, host) != self.events_address:
            self.events_address = protocol.resolve_wildcard(events, host)
            self._connect_sub()
        self.registered = True
        self._hello_due = None
        log.info("registered as %s with server %s at %s", self.name, self.instance, self._router)
        self._flush()

    # --- incoming messages ----------------------------------------------------------------

    def _dispatch(self, data):
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            log.warning("ignored a message from the server: %s", exc)
            return
        cmd = msg.get("cmd")
        if cmd == "_ping":
            self._pong(msg.get("id"))
        elif cmd == "_reply" or cmd == "_error" or cmd == "_pong":
            self._on_answer(msg)
        elif cmd == "_progress":
            self._on_progress(msg)
        else:
            self._serve(msg)

    def _pong(self, msg_id):
        data = PONG if msg_id is None else protocol.encode({"cmd": "_pong", "re": msg_id})
        try:
            self._sock.send(data, NOBLOCK)
        except zmq.Again:
            pass

    def _on_answer(self, msg):
        re_id = msg.get("re")
        if re_id is not None and re_id == self._hello_id:
            self._on_welcome(msg)
            return
        if msg.get("cmd") == "_error" and msg.get("code") == protocol.NOT_REGISTERED:
            self._on_not_registered(re_id)
            return
        pending = self._pending.pop(re_id, None) if re_id is not None else None
        if pending is not None:
            pending.answer = protocol.parse_answer(msg)
            if pending.on_answer is not None:
                pending.on_answer(pending.answer)
        elif msg.get("cmd") == "_error":
            log.warning("server: %s (%s)", msg.get("error"), msg.get("code"))

    def _on_not_registered(self, re_id):
        """The server does not know us (it restarted): register again, resend the request."""
        log.info("server %s does not know %s: registering again", self.instance, self.name)
        pending = self._pending.get(re_id)
        if pending is not None:
            self._outbox.appendleft(pending.data)
        if self.registered or self._hello_id is None:
            self._unregister()
            self._send_hello()

    def _on_progress(self, msg):
        pending = self._pending.get(msg.get("re"))
        if pending is None:
            return
        pending.progress.append(msg)
        if pending.on_progress is not None:
            pending.on_progress(msg)

    # --- taking part in runs ----------------------------------------------------------------

    def on_prepare(self, run):
        """Override to get ready for run `run.number`; raise Refused to refuse, return a Deferred if slow."""

    def on_begin(self, run):
        """Override to start taking data for `run.number` (with `run.comment`, `run.params`)."""

    def on_end(self, run):
        """Override to stop taking data (`run.abort` when the run is aborted)."""

    def _transition(self, msg):
        run = Run(msg)
        hook = {"prepare": self.on_prepare, "begin": self.on_begin, "end": self.on_end}.get(run.transition)
        if hook is None:
            raise Refused(f"unknown transition {run.transition!r}: prepare, begin or end", protocol.BAD_FIELD)
        result = hook(run)
        self.run_state = RUN_STATE_AFTER[run.transition]
        self.run_number = run.number
        return result if result is not None else {"state": self.run_state, "run": run.number}

    def _serve(self, msg):
        cmd, msg_id, sender = msg.get("cmd"), msg.get("id"), msg.get("from")
        handler = self._transition if cmd == "_transition" else self._handlers.get(cmd)
        if handler is None:
            if msg_id is not None:
                offered = ", ".join(sorted(self._handlers)) or "none"
                self._answer(sender, protocol.make_refusal(
                    msg_id, f"{self.name} has no command {cmd!r}; it offers: {offered}",
                    protocol.UNKNOWN_COMMAND))
            else:
                log.warning("no handler for %r from %s", cmd, sender)
            return
        try:
            result = handler(msg)
        except Refused as exc:
            reply = protocol.make_refusal(msg_id, str(exc), exc.code)
        except KeyError as exc:
            reply = protocol.make_refusal(msg_id, f"{cmd!r} needs the field {exc}", protocol.BAD_FIELD)
        except Exception as exc:  # a failing handler answers ok: false; the client lives on
            log.exception("handler %r failed", cmd)
            reply = protocol.make_refusal(msg_id, f"{type(exc).__name__}: {exc}", protocol.HANDLER_ERROR)
        else:
            if isinstance(result, Deferred):
                return
            reply = protocol.make_reply(msg_id, result)
        if msg_id is not None:
            self._answer(sender, reply)

    def _answer(self, to, reply):
        if to and to != protocol.SERVER:
            reply["to"] = to
        try:
            data = protocol.encode(reply)
        except TypeError as exc:
            data = protocol.encode({**protocol.make_refusal(reply["re"], f"result is not JSON: {exc}",
                                                            protocol.HANDLER_ERROR), "to": to})
        self._emit(data)

    # --- event stream -----------------------------------------------------------------------

    def subscribe(self, prefix, callback):
        """Call `callback(topic, obj)` for every event-stream message whose topic starts with `prefix`."""
        if self._sub is None:
            self._sub = self._ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, HWM)
            self._apply_curve(self._sub)
            self._poller.register(self._sub, zmq.POLLIN)
            if self.events_address:
                self._sub.connect(self.events_address)
        self._sub.setsockopt(zmq.SUBSCRIBE, prefix.encode("ascii"))
        self._subs.append((prefix, callback))

    def _connect_sub(self):
        if self._sub is None:
            return
        endpoint = self._sub.getsockopt_string(zmq.LAST_ENDPOINT)
        if endpoint:
            try:
                self._sub.disconnect(endpoint)
            except zmq.ZMQError:
                pass
        self._sub.connect(self.events_address)

    def _drain_sub(self):
        count = 0
        while True:
            try:
                frames = self._sub.recv_multipart(NOBLOCK)
            except zmq.Again:
                return count
            count += 1
            try:
                topic, obj = protocol.split_stream_frames(frames)
            except (ProtocolError, UnicodeDecodeError) as exc:
                log.warning("ignored an event-stream message: %s", exc)
                continue
            for prefix, callback in self._subs:
                if topic.startswith(prefix):
                    callback(topic, obj)

    # --- central logging -----------------------------------------------------------------------

    def log_record(self, level, text, logger=""):
        """Send a log record as `_log`; from other threads it waits for the next poll."""
        if threading.get_ident() != self._owner or self._in_log:
            self._log_backlog.append((level, text, logger))
            return
        self._in_log = True
        try:
            self.send(None, "_log", level=level, msg=text, logger=logger)
        finally:
            self._in_log = False

    def _flush_logs(self):
        while self._log_backlog:
            level, text, logger = self._log_backlog.popleft()
            self.log_record(level, text, logger)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self):
        """Flush what can be sent, say goodbye, close every socket."""
        if self._ctx is None:
            return
        if self.registered:
            self._flush()
            try:
                self._sock.send(protocol.encode({"cmd": "_bye"}), NOBLOCK)
            except zmq.Again:
                pass
        if self._outbox:
            log.warning("closing with %d message(s) never sent", len(self._outbox))
        linger = 200 if self.registered else 0
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=linger)
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._beacons is not None:
            self._beacons.close()
        self._ctx.term()
        self._ctx = None
        self.registered = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LogHandler(logging.Handler):
    """Sends log records to the server as `_log` (central logging), republished as log.<name>."""

    def __init__(self, client, level=logging.INFO):
        super().__init__(level)
        self.client = client

    def emit(self, record):
        try:
            self.client.log_record(record.levelname, self.format(record), record.name)
        except Exception:  # logging must never raise into the program
            self.handleError(record)


def resolve_experiment(experiment):
    """(name to match in beacons, beacon port, beacon address, spec or None) for an experiment name or file."""
    if not experiment:
        return None, protocol.DEFAULT_BEACON_PORT, protocol.DEFAULT_BEACON_ADDRESS, None
    try:
        spec = experiments.load(experiment)
    except experiments.NotFound:
        return experiment, protocol.DEFAULT_BEACON_PORT, protocol.DEFAULT_BEACON_ADDRESS, None
    return spec.name, spec.server.beacon.port, spec.server.beacon.address, spec


def curve_keys(spec, name, key_file=None, server_key_file=None):
    """(server public, our public, our secret) when the bus uses CURVE, else None.

    The server's key comes from the experiment (or $ORBIT_SERVER_KEY), never from a
    beacon; ours from `key_file` ($ORBIT_KEY), else the experiment's key of this
    client name, else its operators' key.
    """
    curve = spec.server.curve if spec is not None else None
    if curve is None and not key_file:
        return None
    server_file = server_key_file or (curve.server_key if curve else None)
    if not server_file:
        raise ConfigError(f"a key ({key_file}) but no server key: set $ORBIT_SERVER_KEY or use the experiment")
    if not key_file:
        own = curve.clients / f"{name}.key_secret"
        key_file = own if own.exists() else curve.clients / "operator.key_secret"
    try:
        server_public, _ = zmq.auth.load_certificate(server_file)
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CURVE keys for {name!r}: {exc} "
                          "(make them with python -m runcontrol.keys EXPERIMENT)") from None
    if secret is None:
        raise ConfigError(f"{key_file} holds no secret key")
    return server_public, public, secret
