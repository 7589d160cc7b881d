"""What a program calls and overrides, over the client core, whatever drives it.

Owns the program author's API that is not about waiting: `send`, `post`,
`start`, `abandon`, `publish`, `progress`, `defer`, `add_handler`/`handler`
(and the `cmd_*` methods found on the class), and acting on what the core says
happened (a request for a handler, an answer or progress for a callback).
Each call hands the core's output to the driver at once (`_send_out`), so a
message goes out when it is sent, not at the next turn of a loop. Must not
touch sockets: the driver (`client.Client`, beside `aio.serve`) does.
"""

import socket

from runcontrol.client.core import DEFAULT_QUEUE_SIZE, ClientCore
from runcontrol.client.handlers import Handlers
from runcontrol.client.notices import Answered, Incoming, NotKnown, Progressed, Registered, RegistrationRefused
from runcontrol.client.requests import Deferred
from runcontrol.client.runhooks import RunHooks


class Program(RunHooks):
    """A named participant on the bus, for a driver to serve. Handlers come from `cmd_<name>` methods and
    `add_handler`; run hooks and settings as in RunHooks."""

    def __init__(self, name, *, actions=None, meta=None, host=None, queue_size=DEFAULT_QUEUE_SIZE):
        RunHooks.__init__(self)
        self.core = ClientCore(name, host or socket.gethostname(), actions=actions, meta=self._announced(meta),
                               queue_size=queue_size)
        self.handlers = Handlers(name, {"_transition": self._on_transition, "_config": self._on_config})
        for attr in dir(type(self)):
            if attr.startswith("cmd_") and callable(getattr(self, attr)):
                self.add_handler(attr[4:], getattr(self, attr))

    name = property(lambda self: self.core.name)
    host = property(lambda self: self.core.host, lambda self, host: setattr(self.core, "host", host),
                    doc="The host its hello names.")
    meta = property(lambda self: self.core.meta)
    registered = property(lambda self: self.core.registered, doc="Whether the server welcomed this client.")
    instance = property(lambda self: self.core.instance, doc="The server instance that welcomed this client.")
    heartbeat_s = property(lambda self: self.core.heartbeat_s)
    timeout_s = property(lambda self: self.core.timeout_s)

    # --- what the driver provides ------------------------------------------------------------

    def _send_out(self):
        """Send what the core hands out (`urgent_to_send`, `data_to_send`)."""
        raise NotImplementedError

    def _hello(self):
        """Say hello to the server."""
        self.core.hello()
        self._send_out()

    def _unregister(self):
        """No longer registered (the connection is gone, silent, or the server forgot this client)."""
        self.core.unregister()

    def _on_registered(self, welcome, was_registered):
        """Registered with `welcome` (a protocol.Welcome)."""

    def _on_refused(self, error):
        """The server refused the hello with `error`."""

    # --- handlers ---------------------------------------------------------------------------

    def add_handler(self, cmd, fn, description=None):
        """Serve `cmd` with `fn(msg)`: its return value is the result, a raise a refusal."""
        self.handlers.add(cmd, fn)
        self.core.announce(cmd, description or (fn.__doc__ or "").strip().split("\n")[0])
        if self.core.registered:
            self._send_out()

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
        self.core.post(msg)
        self._send_out()

    def start(self, msg, on_progress=None, on_answer=None):
        """Send a request without waiting; returns its Pending (`on_answer(answer)` when the answer comes)."""
        pending = self.core.start(msg, on_progress, on_answer)
        self._send_out()
        return pending

    def abandon(self, pending):
        """Stop waiting for `pending` (a later answer is ignored; unsent, it is not sent)."""
        self.core.abandon(pending)

    def publish(self, topic, data, retain=False):
        """Publish `data` on the event stream as pub.<name>.<topic>; `retain` keeps the last value."""
        self.send(None, "_publish", topic=topic, data=data, retain=retain)

    def defer(self, msg):
        """From a handler: `return client.defer(msg)` and answer later through the Deferred."""
        return Deferred(msg, self._answer, self.progress)

    def progress(self, msg, **data):
        """From a handler: tell the requester of `msg` how its long request is going."""
        self.core.progress(msg, **data)
        self._send_out()

    def _answer(self, to, reply):
        self.core.answer(to, reply)
        self._send_out()

    # --- what happened ----------------------------------------------------------------------------

    def _feed_frame(self, data):
        """One frame from the server: into the core, then what it says happened, then what it has to send."""
        notice = self.core.receive(data)
        if notice is not None:
            self._on_notice(notice)
        if self.core.outbox.holds_any():
            self._send_out()

    def _on_notice(self, notice):
        kind = type(notice)
        if kind is Incoming:
            reply = self.handlers.dispatch(notice.msg)
            if reply is not None:
                self.core.answer(notice.msg.get("from"), reply)
        elif kind is Answered:
            if notice.pending.on_answer is not None:
                notice.pending.on_answer(notice.pending.answer)
        elif kind is Progressed:
            if notice.pending.on_progress is not None:
                notice.pending.on_progress(notice.msg)
        elif kind is Registered:
            self._on_registered(notice.welcome, notice.was_registered)
        elif kind is RegistrationRefused:
            self._on_refused(notice.error)
        elif kind is NotKnown:
            self._unregister()
            self._hello()
