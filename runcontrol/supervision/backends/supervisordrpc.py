"""Reaching another host's supervisord over its XML-RPC interface: its proxy with the host's credentials, a timeout
that never hangs the caller, what a call may end in, and whether it answers (`run.py --check`)."""

import http.client
import socket
import urllib.parse
import xmlrpc.client

from runcontrol import process
from runcontrol.errors import ConfigError
from runcontrol.supervision.backends.base import Exited

ALREADY_STARTED = 60  # supervisord's fault codes: a start of a program that runs, a name it does not know
BAD_NAME = 10
ALIVE = ("RUNNING", "STARTING", "STOPPING")


class Unexpected(Exception):
    """The host's supervisord answered something that is not what its interface promises."""


# What a call to a host's supervisord may end in when the host is away, refuses, or answers nonsense.
UNREACHABLE = (OSError, xmlrpc.client.Error, http.client.HTTPException, ConfigError, Unexpected, KeyError,
               TypeError, ValueError)

TIMEOUT_S = 5.0


class TimeoutTransport(xmlrpc.client.Transport):
    """An XML-RPC transport that gives up after `timeout_s`: a dead host must never hang the caller."""

    def __init__(self, timeout_s):
        super().__init__()
        self.timeout_s = timeout_s

    def make_connection(self, host):
        connection = super().make_connection(host)
        connection.timeout = self.timeout_s
        return connection


def proxy(host, timeout_s=TIMEOUT_S):
    """An XML-RPC proxy of `host`'s supervisord (a HostSpec), with its credentials."""
    url = urllib.parse.urlsplit(host.supervisord)
    if host.username:
        try:
            password = host.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"hosts.{host.name}.password_file: cannot read {host.password_file}: "
                              f"{exc.strerror}") from None
        netloc = f"{urllib.parse.quote(host.username)}:{urllib.parse.quote(password)}@{url.netloc}"
        url = url._replace(netloc=netloc)
    return xmlrpc.client.ServerProxy(urllib.parse.urlunsplit(url), transport=TimeoutTransport(timeout_s))


def check(host, timeout_s=2.0):
    """None when `host`'s supervisord answers and runs, else what is wrong, in words."""
    try:
        state = proxy(host, timeout_s).supervisor.getState()
    except ConfigError as exc:
        return str(exc)
    except xmlrpc.client.ProtocolError as exc:
        return f"refused: {exc.errcode} {exc.errmsg}" + (" (username or password?)" if exc.errcode == 401 else "")
    except xmlrpc.client.Fault as exc:
        return f"answered with a fault: {exc.faultString}"
    except (OSError, socket.timeout, http.client.HTTPException) as exc:
        return f"does not answer: {exc}"
    if state.get("statename") != "RUNNING":
        return f"answers, but is {state.get('statename')}"
    return None


def exited(handle, info):
    """The Exited event of `handle` from supervisord's process info."""
    status = info.get("exitstatus")
    if isinstance(status, int) and status >= 0:
        return Exited(handle, status, None)
    # supervisord says -1 for a process killed by a signal, and not which one
    return Exited(handle, None, process.UNNAMED_SIGNAL)
