"""A program's commands: the table of handlers by name, and running one for a message.

Owns the rules of a handler: its return value is the result, a Deferred an
answer given later, a raised Refused a refusal with its code, any other
exception a `handler_error` (the client lives on); a command nobody serves is
refused `unknown_command`, naming those that are. Must not send: it returns
the reply, and the caller hands it to the client core.
"""

import logging

from runcontrol import protocol
from runcontrol.client.requests import Deferred
from runcontrol.errors import ConfigError, Refused

log = logging.getLogger("runcontrol.client.client")


class Handlers:
    """The handlers of client `name`; `builtin` serves the library's own commands (`_transition`, `_config`)."""

    def __init__(self, name, builtin):
        self.name = name
        self._builtin = dict(builtin)
        self._table = {}

    def add(self, cmd, fn):
        if not 0 < len(cmd) <= protocol.MAX_CMD_LEN or cmd.startswith("_"):
            raise ConfigError(f"command name {cmd!r} must be 1 to 64 characters and not start with '_'")
        self._table[cmd] = fn

    def dispatch(self, msg):
        """Run the handler of `msg`: its reply, or None (a note, which gets none; or an answer given later)."""
        cmd, msg_id = msg.get("cmd"), msg.get("id")
        handler = self._builtin.get(cmd) or self._table.get(cmd)
        if handler is None:
            if msg_id is None:
                log.warning("no handler for %r from %s", cmd, msg.get("from"))
                return None
            offered = ", ".join(sorted(self._table)) or "none"
            return protocol.make_refusal(msg_id, f"{self.name} has no command {cmd!r}; it offers: {offered}",
                                         protocol.UNKNOWN_COMMAND)
        try:
            result = handler(msg)
        except Refused as exc:
            reply = protocol.make_refusal(msg_id, str(exc), exc.code)
        except Exception as exc:  # a failing handler answers ok: false; the client lives on
            log.exception("handler %r failed", cmd)
            reply = protocol.make_refusal(msg_id, f"{type(exc).__name__}: {exc}", protocol.HANDLER_ERROR)
        else:
            if msg_id is None or isinstance(result, Deferred):
                return None
            return protocol.make_reply(msg_id, result)
        return reply if msg_id is not None else None
