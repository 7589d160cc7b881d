"""The commands the server answers itself, one module each.

Each module has `CMD` (the wire name) and `handle(server, conn, peer, msg)`,
which returns the `result` of the `_reply`, returns ANSWERED when it answered
by other means, or raises ProtocolError for an `_error`. `peer` is None for a
connection that has not registered. Modules hold no state of their own.
"""

from runcontrol.bus.commands import (bye, event, hello, list_clients, log, logs, ping, pong, publish,
                                 replay, retained, stats, status)

MODULES = (hello, ping, pong, bye, list_clients, status, stats, logs, log, event, publish, retained, replay)
HANDLERS = {module.CMD: module.handle for module in MODULES}

# Answers addressed to the server need no answer of their own.
IGNORED = frozenset({"_reply", "_progress", "_error"})


def help_text():
    """Every server command's docstring, for `send.py --help`."""
    return "\n".join(f"{m.CMD}\n{m.__doc__.strip()}\n" for m in MODULES)
