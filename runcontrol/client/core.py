"""The client core: everything a client does that is not I/O.

Owns the client's registration state, its requests awaiting answers (matched
by `id`), the outbox that keeps messages while the server is away, the handler
table and its dispatch (`cmd_*` methods, `add_handler`), and the run hooks
(`on_prepare`, `on_begin`, `on_end`). A driver gives it bytes that arrived
(`receive`) and sends the bytes it hands out (`_transmit`, `_send_raw`,
`_send_hello`); the blocking driver is `runcontrol.client.client.Client`, and an asyncio
driver can be written beside it. Must not touch sockets, sleep or block.
"""

import collections
import itertools
import logging
import os
import secrets
import socket

from runcontrol import configschema, protocol
from runcontrol.errors import ConfigError, ProtocolError, Refused, RequestFailed
from runcontrol.client.requests import RUN_STATE_AFTER, AnswerMemory, Deferred, NameTaken, Pending, Run

log = logging.getLogger("runcontrol.client.client")

DEFAULT_QUEUE_SIZE = 1000


class ClientCore:
    """A named participant on the bus, without its I/O. Handlers come from `cmd_<name>` methods and `add_handler`.

    A program with settings names them in `config_schema` (a JSON Schema of an object, see
    runcontrol.configschema): announced when it registers; `self.config` holds the current ones (the
    schema's defaults until the run controller delivers them), and `on_config(new, old)` may refuse a change.
    """

    config_schema = None

    def __init__(self, name, *, actions=None, meta=None, host=None, queue_size=DEFAULT_QUEUE_SIZE):
        if not protocol.valid_name(name):
            raise ConfigError(f"client name {name!r} must match {protocol.NAME_RE.pattern} and not be 'server'")
        self.name = name
        self.host = host or socket.gethostname()
        self.meta = dict(meta or {})
        self.config = configschema.defaults(self.config_schema) if self.config_schema is not None else {}
        if self.config_schema is not None:
            self.meta[configschema.META_KEY] = self.config_schema
        self._actions = dict(actions or {})
        self._handlers = {}
        self._queue_size = queue_size
        self._outbox = collections.deque()
        self._dropped = 0
        self._pending = {}
        self._served = AnswerMemory()
        self._ever_registered = False
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self.registered = False
        self.instance = None
        self.heartbeat_s = protocol.DEFAULT_HEARTBEAT_S
        self.timeout_s = protocol.DEFAULT_TIMEOUT_S
        self._hello_id = None
        self._hello_error = None
        self.run_state = "STOP"
        self.run_number = None
        self._collect_methods()

    # --- what a driver provides ---------------------------------------------------------

    def _transmit(self, data):
        """Send `data` now (it may wait briefly for room); False when it cannot, and the core queues it."""
        raise NotImplementedError

    def _send_raw(self, data):
        """Send `data` now if the connection takes it, else drop it (pongs, goodbyes)."""
        raise NotImplementedError

    def _send_hello(self):
        """Send `self._next_hello()` to the server (registering, or again after a change)."""
        raise NotImplementedError

    def _on_registered(self, welcome, was_registered):
        """Registered with `welcome` (a protocol.Welcome)."""

    # --- handlers ---------------------------------------------------------------------------

    def _collect_methods(self):
        for attr in dir(type(self)):
            if attr.startswith("cmd_") and callable(getattr(self, attr)):
                self.add_handler(attr[4:], getattr(self, attr))

    def add_handler(self, cmd, fn, description=None):
        """Serve `cmd` with `fn(msg)`: its return value is the result, a raise a refusal."""
        if not 0 < len(cmd) <= protocol.MAX_CMD_LEN or cmd.startswith("_"):
            raise ConfigError(f"command name {cmd!r} must be 1 to 64 characters and not start with '_'")
        self._handlers[cmd] = fn
        self._actions[cmd] = description or (fn.__doc__ or "").strip().split("\n")[0]
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

    # --- sending ------------------------------------------------------------------------------

    def send(self, to, cmd, **payload):
        """Send a one-way message; queued while the server is away."""
        self.post({"to": to, "cmd": cmd, **payload})

    def post(self, msg):
        """Send a whole message dict one-way (`to` absent or "server": the server)."""
        msg = dict(msg)
        if msg.get("to") in (None, protocol.SERVER):
            msg.pop("to", None)
        self._emit(encode_message(msg))

    def start(self, msg, on_progress=None, on_answer=None):
        """Send a request without waiting; returns its Pending (`on_answer(answer)` when the answer comes)."""
        msg = dict(msg)
        if "id" not in msg:
            msg["id"] = f"{self._id_prefix}-{next(self._ids)}"
        to = msg.get("to") or protocol.SERVER
        if to == protocol.SERVER:
            msg.pop("to", None)
        pending = Pending(msg["id"], to, msg.get("cmd"), encode_message(msg), on_progress, on_answer)
        self._pending[pending.id] = pending
        self._emit(pending.data)
        return pending

    def abandon(self, pending):
        """Stop waiting for `pending` (a later answer is ignored; unsent, it is not sent)."""
        self._pending.pop(pending.id, None)
        try:
            self._outbox.remove(pending.data)
        except ValueError:
            pass

    def publish(self, topic, data, retain=False):
        """Publish `data` on the event stream as pub.<name>.<topic>; `retain` keeps the last value."""
        self.send(None, "_publish", topic=topic, data=data, retain=retain)

    def defer(self, msg):
        """From a handler: `return client.defer(msg)` and answer later through the Deferred."""
        return Deferred(msg, self._answer, self.progress)

    def progress(self, msg, **data):
        """From a handler: tell the requester of `msg` how its long request is going."""
        if msg.get("id") is not None:
            self._emit(protocol.encode({**protocol.make_progress(msg["id"], **data), "to": msg.get("from")}))

    def _emit(self, data):
        if self.registered and not self._outbox and self._transmit(data):
            return
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
            if not self._transmit(self._outbox[0]):
                return
            self._outbox.popleft()

    # --- registration ----------------------------------------------------------------------------

    def _next_hello(self):
        self._hello_id = f"{self._id_prefix}-hello-{next(self._ids)}"
        return protocol.encode(protocol.make_hello(self.name, os.getpid(), self.host, self._actions, self.meta,
                                                   self._hello_id))

    def _unregister(self):
        if self.registered:
            log.info("no longer registered with server %s; queueing what is sent", self.instance)
        self.registered = False

    def _on_welcome(self, msg):
        answer = protocol.parse_answer(msg)
        self._hello_id = None
        if answer.ok:
            try:
                welcome = protocol.parse_welcome(answer.result)
            except ProtocolError as exc:
                answer = protocol.Answer(answer.re, False, error=str(exc), code=exc.code, from_server=True)
        if not answer.ok:
            log.error("server refused registration as %r: %s", self.name, answer.error)
            self._hello_error = NameTaken(answer.error) if answer.code == protocol.NAME_TAKEN \
                else RequestFailed(answer.error, answer.code)
            return False
        was_registered, self.registered = self.registered, True
        known, self.instance = self.instance, welcome.instance
        self.heartbeat_s, self.timeout_s = welcome.heartbeat_s, welcome.timeout_s
        self._on_registered(welcome, was_registered)
        if self._ever_registered and (not was_registered or known != welcome.instance):
            self._resend_unanswered()
        self._ever_registered = True
        self._flush()
        return True

    def _resend_unanswered(self):
        """Registered again (a new server, or the connection came back): what was sent before and never
        answered may have died with the old connection. Sent again, with the same ids, ahead of what waits;
        the other side answers a repeat from memory."""
        queued = {id(data) for data in self._outbox}
        again = [p.data for p in self._pending.values() if id(p.data) not in queued]
        if again:
            log.info("sending again %d request(s) that got no answer before the server came back", len(again))
            self._outbox.extendleft(reversed(again))

    # --- incoming ----------------------------------------------------------------------------------

    def receive(self, data):
        """Handle one message frame from the server."""
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            log.warning("ignored a message from the server: %s", exc)
            return
        cmd = msg.get("cmd")
        if cmd == "_ping":
            re_id = protocol.parse_ping(msg)
            self._send_raw(protocol.PONG if re_id is None else protocol.encode(protocol.make_pong(re_id)))
        elif cmd == "_reply" or cmd == "_error" or cmd == "_pong":
            self._on_answer(msg)
        elif cmd == "_progress":
            self._on_progress(msg)
        else:
            self._serve(msg)

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

    # --- taking part in runs --------------------------------------------------------------------------

    def on_prepare(self, run):
        """Override to get ready for run `run.number`; raise Refused to refuse, return a Deferred if slow."""

    def on_begin(self, run):
        """Override to start taking data for `run.number` (with `run.comment`, `run.params`)."""

    def on_end(self, run):
        """Override to stop taking data (`run.abort` when the run is aborted)."""

    def _on_transition(self, msg):
        try:
            run = Run(protocol.parse_transition(msg), msg)
        except ProtocolError as exc:
            raise Refused(str(exc), exc.code) from None
        hook = {"prepare": self.on_prepare, "begin": self.on_begin, "end": self.on_end}[run.transition]
        result = hook(run)
        self.run_state = RUN_STATE_AFTER[run.transition]
        self.run_number = run.number
        return result if result is not None else {"state": self.run_state, "run": run.number}

    def on_config(self, new, old):
        """Override to apply settings (`new`, all of them; `old`: those before); raise Refused to keep `old`."""

    def _on_config(self, msg):
        new = msg.get("config")
        if not isinstance(new, dict):
            raise Refused("'_config' needs 'config': an object of settings", protocol.BAD_FIELD)
        self.on_config(new, dict(self.config))
        self.config = dict(new)
        return {"applied": True}

    # --- serving ------------------------------------------------------------------------------------

    def _serve(self, msg):
        cmd, msg_id, sender = msg.get("cmd"), msg.get("id"), msg.get("from")
        if msg_id is not None and not self._served.begin((sender, msg_id)):
            earlier = self._served.answer_of((sender, msg_id))
            if earlier is not None:  # a repeat of a request answered already: the same answer, not a second run
                self._emit(earlier)
            return
        handler = {"_transition": self._on_transition, "_config": self._on_config}.get(cmd) or self._handlers.get(cmd)
        if handler is None:
            if msg_id is not None:
                offered = ", ".join(sorted(self._handlers)) or "none"
                self._answer(sender, protocol.make_refusal(
                    msg_id, f"{self.name} has no command {cmd!r}; it offers: {offered}", protocol.UNKNOWN_COMMAND))
            else:
                log.warning("no handler for %r from %s", cmd, sender)
            return
        try:
            result = handler(msg)
        except Refused as exc:
            reply = protocol.make_refusal(msg_id, str(exc), exc.code)
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
        self._served.answered((to, reply.get("re")), data)
        self._emit(data)


def required(msg, name):
    """`msg[name]` for a handler; a missing field is refused `bad_field`, naming the command and the field."""
    try:
        return msg[name]
    except KeyError:
        raise Refused(f"{msg.get('cmd')!r} needs the field {name!r}", protocol.BAD_FIELD) from None


def encode_message(msg):
    try:
        return protocol.encode(msg)
    except TypeError as exc:
        raise TypeError(f"message {msg.get('cmd')!r} cannot be sent as JSON: {exc}") from None
