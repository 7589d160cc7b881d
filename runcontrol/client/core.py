"""The client core: the protocol state of a client, without I/O (as h11's connection is for HTTP).

Owns the registration (hellos, the welcome or its refusal), the requests
awaiting answers (matched by `id`, sent again with the same `id` once
registered again), what was answered to whom (a repeat answered from memory,
never run twice), and the outbox. It takes in frames (`receive(data)`) and the
program's calls (`post`, `start`, `answer`, `progress`, `hello`, ...), and
hands out what to send (`urgent_to_send()`, `data_to_send()`) and what
happened (`receive` returns a notice: runcontrol.client.notices). Must not
touch sockets, sleep, block, or call its driver: the blocking driver
(`client.py`) and the asyncio driver (`aio.py`) feed it from their loops.
"""

import itertools
import logging
import os
import secrets

from runcontrol import protocol
from runcontrol.client.notices import Answered, Incoming, NotKnown, Progressed, Registered, RegistrationRefused
from runcontrol.client.outbox import Outbox
from runcontrol.client.requests import AnswerMemory, NameTaken, Pending
from runcontrol.errors import ConfigError, ProtocolError, Refused, RequestFailed

log = logging.getLogger("runcontrol.client.client")

DEFAULT_QUEUE_SIZE = 1000


