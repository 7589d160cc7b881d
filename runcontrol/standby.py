"""A standby: a copy of a kept command started ahead, prepared, and waiting to be told to take over.

Owns the handshake between a watchdog and such a copy, both of its ends: the watchdog hands the
copy one end of a socket pair, named by ENV in its environment; the copy says READY on it once it
is prepared, and takes over when it reads GO, which the watchdog sends only once the process it
replaces has been reaped (so two never serve at once). A copy whose pair closes before GO (its
watchdog is gone) ends. Must not start, signal or judge processes.
"""

import os
import socket

from runcontrol.errors import ConfigError

ENV = "ORBIT_STANDBY_FD"
READY = b"R"
GO = b"G"


def pair():
    """(the watchdog's end, the copy's end) of a new handshake; the copy's end is inheritable."""
    ours, theirs = socket.socketpair()
    theirs.set_inheritable(True)
    return ours, theirs


class Standby:
    """The copy's end of the handshake."""

    def __init__(self, fd):
        try:
            self.sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"{ENV}={fd} names no socket of a watchdog: {exc.strerror}") from None

    @classmethod
    def from_environment(cls, environ=os.environ):
        """This process's end, taken out of `environ` (its own children are no standbys); None when this process
        was started to serve at once."""
        value = environ.pop(ENV, None)
        if value is None:
            return None
        try:
            fd = int(value)
        except ValueError:
            raise ConfigError(f"{ENV}={value!r} is no file descriptor") from None
        return cls(fd)

    def ready(self):
        """Say that this copy is prepared; False when the watchdog is gone."""
        try:
            self.sock.sendall(READY)
            return True
        except OSError:
            return False

    def wait(self):
        """Block until told to take over (True), or until the watchdog is gone (False)."""
        while True:
            try:
                data = self.sock.recv(64)
            except OSError:
                return False
            if not data:
                return False
            if GO in data:
                return True

    def close(self):
        self.sock.close()
