"""What the client core says happened, for its driver to act on (as h11's events are for its caller).

`ClientCore.receive(data)` returns one of these, or None when a frame needs
nothing from the driver (a ping, whose pong the core queued itself; a repeat
answered from memory). Must not do anything: they are plain records.
"""

from typing import Any, NamedTuple


class Registered(NamedTuple):
    """Welcomed by the server (a protocol.Welcome); `was_registered` when it was a welcome again (a new hello)."""
    welcome: Any
    was_registered: bool


class RegistrationRefused(NamedTuple):
    """The server refused the hello: `error` is what `connect()` raises (NameTaken, RequestFailed)."""
    error: Exception


class NotKnown(NamedTuple):
    """The server does not know this client (it restarted): unregister and say hello again."""


class Incoming(NamedTuple):
    """A request or a note for a handler; its answer goes back through `ClientCore.answer`."""
    msg: dict


class Answered(NamedTuple):
    """`pending` has its final answer (`pending.answer`)."""
    pending: Any


class Progressed(NamedTuple):
    """A `_progress` message `msg` came for `pending`."""
    pending: Any
    msg: dict
