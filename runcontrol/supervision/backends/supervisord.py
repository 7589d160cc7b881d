"""Another host's supervisord, over its XML-RPC interface: reaching it with its credentials, and asking if it answers.

The backend that runs programs through it builds on this; for now `run.py --check`
uses it to say whether each host's supervisord answers. Must not decide when to
start or stop anything.
"""

import http.client
import socket
import urllib.parse
import xmlrpc.client

from runcontrol.errors import ConfigError

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