class ClientCore:
    """A named participant on the bus, without its I/O: `name`, `host`, the `actions` and `meta` its hello
    announces, and, once welcomed, `registered`, `instance`, `heartbeat_s` and `timeout_s`."""

    def __init__(self, name, host, *, actions=None, meta=None, queue_size=DEFAULT_QUEUE_SIZE):
        if not protocol.valid_name(name):
            raise ConfigError(f"client name {name!r} must match {protocol.NAME_RE.pattern} and not be 'server'")
        self.name, self.host = name, host
        self.actions = dict(actions or {})
        self.meta = dict(meta or {})
        self.outbox = Outbox(queue_size)
        self.pending = {}
        self._served = AnswerMemory()
        self._ever_registered = False
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self.registered = False
        self.instance = None
        self.heartbeat_s = protocol.DEFAULT_HEARTBEAT_S
        self.timeout_s = protocol.DEFAULT_TIMEOUT_S
        self._hello_id = None

    # --- what the program sends -------------------------------------------------------------

    def post(self, msg):
        """A whole message dict one-way (`to` absent or "server": the server); it waits for the registration."""
        msg = dict(msg)
        if msg.get("to") in (None, protocol.SERVER):
            msg.pop("to", None)
        self.outbox.queue(encode_message(msg))

    def start(self, msg, on_progress=None, on_answer=None):
        """A request, its answer awaited: returns its Pending."""
        msg = dict(msg)
        if "id" not in msg:
            msg["id"] = f"{self._id_prefix}-{next(self._ids)}"
        to = msg.get("to") or protocol.SERVER
        if to == protocol.SERVER:
            msg.pop("to", None)
        pending = Pending(msg["id"], to, msg.get("cmd"), encode_message(msg), on_progress, on_answer)
        self.pending[pending.id] = pending
        self.outbox.queue(pending.data)
        return pending

    def abandon(self, pending):
        """Stop waiting for `pending` (a later answer is ignored; unsent, it is not sent)."""
        self.pending.pop(pending.id, None)
        self.outbox.remove(pending.data)

    def progress(self, msg, **data):
        """Tell the requester of `msg` how its long request is going."""
        if msg.get("id") is not None:
            self.outbox.queue(protocol.encode({**protocol.make_progress(msg["id"], **data), "to": msg.get("from")}))

    def answer(self, to, reply):
        """A handler's answer (a reply dict) to the request of `to` it names in `re`; remembered for repeats."""
        if to and to != protocol.SERVER:
            reply["to"] = to
        try:
            data = protocol.encode(reply)
        except TypeError as exc:
            data = protocol.encode({**protocol.make_refusal(reply["re"], f"result is not JSON: {exc}",
                                                            protocol.HANDLER_ERROR), "to": to})
        self._served.answered((to, reply.get("re")), data)
        self.outbox.queue(data)

    # --- registration ---------------------------------------------------------------------------

    def hello(self):
        """Say hello (to register, or to announce a change): it goes at once or not at all."""
        self._hello_id = f"{self._id_prefix}-hello-{next(self._ids)}"
        self.outbox.urgent(protocol.encode(protocol.make_hello(self.name, os.getpid(), self.host, self.actions,
                                                               self.meta, self._hello_id)))

    def announce(self, cmd, description):
        """A command now served: said in a new hello when registered already."""
        self.actions[cmd] = description
        if self.registered:
            self.hello()

    def unregister(self):
        """The connection is gone or silent: what is sent waits until the next welcome."""
        if self.registered:
            log.info("no longer registered with server %s; queueing what is sent", self.instance)
        self.registered = False

    def goodbye(self):
        if self.registered:
            self.outbox.urgent(protocol.encode({"cmd": "_bye"}))

    # --- what the driver hands over -----------------------------------------------------------------

    def receive(self, data):
        """Take one frame from the server; returns what happened (a notice) or None."""
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            log.warning("ignored a message from the server: %s", exc)
            return None
        cmd = msg.get("cmd")
        if cmd == "_ping":
            re_id = protocol.parse_ping(msg)
            self.outbox.urgent(protocol.PONG if re_id is None else protocol.encode(protocol.make_pong(re_id)))
            return None
        if cmd == "_reply" or cmd == "_error" or cmd == "_pong":
            return self._on_answer(msg)
        if cmd == "_progress":
            return self._on_progress(msg)
        return self._on_incoming(msg)

    def urgent_to_send(self):
        """Frames to send now or drop: pongs, hellos, goodbyes."""
        return self.outbox.take_urgent()

    def data_to_send(self):
        """Frames to send in order, once registered (none before); give back with `not_sent` what did not go."""
        return self.outbox.take() if self.registered else []

    def not_sent(self, frames):
        """The connection did not take `frames`: they wait again, ahead of the rest."""
        self.outbox.ahead(frames)

    # --- answers --------------------------------------------------------------------------------------

    def _on_answer(self, msg):
        re_id = msg.get("re")
        if re_id is not None and re_id == self._hello_id:
            return self._on_welcome(msg)
        if msg.get("cmd") == "_error" and msg.get("code") == protocol.NOT_REGISTERED:
            return self._on_not_registered(re_id)
        pending = self.pending.pop(re_id, None) if re_id is not None else None
        if pending is not None:
            pending.answer = protocol.parse_answer(msg)
            return Answered(pending)
        if msg.get("cmd") == "_error":
            log.warning("server: %s (%s)", msg.get("error"), msg.get("code"))
        return None

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
            return RegistrationRefused(NameTaken(answer.error) if answer.code == protocol.NAME_TAKEN
                                       else RequestFailed(answer.error, answer.code))
        was_registered, self.registered = self.registered, True
        known, self.instance = self.instance, welcome.instance
        self.heartbeat_s, self.timeout_s = welcome.heartbeat_s, welcome.timeout_s
        if self._ever_registered and (not was_registered or known != welcome.instance):
            self._resend_unanswered()
        self._ever_registered = True
        return Registered(welcome, was_registered)

    def _resend_unanswered(self):
        """Registered again (a new server, or the connection came back): what was sent before and never
        answered may have died with the old connection. Sent again, with the same ids, ahead of what waits;
        the other side answers a repeat from memory."""
        queued = {id(data) for data in self.outbox}
        again = [p.data for p in self.pending.values() if id(p.data) not in queued]
        if again:
            log.info("sending again %d request(s) that got no answer before the server came back", len(again))
            self.outbox.ahead(again)

    def _on_not_registered(self, re_id):
        """The server does not know us (it restarted): the request waits again; register again unless a hello
        is on its way already."""
        log.info("server %s does not know %s: registering again", self.instance, self.name)
        pending = self.pending.get(re_id)
        if pending is not None:
            self.outbox.ahead([pending.data])
        if self.registered or self._hello_id is None:
            return NotKnown()
        return None

    def _on_progress(self, msg):
        pending = self.pending.get(msg.get("re"))
        if pending is None:
            return None
        pending.progress.append(msg)
        return Progressed(pending, msg)

    # --- requests for this client --------------------------------------------------------------------

    def _on_incoming(self, msg):
        msg_id, sender = msg.get("id"), msg.get("from")
        if msg_id is not None and not self._served.begin((sender, msg_id)):
            earlier = self._served.answer_of((sender, msg_id))
            if earlier is not None:  # a repeat of a request answered already: the same answer, not a second run
                self.outbox.queue(earlier)
            return None
        return Incoming(msg)


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
