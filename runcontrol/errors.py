"""The exception hierarchy shared by the server, the client library and the tools.

A refusal (the other side answered `ok: false`) and a failure (nothing usable
came back) are different exceptions, so callers can tell a "no" from a fault.
The root and `ConfigError` live with the experiment descriptions (`experiments/errors.py`),
the lowest floor, so that `experiments/` imports nothing above it; they are the same classes here.
"""

from experiments.errors import ConfigError, RunControlError

__all__ = ["RunControlError", "ConfigError", "ProtocolError", "Refused", "RequestFailed", "RequestTimeout",
           "NoSuchClient", "ClientLost", "ServerUnavailable"]


class ProtocolError(RunControlError):
    """A message breaks the wire contract; `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Refused(RunControlError):
    """The other side answered `ok: false`: it understood and said no.

    Handlers raise it to refuse with a machine code; requesters receive it.
    """

    def __init__(self, message, code="refused"):
        super().__init__(message)
        self.code = code


class RequestFailed(RunControlError):
    """No usable answer: nobody answered, no such client, or the server refused to route."""

    def __init__(self, message, code="failed"):
        super().__init__(message)
        self.code = code


class RequestTimeout(RequestFailed):
    def __init__(self, message):
        super().__init__(message, "timeout")


class NoSuchClient(RequestFailed):
    def __init__(self, message):
        super().__init__(message, "no_such_client")


class ClientLost(RequestFailed):
    def __init__(self, message):
        super().__init__(message, "client_lost")


class ServerUnavailable(RequestFailed):
    """No server answered: none found by beacon, or none at the given address."""

    def __init__(self, message):
        super().__init__(message, "no_server")
